"""The append-only, hash-chained, fsynced event ledger.

``ledger`` knows nothing of workflows: it stores events, checks them, and
hands them back. See ``docs/ledger-format.md`` for the byte format.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ledger.atomic import atomic_write, fsync_dir, make_private_dir
from ledger.codec import GENESIS_HASH, LEDGER_NAME, MAX_RECORD_BYTES
from ledger.errors import (
    EngineError,
    LedgerCorrupt,
    LedgerError,
    LedgerLocked,
    LedgerWriteFailed,
    RecordInvalid,
    RecordTooLarge,
)
from ledger.events import EVENT_TYPES, FORMAT_VERSION, RECORD_TYPES, Event, Record
from ledger.lock import RunLock, read_holder
from ledger.reader import LedgerReader, ScanResult, TornTail, verify_ledger
from ledger.times import utc_now

if TYPE_CHECKING:
    from ledger.writer import LedgerWriter

__all__ = [
    "EVENT_TYPES",
    "FORMAT_VERSION",
    "GENESIS_HASH",
    "LEDGER_NAME",
    "MAX_RECORD_BYTES",
    "RECORD_TYPES",
    "EngineError",
    "Event",
    "LedgerCorrupt",
    "LedgerError",
    "LedgerLocked",
    "LedgerReader",
    "LedgerWriteFailed",
    "LedgerWriter",
    "Record",
    "RecordInvalid",
    "RecordTooLarge",
    "RunLock",
    "ScanResult",
    "TornTail",
    "atomic_write",
    "fsync_dir",
    "make_private_dir",
    "read_holder",
    "utc_now",
    "verify_ledger",
]


def __getattr__(name: str) -> Any:
    # The writer (and asyncio with it) loads on first use: a reader of a ledger
    # (`engine status`) starts without it.
    if name == "LedgerWriter":
        from ledger.writer import LedgerWriter  # noqa: PLC0415

        return LedgerWriter
    raise AttributeError(f"module 'ledger' has no attribute {name!r}")
