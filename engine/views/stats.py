"""``engine stats``: how a run used its time, from the stats projection of its ledger.

The projection (``projections/stats.py``) folds sums and counts; here they
become the figures shown (sessions' wall time, percentiles, rates).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from ledger.times import epoch
from projections.replay import replay
from projections.stats import SessionsProjection, StatsProjection

__all__ = ["SPEND_FIELDS", "RunStats", "engine_time", "run_stats", "stats_of"]


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
    agent_calls: int = 0
    """Agent runs that reported what they spent (0: none, and the figures below are 0)."""
    cost_usd: float = 0.0
    """What the agents reported spending (``agent.output`` of a Claude format), every
    attempt and step included."""
    cost_per_item_p50_usd: float | None = None
    """Each succeeded item's cost (all its attempts), at the median ..."""
    cost_per_item_p95_usd: float | None = None
    cost_per_item_max_usd: float | None = None
    wasted_usd: float = 0.0
    """The cost of failed attempts and steps (what retries paid again)."""
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_hit_ratio: float | None = None
    """The share of input tokens read from the prompt cache."""
    turns: int = 0
    turns_per_item_p50: float | None = None
    turns_per_item_max: int | None = None


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


def engine_time(p: SessionsProjection) -> float:
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
        **_spend(p),
    )


SPEND_FIELDS = frozenset(
    {
        "agent_calls",
        "cost_usd",
        "cost_per_item_p50_usd",
        "cost_per_item_p95_usd",
        "cost_per_item_max_usd",
        "wasted_usd",
        "input_tokens",
        "output_tokens",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
        "cache_hit_ratio",
        "turns",
        "turns_per_item_p50",
        "turns_per_item_max",
    }
)
"""The figures of what agents spent (the table leaves them out when no agent reported)."""


def _spend(p: StatsProjection) -> dict[str, Any]:
    """The cost figures: every attempt's, and each succeeded item's."""
    spend = p.spend
    costs = sorted(spend.by_item[i] for i in p.succeeded if i in spend.by_item)
    turns = sorted(spend.turns_by_item[i] for i in p.succeeded if i in spend.turns_by_item)
    return {
        "agent_calls": spend.calls,
        "cost_usd": round(spend.cost_usd, 6),
        "cost_per_item_p50_usd": _percentile(costs, 0.50),
        "cost_per_item_p95_usd": _percentile(costs, 0.95),
        "cost_per_item_max_usd": costs[-1] if costs else None,
        "wasted_usd": round(spend.wasted_usd, 6),
        "input_tokens": spend.input_tokens,
        "output_tokens": spend.output_tokens,
        "cache_read_input_tokens": spend.cache_read_input_tokens,
        "cache_creation_input_tokens": spend.cache_creation_input_tokens,
        "cache_hit_ratio": spend.cache_hit_ratio,
        "turns": spend.turns,
        "turns_per_item_p50": _percentile([float(t) for t in turns], 0.50),
        "turns_per_item_max": turns[-1] if turns else None,
    }
