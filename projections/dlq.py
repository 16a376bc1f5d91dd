"""The dead-letter queue: dead items with their whole failure history."""

from __future__ import annotations

import msgspec

from ledger.events import (
    DLQPurged,
    ItemDeadLettered,
    ItemFailed,
    ItemRequeued,
    ItemSkipped,
    ItemSucceeded,
    Record,
)
from projections.base import Projection, handles

__all__ = ["DLQEntry", "DLQProjection", "DLQView", "Failure"]


class Failure(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One failed attempt, as the ledger recorded it."""

    seq: int
    ts: str
    attempt: int
    error_type: str
    signature: str
    message: str
    exit_code: int | None
    signal: int | None
    duration: float
    stderr_tail: str
    stdout: str | None
    """Path (relative to the run directory) of the attempt's stdout log."""
    stderr: str | None


class DLQEntry(msgspec.Struct, kw_only=True, gc=False):
    item_id: str
    attempts: int
    error_type: str
    signature: str
    last_error: str
    failed_at: str
    reason: str
    history: list[Failure]


class DLQView(msgspec.Struct, kw_only=True):
    count: int
    items: list[DLQEntry]


class DLQProjection(Projection):
    """Failure histories of unfinished items; the dead ones form the DLQ.

    A failure is kept while its item has no success: that is what a dead
    item's whole history needs, and what a success lets go of.
    """

    def __init__(self) -> None:
        self.history: dict[str, list[Record]] = {}
        """``item.failed`` records of items with no success yet."""
        self.dead: dict[str, Record] = {}
        """The ``item.dead_lettered`` record of every item now in the DLQ."""
        self.purged: set[str] = set()
        """Dead items purged from the DLQ (hidden; their records stay)."""

    @handles(ItemFailed)
    def _failed(self, record: Record, e: ItemFailed) -> None:
        history = self.history.get(e.item)
        if history is None:
            self.history[e.item] = [record]
        else:
            history.append(record)

    @handles(ItemDeadLettered)
    def _dead(self, record: Record, e: ItemDeadLettered) -> None:
        self.dead[e.item] = record

    def entry(self, item: str) -> DLQEntry | None:
        """The DLQ entry of a dead item, with its whole failure history."""
        record = self.dead.get(item)
        if record is None:
            return None
        e = record.data
        assert isinstance(e, ItemDeadLettered)
        history = [_failure(r) for r in self.history.get(item, ())]
        return DLQEntry(
            item_id=e.item,
            attempts=e.attempt,
            error_type=e.error_type,
            signature=e.signature,
            last_error=history[-1].message if history else e.reason,
            failed_at=record.ts,
            reason=e.reason,
            history=history,
        )

    @handles(ItemRequeued)
    def _requeued(self, record: Record, e: ItemRequeued) -> None:
        self.dead.pop(e.item, None)

    @handles(DLQPurged)
    def _purged(self, record: Record, e: DLQPurged) -> None:
        for item in e.items:
            if self.dead.pop(item, None) is not None:
                self.purged.add(item)

    @handles(ItemSucceeded, ItemSkipped)
    def _done(self, record: Record, e: ItemSucceeded | ItemSkipped) -> None:
        self.dead.pop(e.item, None)
        self.history.pop(e.item, None)

    def to_json(self) -> DLQView:
        entries = [e for e in map(self.entry, self.dead) if e is not None]
        entries.sort(key=lambda d: (d.failed_at, d.item_id))
        return DLQView(count=len(entries), items=entries)


def _failure(record: Record) -> Failure:
    e = record.data
    assert isinstance(e, ItemFailed)
    return Failure(
        seq=record.seq,
        ts=record.ts,
        attempt=e.attempt,
        error_type=e.error_type,
        signature=e.signature,
        message=e.message,
        exit_code=e.exit_code,
        signal=e.signal,
        duration=e.duration,
        stderr_tail=e.stderr_tail,
        stdout=e.stdout.path if e.stdout else None,
        stderr=e.stderr.path if e.stderr else None,
    )
