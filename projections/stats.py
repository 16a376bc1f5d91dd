"""Stats: how a run used its time, as sums and counts over every record.

An on-demand fold (``replay(path, extra=(StatsProjection(),))``) for
``engine stats``: it sees every record (each ends the current session), so
keeping it in the live engine would cost every append a handler call for
figures the engine never reads. ``engine/views/stats.py`` turns the sums
into the figures shown.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ledger.events import (
    EVENT_TYPES,
    Heartbeat,
    ItemDeadLettered,
    ItemDispatched,
    ItemFailed,
    ItemRequeued,
    ItemRetryScheduled,
    ItemSkipped,
    ItemSucceeded,
    LedgerRecovered,
    LockAcquired,
    Record,
    RunResumed,
    RunStarted,
    StepFailed,
    StepSucceeded,
)
from projections.base import Projection, handles
from projections.spend import Spend

__all__ = ["Session", "SessionsProjection", "StatsProjection"]


class Session(msgspec.Struct, frozen=True, gc=False):
    """One engine's time on the run: from the first record it appended (``ledger.recovered``
    or ``lock.acquired``, or the ledger's first) to its last."""

    start: str
    end: str


class SessionsProjection(Projection):
    """The sessions of a run (an engine's time on it), and its first and last record.

    Every record ends the current session; a ``lock.acquired`` (or the
    ``ledger.recovered`` before it) opens the next. Cheap (a few fields), so
    the engine keeps it live and snapshots it; ``engine status`` reads it.
    """

    def __init__(self) -> None:
        self.run_id = ""
        self.first_ts: str | None = None
        self.last_ts: str | None = None
        self.sessions: list[Session] = []
        """Sessions before the current one."""
        self.session_start: str | None = None
        """When the current session began."""
        self.recovering = False
        """The last record was a ``ledger.recovered``: the opening of the next session."""

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))

    def all_sessions(self) -> list[Session]:
        """Every session, the current one last."""
        if self.session_start is None or self.last_ts is None:
            return list(self.sessions)
        return [*self.sessions, Session(self.session_start, self.last_ts)]

    def _seen(self, record: Record) -> None:
        self.recovering = False
        ts = record.ts
        if self.first_ts is None:
            self.first_ts = ts
        if self.session_start is None:
            self.session_start = ts
        self.last_ts = ts
        self.run_id = record.run

    @handles(*(t for t in EVENT_TYPES.values() if t not in (LedgerRecovered, LockAcquired)))
    def _other(self, record: Record, e: Any) -> None:
        self._seen(record)

    def _new_session(self, record: Record) -> None:
        if self.session_start is not None and self.last_ts is not None:
            self.sessions.append(Session(self.session_start, self.last_ts))
        self.session_start = None
        self._seen(record)

    @handles(LedgerRecovered)
    def _recovered(self, record: Record, e: LedgerRecovered) -> None:
        self._new_session(record)
        self.recovering = True

    @handles(LockAcquired)
    def _lock(self, record: Record, e: LockAcquired) -> None:
        if self.recovering:  # appended with the recovery that opened this session
            self._seen(record)
        else:
            self._new_session(record)


class StatsProjection(SessionsProjection):
    """The sessions, and the sums over attempts ``engine stats`` shows; the types with
    no handler here only end the session (:class:`SessionsProjection`)."""

    def __init__(self) -> None:
        super().__init__()
        self.attempts = 0
        self.durations: list[float] = []
        """Every attempt outcome's duration, in ledger order."""
        self.failed = 0
        self.failed_time = 0.0
        self.backoff = 0.0
        self.heartbeats = 0
        self.max_parallel: int | None = None
        self.finished: set[str] = set()
        """Items whose last word is succeeded, dead-lettered or skipped."""
        self.succeeded: set[str] = set()
        self.spend = Spend()

    @handles(ItemDispatched)
    def _dispatched(self, record: Record, e: ItemDispatched) -> None:
        self._seen(record)
        self.attempts += 1
        self.finished.discard(e.item)

    @handles(ItemSucceeded)
    def _succeeded(self, record: Record, e: ItemSucceeded) -> None:
        self._seen(record)
        self.durations.append(e.duration)
        self.finished.add(e.item)
        self.succeeded.add(e.item)
        self.spend.add(e.usage, item=e.item, failed=False)

    @handles(ItemFailed)
    def _failed(self, record: Record, e: ItemFailed) -> None:
        self._seen(record)
        self.durations.append(e.duration)
        self.failed_time += e.duration
        self.failed += 1
        self.spend.add(e.usage, item=e.item, failed=True, error_type=e.error_type)

    @handles(StepSucceeded, StepFailed)
    def _step(self, record: Record, e: StepSucceeded | StepFailed) -> None:
        self._seen(record)
        if isinstance(e, StepFailed):
            self.spend.add(e.usage, item=None, failed=True, error_type=e.error_type)
        else:
            self.spend.add(e.usage, item=None, failed=False)

    @handles(ItemRetryScheduled)
    def _retry(self, record: Record, e: ItemRetryScheduled) -> None:
        self._seen(record)
        self.backoff += e.delay

    @handles(ItemDeadLettered, ItemSkipped)
    def _final(self, record: Record, e: ItemDeadLettered | ItemSkipped) -> None:
        self._seen(record)
        self.finished.add(e.item)

    @handles(ItemRequeued)
    def _requeued(self, record: Record, e: ItemRequeued) -> None:
        self._seen(record)
        self.finished.discard(e.item)

    @handles(Heartbeat)
    def _heartbeat(self, record: Record, e: Heartbeat) -> None:
        self._seen(record)
        self.heartbeats += 1

    @handles(RunStarted, RunResumed)
    def _parallel(self, record: Record, e: RunStarted | RunResumed) -> None:
        self._seen(record)
        if e.max_parallel:
            self.max_parallel = max(self.max_parallel or 0, e.max_parallel)

    def to_json(self) -> dict[str, Any]:
        state = {k: v for k, v in vars(self).items() if k not in ("finished", "succeeded")}
        return {**state, "finished": sorted(self.finished), "succeeded": sorted(self.succeeded)}
