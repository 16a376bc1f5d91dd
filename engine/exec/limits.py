"""A step's limits: the item's budget it may not pass, the agent's usage limit it hit.

Pure helpers of :class:`~engine.exec.sequence.StepSequence`: what is left of the
attempt's budget, the failure of a ``claude:`` step refused for it, and when the
usage limit a failed run hit resets.
"""

from __future__ import annotations

import time

from engine.exec.program import StepResult
from engine.map.usage_limits import failure_reset
from ledger.events import AgentUsage, StepRecovery

__all__ = ["budget_left", "budget_refusal", "usage_limit_note", "usage_limit_reset"]


def budget_left(budget: float | None, usage: AgentUsage | None) -> float | None:
    """What the attempt's agent may still spend: its ``budget`` less what its runs spent
    (rounded as ``--max-budget-usd`` is given); None without a budget."""
    if budget is None:
        return None
    return max(0.0, round(budget - (usage.cost_usd if usage else 0.0), 6))


def budget_refusal(budget: float, cap: float | None, usage: AgentUsage | None) -> StepResult:
    """A ``claude:`` step not started, nothing being left of the item's budget: a
    ``resource_exhausted`` failure that says what the item spent of ``cap``
    (``budget.max_item_cost_usd``; ``budget``: what the attempt was given of it)."""
    if cap is None:
        message = "item budget spent: nothing left of budget.max_item_cost_usd"
    else:
        spent = cap - budget + (usage.cost_usd if usage else 0.0)
        message = f"item budget spent: ${spent:.2f} of budget.max_item_cost_usd ${cap:.2f}"
    return StepResult(error=message, error_type="resource_exhausted")


def usage_limit_reset(failure: StepRecovery, result: StepResult, now: float) -> float | None:
    """When the usage limit a failed run hit resets (epoch seconds, after ``now``), read
    from its message and the ends of its stderr and stdout; None: not a usage limit with
    a known reset."""
    if failure.error_type != "rate_limited":
        return None
    stderr = result.stderr.decode("utf-8", "replace").splitlines()[-100:]
    stdout = result.stdout[-8192:].decode("utf-8", "replace").splitlines()[-20:]
    texts = (failure.message, "\n".join(stderr), "\n".join(stdout))
    return failure_reset(failure.error_type, texts, now)


def usage_limit_note(what: str, when: float, now: float | None = None) -> str:
    """That ``what`` (``reduce step 1``) waits for a usage limit's reset ``when``, in one
    line: the time in UTC (``15:00:03 UTC``), with its date when not today's."""
    today = time.gmtime(time.time() if now is None else now)[:3] == time.gmtime(when)[:3]
    at = time.strftime("%H:%M:%S UTC" if today else "%Y-%m-%d %H:%M:%S UTC", time.gmtime(when))
    return f"{what} hit a usage limit; waiting until {at} to run it again"
