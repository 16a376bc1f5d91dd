"""The timeline: every attempt of every item, when it was dispatched and how it ended.

An on-demand fold (``replay(path, extra=(TimelineProjection(),))``): the
audit report reads it, the live engine never does, so the engine does not
pay for it on every record it appends. Memory grows with attempts, as the
report's timeline does; so of an outcome it keeps only what the timeline
shows, not the record (whose result and stderr tail can be large).
"""

from __future__ import annotations

import msgspec

from ledger.events import (
    ItemDispatched,
    ItemFailed,
    ItemSkipped,
    ItemSucceeded,
    Record,
)
from projections.base import Projection, handles

__all__ = ["Attempt", "TimelineProjection"]


class Attempt(msgspec.Struct, gc=False):
    """One dispatched attempt, and its outcome once recorded."""

    attempt: int
    dispatched_at: str
    finished_at: str | None = None
    duration: float | None = None
    outcome: str | None = None
    """``succeeded``, or the failure's error type; ``None`` while it has none."""
    message: str | None = None
    """The failure's message."""


class TimelineProjection(Projection):
    def __init__(self) -> None:
        self.attempts: dict[str, list[Attempt]] = {}
        """Every item's attempts in dispatch order (items never enqueued too)."""
        self.skip_reasons: dict[str, str] = {}
        """Why each skipped item was last skipped (``cache``, ``done``)."""

    @handles(ItemDispatched)
    def _dispatched(self, record: Record, e: ItemDispatched) -> None:
        attempts = self.attempts.get(e.item)
        if attempts is None:
            self.attempts[e.item] = attempts = []
        attempts.append(Attempt(e.attempt, record.ts))

    @handles(ItemSucceeded, ItemFailed)
    def _outcome(self, record: Record, e: ItemSucceeded | ItemFailed) -> None:
        for attempt in reversed(self.attempts.get(e.item, ())):
            if attempt.attempt == e.attempt:
                attempt.finished_at = record.ts
                attempt.duration = e.duration
                if isinstance(e, ItemSucceeded):
                    attempt.outcome, attempt.message = "succeeded", None
                else:
                    attempt.outcome, attempt.message = e.error_type, e.message
                return

    @handles(ItemSkipped)
    def _skipped(self, record: Record, e: ItemSkipped) -> None:
        self.skip_reasons[e.item] = e.reason

    def to_json(self) -> dict[str, object]:
        return {"attempts": self.attempts, "skip_reasons": self.skip_reasons}
