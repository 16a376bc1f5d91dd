"""``engine stats``: how a run used its time, from the stats projection of its ledger.

The projection (``projections/stats.py``) folds sums and counts; here they
become the figures shown (sessions' wall time, percentiles, rates).
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from ledger.times import epoch
from projections.replay import replay
from projections.stats import StatsProjection

__all__ = ["RunStats", "engine_time", "run_stats", "stats_of"]


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
    stats = StatsProjection()
    replay(ledger, extra=(stats,))
    return stats_of(stats)


def engine_time(p: StatsProjection) -> float:
    """Seconds engines spent on the run: each session (lock taken to its last record),
    summed; the time between a crash and its resume is not counted."""
    return sum(epoch(s.end) - epoch(s.start) for s in p.all_sessions())


def stats_of(p: StatsProjection) -> RunStats:
    """The figures of a stats projection's sums."""
    wall = engine_time(p)
    finished = len(p.finished)
    durations = sorted(p.durations)
    busy = sum(durations)
    first, last = p.first_ts, p.last_ts
    parallel = p.max_parallel
    return RunStats(
        run_id=p.run_id,
        wall_s=round(wall, 6),
        span_s=round(epoch(last) - epoch(first), 6) if first and last else 0.0,
        sessions=len(p.all_sessions()),
        items_finished=finished,
        items_per_s=round(finished / wall, 3) if wall > 0 else 0.0,
        attempts=p.attempts,
        attempt_p50_s=_percentile(durations, 0.50),
        attempt_p95_s=_percentile(durations, 0.95),
        attempt_p99_s=_percentile(durations, 0.99),
        max_parallel=parallel,
        busy_s=round(busy, 6),
        parallel_efficiency=round(busy / (wall * parallel), 4) if wall > 0 and parallel else None,
        failed_attempts=p.failed,
        retry_time_s=round(p.failed_time, 6),
        backoff_s=round(p.backoff, 6),
        heartbeats=p.heartbeats,
    )
