"""What a run's agents are doing, waiting for and spending, as ``engine status`` and the
live progress view show it.

* each running attempt with its agent's activity so far (``agent.output:
  claude-stream-json``: events, turns, last tool, spend), from the workers
  projection's latest heartbeats;
* the wait for a usage limit's reset: the circuit open until a time an agent
  said (``circuit.opened``'s ``until``), and the item that said it;
* the recorded spend against the run's budget (``budget.max_cost_usd``, or the
  last ``engine resume --budget``), and whether it was spent.

The views are data (``--json``); the ``*_line`` functions say them in one line each.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from engine.views.durations import human_duration
from ledger.events import AgentActivity, Heartbeat, ItemDispatched
from ledger.times import epoch
from projections.replay import Projections

__all__ = [
    "BudgetView",
    "RunningView",
    "WaitView",
    "agent_line",
    "budget_line",
    "budget_view",
    "busiest",
    "configured_budget",
    "money",
    "running",
    "spend_parts",
    "wait_line",
    "wait_view",
]


class RunningView(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A running attempt, and what its agent did so far."""

    item: str
    attempt: int
    dispatched_at: str
    last_heartbeat: str | None = None
    agent: AgentActivity | None = None
    """Its agent's events, assistant turns, last tool and spend so far (with
    ``agent.output: claude-stream-json``; absent otherwise, or before its first report)."""


class WaitView(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What keeps the run from starting attempts until a known time."""

    reason: str
    """``usage_limit``: an agent's usage limit, until it resets."""
    until: str
    """When it resets (RFC 3339): the circuit half-opens then."""
    item: str | None = None
    """The item whose agent reported it."""
    error_type: str | None = None


class BudgetView(msgspec.Struct, kw_only=True):
    """What the run's agents spent (every recorded attempt and step), against its budget."""

    spent_usd: float
    max_cost_usd: float | None
    """The budget in force: the workflow's ``budget.max_cost_usd`` or the last ``engine
    resume --budget`` (None: no budget)."""
    exhausted: bool
    """The budget was reached (``budget.exhausted``): no new attempt starts until a
    resume raises it."""


def running(p: Projections) -> list[RunningView]:
    """The running attempts, oldest first."""
    out = []
    for live in p.workers.running.values():
        d = live.dispatched.data
        assert isinstance(d, ItemDispatched)
        hb = live.last
        assert hb is None or isinstance(hb.data, Heartbeat)
        out.append(
            RunningView(
                item=d.item,
                attempt=d.attempt,
                dispatched_at=live.dispatched.ts,
                last_heartbeat=hb.ts if hb is not None else None,
                agent=live.agent,
            )
        )
    out.sort(key=lambda r: (r.dispatched_at, r.item))
    return out


def wait_view(p: Projections) -> WaitView | None:
    """The usage limit the run waits for, while its circuit is open until its reset."""
    circuit = p.circuit
    if circuit.state != "open" or not circuit.until:
        return None
    return WaitView(
        reason="usage_limit",
        until=circuit.until,
        item=circuit.opened_by,
        error_type=circuit.last_type,
    )


def configured_budget(p: Projections) -> float | None:
    """The workflow's ``budget.max_cost_usd``, read from its copy in ``run.created``."""
    created = p.run.created
    if created is None or "max_cost_usd" not in created.workflow:
        return None  # without reading the YAML (nor importing its parser): no budget
    import yaml  # noqa: PLC0415 - only a workflow with a budget is read

    from engine.workflow.reading import load_yaml  # noqa: PLC0415

    try:
        spec: Any = load_yaml(created.workflow)
    except yaml.YAMLError:
        return None
    budget = spec.get("budget") if isinstance(spec, dict) else None
    value = budget.get("max_cost_usd") if isinstance(budget, dict) else None
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None


def budget_view(p: Projections) -> BudgetView | None:
    """The spend and the budget; None when nothing was spent and there is no budget."""
    budget = p.budget
    exhausted = budget.exhausted
    limit = exhausted.max_cost_usd if exhausted else budget.limit(configured_budget(p))
    if limit is None and not budget.spent_usd:
        return None
    return BudgetView(
        spent_usd=budget.spent_usd, max_cost_usd=limit, exhausted=exhausted is not None
    )


def money(usd: float) -> str:
    """Dollars as people read them: ``$12.50``, ``$0.0125``."""
    if usd >= 1 or round(usd, 2) == usd:
        return f"${usd:,.2f}"
    return "$" + f"{usd:.4f}".rstrip("0")


def agent_line(r: RunningView) -> str:
    """A running attempt's agent in one line: ``a (attempt 2): 3 turns · Bash · $0.12``."""
    head = f"{r.item} (attempt {r.attempt})"
    a = r.agent
    if a is None:
        return head
    turns = f"{a.turns:,} turn{'' if a.turns == 1 else 's'}"
    parts = [turns, f"last tool {a.tool}" if a.tool else "no tool yet", f"{money(a.cost_usd)}"]
    return f"{head}: " + " · ".join(parts)


def _clock(ts: str, now: float) -> str:
    """An RFC 3339 time as ``15:00:03 UTC``, the date before it when not today's."""
    today = time.strftime("%Y-%m-%d", time.gmtime(now))
    day, clock = ts[:10], ts[11:19]
    return f"{clock} UTC" if day == today else f"{day} {clock} UTC"


def wait_line(w: WaitView, now: float | None = None) -> str:
    """``waiting for the usage limit to reset at 15:00:03 UTC (in 2m10s), reported by item
    X``."""
    now = time.time() if now is None else now
    try:
        left = epoch(w.until) - now
    except ValueError:
        return f"waiting for the usage limit to reset at {w.until}"
    when = f"in {human_duration(left)}" if left > 0 else "due now"
    line = f"waiting for the usage limit to reset at {_clock(w.until, now)} ({when})"
    return line + (f", reported by item {w.item}" if w.item else "")


def budget_line(b: BudgetView, run_id: str) -> str:
    """The spend against the budget; once it is spent, how to raise it."""
    spent = money(b.spent_usd)
    if b.max_cost_usd is None:
        return f"spent {spent} (no budget set)"
    if b.exhausted:
        return (
            f"budget spent: {spent} of {money(b.max_cost_usd)}; "
            f"raise it: engine resume {run_id} --budget USD"
        )
    return f"spent {spent} of the budget {money(b.max_cost_usd)}"


def spend_parts(p: Projections, done: int, total: int) -> list[str]:
    """The progress line's spend: what was spent so far, and (once an item finished) the
    whole run's at that rate (spent / finished items * total items); none before any
    spend."""
    spent = p.budget.spent_usd
    if spent <= 0:
        return []
    parts = [f"{money(spent)} spent"]
    if done > 0 and total >= done:
        parts.append(f"~{money(spent / done * total)} for the run")
    return parts


def busiest(p: Projections, n: int = 3) -> list[RunningView]:
    """The ``n`` running attempts whose agents took the most turns (those that report)."""
    active = [r for r in running(p) if r.agent is not None]
    active.sort(key=lambda r: (-r.agent.turns if r.agent else 0, -_events(r), r.item))
    return active[:n]


def _events(r: RunningView) -> int:
    return r.agent.events if r.agent is not None else 0
