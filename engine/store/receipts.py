"""Receipts: one file per succeeded item, under the run directory, checked against the ledger.

Each item that succeeds gets ``receipts/<name>.json`` (a
:class:`~projections.receipts.Receipt`: the item, its attempts, idempotency
key, the ledger seq range of its attempts, its result's digest, its
artifacts, the ledger's head hash when it completed). ``<name>`` is the
item id made safe for a file name (letters, digits, ``.``, ``_`` and ``-``
kept, anything else ``_``, at most 40 characters, no leading dot), then
``-`` and the first 16 hex digits of SHA-256 of the whole id: two items
never share a file, and the receipt inside names its item exactly.

The engine writes a receipt right after the success's append is durable
(:class:`ReceiptWriter`: atomically, off the event loop, in order), and a
resume writes the receipts an engine killed in between left unwritten
(:func:`write_missing`). Every field comes from the ledger, so
``engine audit verify`` folds them again and compares (:func:`check_receipts`).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import msgspec

from ledger.atomic import atomic_write, make_private_dir
from ledger.lock import RunLock
from projections.receipts import Receipt, ReceiptsProjection
from projections.replay import replay

__all__ = [
    "RECEIPTS_DIR",
    "ReceiptWriter",
    "ReceiptsCheck",
    "check_receipts",
    "encode_receipt",
    "latest",
    "receipt_name",
    "write_missing",
]

RECEIPTS_DIR = "receipts"
"""The directory of receipts, under the run directory."""

_LATER = "`engine audit verify` names the receipts missing; a resume writes them"

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_SLUG_CHARS = 40


def receipt_name(item: str) -> str:
    """The file name of ``item``'s receipt: a readable slug of the id and its hash."""
    slug = _UNSAFE.sub("_", item[:_SLUG_CHARS]).lstrip(".") or "item"
    digest = hashlib.sha256(item.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{slug}-{digest}.json"


def encode_receipt(receipt: Receipt) -> bytes:
    """A receipt as its file holds it: indented JSON, one field a line, ending in a newline."""
    return msgspec.json.format(msgspec.json.encode(receipt), indent=2) + b"\n"


def latest(receipts: Iterable[Receipt]) -> dict[str, Receipt]:
    """Item -> its last receipt (an item succeeding again is described by its last success)."""
    return {r.item: r for r in receipts}


def _write(directory: Path, receipts: Iterable[Receipt]) -> None:
    make_private_dir(directory)
    for receipt in receipts:
        atomic_write(directory / receipt_name(receipt.item), encode_receipt(receipt))


def write_missing(
    run_dir: Path, receipts: Iterable[Receipt], *, warn: Callable[[str], None]
) -> int:
    """Write the receipts whose file is absent (a resume after a crash), making the
    directory if need be; how many were written. What cannot be written is said
    through ``warn`` (the run goes on: ``engine audit verify`` names what is missing)."""
    directory = run_dir / RECEIPTS_DIR
    try:
        try:
            present = set(os.listdir(directory))
        except FileNotFoundError:
            present = set()
        missing = [r for r in latest(receipts).values() if receipt_name(r.item) not in present]
        if missing or not present:
            _write(directory, missing)
    except OSError as exc:
        warn(f"engine: cannot write the receipts under {directory}: {exc}; {_LATER}")
        return 0
    return len(missing)


class ReceiptWriter:
    """Writes receipts as items succeed: in a thread, one batch at a time, in order.

    :meth:`submit` returns at once (the event loop goes on dispatching);
    :meth:`close` waits until everything submitted is written. A receipt that
    cannot be written is said once through ``warn``, as the run ends, and the
    run goes on: the ledger holds the truth, a resume writes the receipt again,
    and ``engine audit verify`` names it until then. A run that ends with an
    error of its own (a full disk stops the ledger too) says only that.
    """

    def __init__(self, run_dir: Path, *, warn: Callable[[str], None]) -> None:
        self.directory = run_dir / RECEIPTS_DIR
        self.warn = warn
        self._queue: list[Receipt] = []
        self._task: asyncio.Future[None] | None = None
        self.failure: str | None = None
        """Why a receipt could not be written (the first time), to be said at :meth:`close`."""

    def submit(self, receipts: list[Receipt]) -> None:
        """Write ``receipts`` soon (their success records are durable)."""
        if not receipts:
            return
        self._queue.extend(receipts)
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                await asyncio.to_thread(_write, self.directory, batch)
            except OSError as exc:
                if self.failure is None:
                    self.failure = (
                        f"engine: cannot write a receipt under {self.directory}: {exc}; {_LATER}"
                    )

    async def close(self, *, say: bool = True) -> None:
        """Wait until every submitted receipt is written; say (with ``say``) if one was not."""
        if self._task is not None:
            await self._task
        if say and self.failure is not None:
            self.warn(self.failure)


class ReceiptsCheck(msgspec.Struct, frozen=True, kw_only=True):
    """The receipts of a run checked against its ledger (``engine audit verify``)."""

    checked: int
    """Receipt files read."""
    succeeded: int
    """Items the ledger says succeeded (each should have one receipt)."""
    problems: list[str]
    """One line per problem: a receipt that differs (naming the field), of no succeeded
    item, that does not decode; a succeeded item without a receipt."""
    directory: bool
    """The run directory has a ``receipts/`` directory (runs made before receipts have none)."""

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """One line on the whole check (``engine audit verify`` prints it after the chain's)."""
        if not self.directory:
            if not self.succeeded:
                return "ok receipts: none (no item succeeded)"
            return (
                f"note: no {RECEIPTS_DIR}/ directory: the receipts of {self.succeeded:,} "
                "succeeded items are not checked (a run made before receipts; a resume "
                "of an unfinished run writes them)"
            )
        if self.ok:
            return f"ok receipts: {self.checked:,} checked, each matches the ledger"
        return (
            f"RECEIPTS: {_many(len(self.problems), 'problem')} in "
            f"{_many(self.checked, 'receipt')} "
            f"of {self.succeeded:,} succeeded items"
        )


def _many(n: int, what: str) -> str:
    return f"{n:,} {what}{'' if n == 1 else 's'}"


_DECODER = msgspec.json.Decoder(Receipt)


def _differs(found: Receipt, expected: Receipt) -> list[str]:
    return [f for f in Receipt.__struct_fields__ if getattr(found, f) != getattr(expected, f)]


def check_receipts(run_dir: Path, ledger: Path) -> ReceiptsCheck:
    """Every receipt file of the run against the receipts its (verified) ledger folds to.

    While an engine holds the run, a receipt of a success recorded after the ledger
    was read is not judged (it is being written); otherwise it is a forgery.
    """
    live = RunLock(run_dir).probe() is not None
    fold = ReceiptsProjection()
    p = replay(ledger, verify=False, extra=(fold,))
    expected = fold.receipts
    names = {receipt_name(item): item for item in expected}
    directory = run_dir / RECEIPTS_DIR
    try:
        files = sorted(n for n in os.listdir(directory) if n.endswith(".json"))
    except (FileNotFoundError, NotADirectoryError):
        return ReceiptsCheck(checked=0, succeeded=len(expected), problems=[], directory=False)
    problems: list[str] = []
    seen: set[str] = set()
    for name in files:
        where = f"{RECEIPTS_DIR}/{name}"
        try:
            found = _DECODER.decode((directory / name).read_bytes())
        except (OSError, msgspec.DecodeError) as exc:
            if name in names:
                seen.add(names[name])  # one line for its file, not two
            problems.append(
                f"{where}: not a receipt ({exc}); remove it or restore it from a backup"
            )
            continue
        item = names.get(name)
        if item is None:
            if live and found.last_seq > p.seq:
                continue  # recorded after the ledger was read
            problems.append(
                f"{where}: a receipt of item {found.item!r}, which has no success in the "
                "ledger under this name; remove it"
            )
            continue
        seen.add(item)
        if fields := _differs(found, expected[item]):
            problems.append(
                f"{where}: item {item!r}: {', '.join(fields)} "
                f"{'differs' if len(fields) == 1 else 'differ'} from the ledger"
            )
    for item in sorted(expected.keys() - seen):
        problems.append(
            f"{RECEIPTS_DIR}/{receipt_name(item)}: item {item!r} succeeded "
            f"(seq {expected[item].last_seq}) but has no receipt; "
            "a resume of an unfinished run writes it, else restore it from a backup"
        )
    return ReceiptsCheck(
        checked=len(files), succeeded=len(expected), problems=problems, directory=True
    )
