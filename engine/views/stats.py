"""``engine stats``: how a run used its time, from its ledger."""

from __future__ import annotations

from pathlib import Path

import msgspec

from ledger.events import (
    Heartbeat,
    ItemDeadLettered,
    ItemDispatched,
    ItemFailed,
    ItemRequeued,
    ItemRetryScheduled,
    ItemSkipped,
    ItemSucceeded,
    LockAcquired,
    RunResumed,
    RunStarted,
)
from ledger.reader import LedgerReader
from ledger.times import epoch

__all__ = ["RunStats", "run_stats"]


class RunStats(msgspec.Struct, kw_only=True):
    run_id: str
    wall_s: float
    """Time engines spent on the run: each session (lock taken to last record), summed,
    so the time between a crash and its resume is not counted."""
    span_s: float
    """First record to last."""
    sessions: int
    items_finished: int
    """Items that ended succeeded, dead-lettered or skipped (each counted once)."""
    items_per_s: float
    attempts: int
    attempt_p50_s: float | None
    attempt_p95_s: float | None
    attempt_p99_s: float | None
    max_parallel: int | None
    busy_s: float
    """Attempt time, summed."""
    parallel_efficiency: float | None
    """busy / (wall x max_parallel)."""
    failed_attempts: int
    retry_time_s: float
    """Time spent in attempts that failed."""
    backoff_s: float
    """Retry delays, summed."""
    heartbeats: int


def _percentile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    rank = q * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return round(ordered[low] + (ordered[high] - ordered[low]) * (rank - low), 6)


def run_stats(ledger: Path) -> RunStats:
    first = last = None
    run_id = ""
    durations: list[float] = []
    failed_time = backoff = 0.0
    failed = attempts = heartbeats = 0
    parallel: int | None = None
    final: dict[str, bool] = {}
    sessions: list[list[float]] = []
    for record in LedgerReader(ledger).records():
        first = first or record.ts
        last = record.ts
        run_id = record.run
        now = epoch(record.ts)
        if isinstance(record.data, LockAcquired) or not sessions:
            sessions.append([now, now])
        else:
            sessions[-1][1] = now
        data = record.data
        if isinstance(data, ItemDispatched):
            attempts += 1
            final.pop(data.item, None)
        elif isinstance(data, ItemSucceeded):
            durations.append(data.duration)
            final[data.item] = True
        elif isinstance(data, ItemFailed):
            durations.append(data.duration)
            failed_time += data.duration
            failed += 1
        elif isinstance(data, ItemRetryScheduled):
            backoff += data.delay
        elif isinstance(data, ItemDeadLettered | ItemSkipped):
            final[data.item] = True
        elif isinstance(data, ItemRequeued):
            final.pop(data.item, None)
        elif isinstance(data, Heartbeat):
            heartbeats += 1
        elif isinstance(data, RunStarted | RunResumed) and data.max_parallel:
            parallel = max(parallel or 0, data.max_parallel)
    wall = sum(end - start for start, end in sessions)
    finished = len(final)
    durations.sort()
    busy = sum(durations)
    return RunStats(
        run_id=run_id,
        wall_s=round(wall, 6),
        span_s=round(epoch(last) - epoch(first), 6) if first and last else 0.0,
        sessions=len(sessions),
        items_finished=finished,
        items_per_s=round(finished / wall, 3) if wall > 0 else 0.0,
        attempts=attempts,
        attempt_p50_s=_percentile(durations, 0.50),
        attempt_p95_s=_percentile(durations, 0.95),
        attempt_p99_s=_percentile(durations, 0.99),
        max_parallel=parallel,
        busy_s=round(busy, 6),
        parallel_efficiency=round(busy / (wall * parallel), 4) if wall > 0 and parallel else None,
        failed_attempts=failed,
        retry_time_s=round(failed_time, 6),
        backoff_s=round(backoff, 6),
        heartbeats=heartbeats,
    )
