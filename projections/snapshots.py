"""Snapshots of the projections: derived data that only saves time.

A snapshot is the state of every projection after the record ``seq``, with
that record's hash and where its line ends in the ledger, written atomically
beside the ledger (``RUN_DIR/projections.snapshot``; ``snapshot.json`` is
the workspace's). A reader loads it, checks it against the ledger (the line
at the recorded offset must be the record ``seq`` with the recorded hash;
the chain makes that hash stand for every record before it) and folds only
the records after it. A snapshot that does not match, is of another format
or is damaged is ignored: the reader replays the whole ledger, so deleting
one changes nothing but speed.

The file is msgpack: a header (format, seq, hash, offsets) and one part per
projection, each decoded with the types its projection declares, so a part
holds data only, never code. The item table (:data:`LAZY`) is a part of its
own, mapped from the file and decoded on its first use only: a reader that
only counts (``engine status``) never pays for a million items' states.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from ledger.atomic import atomic_write
from ledger.codec import parse_seq, split_line
from ledger.events import (
    AgentActivity,
    AnyRecord,
    BudgetExhausted,
    Record,
    RunCreated,
    WorktreeCommitted,
    WorktreeMerged,
)
from ledger.reader import LedgerReader, ScanResult
from projections.base import Projection
from projections.circuit import CircuitProjection
from projections.dlq import DLQProjection
from projections.items import ItemsProjection, ItemState
from projections.run import LockHolder, Recovery, RunProjection
from projections.signatures import SignaturesProjection, SignatureStat
from projections.spend import BudgetProjection
from projections.stats import Session, SessionsProjection
from projections.workers import LiveAttempt, WorkersProjection
from projections.worktrees import AttemptTree, RunTree, WorktreesProjection

__all__ = ["FORMAT", "SNAPSHOT_NAME", "Snapshot", "load_snapshot", "write_snapshot"]

FORMAT = 2
"""The snapshot format; a snapshot of another one is ignored (and rewritten)."""
SNAPSHOT_NAME = "projections.snapshot"

if TYPE_CHECKING:
    _Rec = Record
else:
    _Rec = AnyRecord  # every record class, decoded by its tag
_AnyRec: Any = AnyRecord

_LiveTuple = tuple[_AnyRec, _AnyRec | None, int, AgentActivity | None]

STATES: dict[type[Projection], dict[str, Any]] = {
    RunProjection: {
        "run_id": str | None,
        "status": str,
        "workflow": str | None,
        "workflow_path": str | None,
        "workflow_hash": str | None,
        "snapshot_id": str | None,
        "engine_version": str | None,
        "vars": dict[str, str],
        "created": RunCreated | None,
        "created_at": str | None,
        "started_at": str | None,
        "finished_at": str | None,
        "reason": str | None,
        "resumes": int,
        "resumed": list[_AnyRec],
        "paused": bool,
        "cancel_requested": bool,
        "cancel_force": bool,
        "cancel_by": str | None,
        "cache_mode": str,
        "executors": list[str],
        "map_enqueued": bool,
        "lock_holders": list[LockHolder],
        "recoveries": list[Recovery],
        "events": int,
        "last_seq": int,
        "last_ts": str | None,
    },
    ItemsProjection: {
        "items": dict[str, ItemState],
        "counts": dict[str, int],
        "duplicates": int,
        "dispatched": int,
    },
    DLQProjection: {
        "history": dict[str, list[_AnyRec]],
        "dead": dict[str, _AnyRec],
        "purged": set[str],
    },
    WorkersProjection: {"running": dict[str, _LiveTuple], "heartbeats": int},
    SignaturesProjection: {"stats": dict[str, SignatureStat], "_items": dict[str, set[str]]},
    CircuitProjection: {
        "state": str,
        "streak": int,
        "last_type": str | None,
        "opened_at": str | None,
        "cooldown": float,
        "opened": int,
        "probes": int,
        "success_threshold": int,
        "passed": int,
        "until": str | None,
        "opened_by": str | None,
    },
    WorktreesProjection: {
        "run": RunTree | None,
        "attempts": dict[tuple[str, int], AttemptTree],
        "owed": dict[str, WorktreeCommitted],
        "merged": dict[str, WorktreeMerged],
    },
    BudgetProjection: {
        "spent_usd": float,
        "by_item": dict[str, float],
        "raised_to": float | None,
        "exhausted": BudgetExhausted | None,
    },
    SessionsProjection: {
        "run_id": str,
        "first_ts": str | None,
        "last_ts": str | None,
        "sessions": list[Session],
        "session_start": str | None,
        "recovering": bool,
    },
}
"""What each snapshotted projection keeps, with the types its part is decoded with."""

LAZY: dict[type[Projection], str] = {ItemsProjection: "items"}
"""The field of a projection kept in a part of its own (named ``Class.field``),
decoded on its first use (:meth:`ItemsProjection.defer_items`)."""

_STRUCTS = {
    kind: msgspec.defstruct(
        kind.__name__ + "State",
        [(k, v) for k, v in fields.items() if k != LAZY.get(kind)],
        array_like=True,
    )
    for kind, fields in STATES.items()
}
_TABLE = msgspec.msgpack.Decoder(dict[str, ItemState])


class Snapshot(msgspec.Struct, kw_only=True):
    """A snapshot file's content."""

    format: int
    record: _Rec
    """The last record folded in."""
    line: int
    """The byte offset where that record's line starts."""
    end: int
    """The byte offset just after it: where the tail begins."""
    parts: dict[str, bytes]
    """Each projection's state (msgpack), by its class name (and :data:`LAZY`'s
    fields by ``Class.field``)."""

    def start(self) -> ScanResult:
        """Where a reader resumes: just after the snapshot's record."""
        r = self.record
        return ScanResult(r.seq + 1, r.hash.encode(), self.end, self.end, None, r.ts)


class _Mapped(Snapshot, kw_only=True):
    """A snapshot as read: its parts are views into the mapped file (no copy)."""

    parts: dict[str, memoryview]  # type: ignore[assignment]


def _encode(projection: Projection) -> dict[str, bytes]:
    """The parts of ``projection``: its state, and its :data:`LAZY` field apart."""
    kind = type(projection)
    name = kind.__name__
    state = projection.checkpoint(STATES[kind])
    parts = {}
    if (lazy := LAZY.get(kind)) is not None:
        parts[f"{name}.{lazy}"] = msgspec.msgpack.encode(state.pop(lazy))
    if isinstance(projection, WorkersProjection):
        state["running"] = {
            k: (a.dispatched, a.last, a.heartbeats, a.agent) for k, a in state["running"].items()
        }
    parts[name] = msgspec.msgpack.encode(_STRUCTS[kind](**state))
    return parts


def _decode(projection: Projection, snap: _Mapped, ledger: Path) -> None:
    kind = type(projection)
    decoded = msgspec.msgpack.decode(snap.parts[kind.__name__], type=_STRUCTS[kind])
    state = {name: getattr(decoded, name) for name in STATES[kind] if name != LAZY.get(kind)}
    if isinstance(projection, WorkersProjection):
        state["running"] = {k: LiveAttempt(*t) for k, t in state["running"].items()}
    projection.restore(state)
    if isinstance(projection, ItemsProjection):
        table = snap.parts[f"{kind.__name__}.items"]
        counted = sum(projection.counts.values())
        seq = snap.record.seq
        projection.defer_items(lambda: _table(table, counted, ledger, seq))


def _table(part: memoryview, counted: int, ledger: Path, seq: int) -> dict[str, ItemState]:
    """The item table of a snapshot's part; should it be damaged (it is checked only
    now, on its first use), the same table folded from the ledger up to ``seq``."""
    try:
        table = _TABLE.decode(part)
    except (msgspec.DecodeError, msgspec.ValidationError):
        table = None
    if table is not None and len(table) == counted:
        return table
    items = ItemsProjection()
    for records, _lines, _offset in LedgerReader(ledger).batches(until=seq, check_hash=True):
        for record in records:
            items.apply(record)
    return items.items


def snapshotted(projections: list[Projection]) -> bool:
    """Whether every one of ``projections`` is kept in a snapshot."""
    return all(type(p) in STATES for p in projections)


def path_of(ledger: str | os.PathLike[str]) -> Path:
    return Path(ledger).parent / SNAPSHOT_NAME


def write_snapshot(
    ledger: str | os.PathLike[str], projections: list[Projection], last: Record
) -> bool:
    """Snapshot ``projections`` (folded up to the record ``last``) beside ``ledger``.

    Only projections in :data:`STATES` are kept. The record's line is found
    near the ledger's end by its hash. Returns False (and writes nothing)
    when it is not found there: a snapshot is never a guess.
    """
    where = _locate(Path(ledger), last.seq, last.hash)
    if where is None:
        return False
    parts = {k: v for p in projections if type(p) in STATES for k, v in _encode(p).items()}
    snap = Snapshot(format=FORMAT, record=last, line=where[0], end=where[1], parts=parts)
    atomic_write(path_of(ledger), msgspec.msgpack.encode(snap))
    return True


def _locate(ledger: Path, seq: int, digest: str) -> tuple[int, int] | None:
    """Where the line of record ``seq`` with hash ``digest`` starts and ends (searched
    backwards from the ledger's end, a window at a time)."""
    needle = b'"hash":"' + digest.encode() + b'"}\n'
    window = 1 << 16
    try:
        with open(ledger, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            end = size
            while end > 0:
                start = max(0, end - window)
                f.seek(start)
                chunk = f.read(end - start + len(needle))
                at = chunk.rfind(needle)
                if at >= 0:
                    line_end = start + at + len(needle)
                    nl = chunk.rfind(b"\n", 0, at)
                    if nl < 0 and start > 0:
                        window *= 2
                        continue
                    line_start = start + nl + 1
                    return _checked(f, line_start, line_end, seq, digest)
                end = start
                window = min(window * 2, 1 << 22)
    except OSError:
        return None
    return None


def _checked(f: Any, start: int, end: int, seq: int, digest: str) -> tuple[int, int] | None:
    """``(start, end)`` when the bytes there are the record ``seq`` with hash ``digest``."""
    f.seek(start)
    line = f.read(end - start)
    if not line.endswith(b"\n"):
        return None
    line = line[:-1]
    parts = split_line(line)
    if parts is None or parts[1] != digest.encode() or parse_seq(line) != seq:
        return None
    return start, end


def load_snapshot(ledger: str | os.PathLike[str], projections: list[Projection]) -> Snapshot | None:
    """Restore ``projections`` from the snapshot beside ``ledger`` if it is valid.

    Valid: it decodes, is of this :data:`FORMAT`, has a part for each of
    ``projections``, and the ledger holds its record (seq and hash) at its
    offset. Else None, and ``projections`` are left as they were (fresh).
    """
    snap = _read(path_of(ledger))
    if snap is None or snap.format != FORMAT or not snapshotted(projections):
        return None
    names = [type(p).__name__ for p in projections]
    names += [f"{type(p).__name__}.{LAZY[type(p)]}" for p in projections if type(p) in LAZY]
    if any(name not in snap.parts for name in names):
        return None
    try:
        with open(ledger, "rb") as f:
            if _checked(f, snap.line, snap.end, snap.record.seq, snap.record.hash) is None:
                return None
    except OSError:
        return None
    fresh = [type(p).__new__(type(p)) for p in projections]
    try:
        for p, blank in zip(projections, fresh, strict=True):
            blank.__dict__.update(p.__dict__)
            _decode(blank, snap, Path(ledger))
    except (msgspec.DecodeError, msgspec.ValidationError, TypeError, ValueError):
        return None
    for p, blank in zip(projections, fresh, strict=True):
        p.__dict__.clear()  # a deferred field must not stay behind
        p.__dict__.update(blank.__dict__)
    return snap


def _read(path: Path) -> _Mapped | None:
    """The snapshot at ``path``, mapped (its parts are read only when decoded)."""
    try:
        with open(path, "rb") as f:
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return msgspec.msgpack.decode(data, type=_Mapped)
    except (OSError, ValueError, msgspec.DecodeError, msgspec.ValidationError):
        return None


def remove_snapshot(ledger: str | os.PathLike[str]) -> None:
    with contextlib.suppress(FileNotFoundError):
        path_of(ledger).unlink()
