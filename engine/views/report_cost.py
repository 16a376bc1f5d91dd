"""The audit report's cost section: what the run's agents spent, from ``engine stats``' figures.

The figures are ``engine stats``' own (:func:`engine.views.stats.stats_of`, under the
same names as ``engine stats --json``), with what only the report shows beside them:
the cost of setup, reduce and merge steps, the most expensive items with their
attempts, and the cost of failures by error type. A run whose agents reported no
usage has no cost section (``cost`` is null; Markdown and HTML say so in a line).
"""

from __future__ import annotations

from typing import Any

import msgspec

from engine.views.stats import SPEND_FIELDS, stats_of
from projections.stats import StatsProjection

__all__ = ["NO_USAGE", "TOP_ITEMS", "cost_of", "cost_tables"]

TOP_ITEMS = 10
"""The most expensive items the report lists."""

NO_USAGE = "no agent usage recorded"

Table = tuple[str, list[str], list[list[Any]]]


def cost_of(
    stats: StatsProjection,
    *,
    attempts: dict[str, int],
    status: dict[str, str],
    failures: dict[str, int],
) -> dict[str, Any] | None:
    """The cost section's data; None when no agent reported what it spent.

    ``attempts`` and ``status``: each item's attempts and status, as the report's
    timeline has them; ``failures``: its failed attempts by error type.
    """
    figures = stats_of(stats)
    if not figures.agent_calls:
        return None
    spend = stats.spend
    out = {k: v for k, v in msgspec.to_builtins(figures).items() if k in SPEND_FIELDS}
    out["steps_usd"] = round(spend.steps_usd, 6)
    top = sorted(spend.by_item.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_ITEMS]
    out["top_items"] = [
        {
            "item": item,
            "status": status.get(item),
            "attempts": attempts.get(item, 0),
            "cost_usd": round(cost, 6),
        }
        for item, cost in top
    ]
    out["by_error_type"] = [
        {"error_type": kind, "failed_attempts": failures.get(kind, 0), "cost_usd": round(cost, 6)}
        for kind, cost in sorted(spend.by_error_type.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    return out


def usd(value: float | None) -> str:
    """A cost as the report shows it: dollars to a hundredth of a cent."""
    return "-" if value is None else f"${value:,.4f}"


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _figures(c: dict[str, Any]) -> list[list[Any]]:
    ratio = c["cache_hit_ratio"]
    p50 = c["turns_per_item_p50"]
    return [
        ["total cost", usd(c["cost_usd"])],
        ["setup, reduce and merge steps", usd(c["steps_usd"])],
        ["wasted (failed attempts and retries)", usd(c["wasted_usd"])],
        ["per succeeded item, p50", usd(c["cost_per_item_p50_usd"])],
        ["per succeeded item, p95", usd(c["cost_per_item_p95_usd"])],
        ["per succeeded item, max", usd(c["cost_per_item_max_usd"])],
        ["agent calls", _count(c["agent_calls"])],
        ["input tokens", _count(c["input_tokens"])],
        ["output tokens", _count(c["output_tokens"])],
        ["cache read input tokens", _count(c["cache_read_input_tokens"])],
        ["cache creation input tokens", _count(c["cache_creation_input_tokens"])],
        ["cache hit ratio (of input tokens)", "-" if ratio is None else f"{ratio:.1%}"],
        ["turns", _count(c["turns"])],
        ["turns per item, p50", "-" if p50 is None else f"{p50:g}"],
        ["turns per item, max", _count(c["turns_per_item_max"])],
    ]


def cost_tables(cost: dict[str, Any]) -> list[Table]:
    """The section's tables (title, headers, rows), for Markdown and HTML alike."""
    return [
        ("Cost", ["figure", "value"], _figures(cost)),
        (
            f"Most expensive items (top {TOP_ITEMS})",
            ["item", "status", "attempts", "cost"],
            [
                [t["item"], t["status"], t["attempts"], usd(t["cost_usd"])]
                for t in cost["top_items"]
            ],
        ),
        (
            "Cost by error type",
            ["error type", "failed attempts", "cost"],
            [
                [e["error_type"], e["failed_attempts"], usd(e["cost_usd"])]
                for e in cost["by_error_type"]
            ],
        ),
    ]
