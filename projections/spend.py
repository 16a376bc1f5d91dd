"""What a run's agents spent, as its outcome events' ``usage`` records it.

:class:`Spend` is folded by the stats projection (:mod:`projections.stats`): every attempt's
usage counts, failed and retried ones too (their cost is the run's wasted
spend), and so do setup, reduce and merge steps. :class:`BudgetProjection` keeps the
total (and each item's) live, against the run's budget.
"""

from __future__ import annotations

import msgspec

from ledger.events import (
    AgentUsage,
    BudgetExhausted,
    ItemFailed,
    ItemSucceeded,
    Record,
    RunResumed,
    StepFailed,
    StepSucceeded,
)
from projections.base import Projection, handles

__all__ = ["BudgetProjection", "Spend"]


class Spend(msgspec.Struct, kw_only=True):
    cost_usd: float = 0.0
    wasted_usd: float = 0.0
    """The cost of attempts (and steps) that failed."""
    steps_usd: float = 0.0
    """The cost of setup, reduce and merge steps."""
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    turns: int = 0
    calls: int = 0
    by_item: dict[str, float] = {}
    """Each item's cost, all its attempts together."""
    turns_by_item: dict[str, int] = {}
    by_error_type: dict[str, float] = {}
    """What failed attempts and steps cost, by their error type."""

    def add(
        self,
        usage: AgentUsage | None,
        *,
        item: str | None,
        failed: bool,
        error_type: str | None = None,
    ) -> None:
        """One outcome's usage; ``item`` None: a setup, reduce or merge step; a failure's
        ``error_type``."""
        if usage is None:
            return
        self.cost_usd = round(self.cost_usd + usage.cost_usd, 10)
        if failed:
            self.wasted_usd = round(self.wasted_usd + usage.cost_usd, 10)
            kind = error_type or "unknown"
            self.by_error_type[kind] = round(self.by_error_type.get(kind, 0.0) + usage.cost_usd, 10)
        if item is None:
            self.steps_usd = round(self.steps_usd + usage.cost_usd, 10)
        else:
            self.by_item[item] = round(self.by_item.get(item, 0.0) + usage.cost_usd, 10)
            self.turns_by_item[item] = self.turns_by_item.get(item, 0) + usage.turns
        self.input_tokens += usage.input_tokens
        self.output_tokens += usage.output_tokens
        self.cache_read_input_tokens += usage.cache_read_input_tokens
        self.cache_creation_input_tokens += usage.cache_creation_input_tokens
        self.turns += usage.turns
        self.calls += usage.calls

    @property
    def cache_hit_ratio(self) -> float | None:
        """The share of input tokens read from the cache."""
        total = self.input_tokens + self.cache_read_input_tokens + self.cache_creation_input_tokens
        return round(self.cache_read_input_tokens / total, 4) if total else None


class BudgetProjection(Projection):
    """The run's recorded spend against its budget, kept live (the scheduler decides by it).

    The spend counts every outcome's ``usage`` (failed attempts and steps too);
    the budget is the workflow's ``budget.max_cost_usd`` unless a resume raised it
    (``run.resumed``'s ``max_cost_usd``). ``exhausted``: a ``budget.exhausted`` was
    recorded since the budget last changed.
    """

    def __init__(self) -> None:
        self.spent_usd = 0.0
        self.by_item: dict[str, float] = {}
        """Each item's recorded spend, all its attempts together (items that spent only)."""
        self.raised_to: float | None = None
        """The budget the last resume gave (None: the workflow's)."""
        self.exhausted: BudgetExhausted | None = None

    def _spend(self, usage: AgentUsage | None, item: str | None) -> None:
        if usage is None or not usage.cost_usd:
            return
        self.spent_usd = round(self.spent_usd + usage.cost_usd, 10)
        if item is not None:
            self.by_item[item] = round(self.by_item.get(item, 0.0) + usage.cost_usd, 10)

    @handles(ItemSucceeded)
    def _succeeded(self, record: Record, e: ItemSucceeded) -> None:
        self._spend(e.usage, e.item)

    @handles(ItemFailed)
    def _failed(self, record: Record, e: ItemFailed) -> None:
        self._spend(e.usage, e.item)

    @handles(StepSucceeded)
    def _step_succeeded(self, record: Record, e: StepSucceeded) -> None:
        self._spend(e.usage, None)

    @handles(StepFailed)
    def _step_failed(self, record: Record, e: StepFailed) -> None:
        self._spend(e.usage, None)

    @handles(RunResumed)
    def _resumed(self, record: Record, e: RunResumed) -> None:
        if e.max_cost_usd is not None:
            self.raised_to = e.max_cost_usd
            self.exhausted = None

    @handles(BudgetExhausted)
    def _exhausted(self, record: Record, e: BudgetExhausted) -> None:
        self.exhausted = e

    def limit(self, configured: float | None) -> float | None:
        """The budget in force: the last resume's, else the workflow's ``configured``."""
        return self.raised_to if self.raised_to is not None else configured

    def to_json(self) -> dict[str, object]:
        exhausted = self.exhausted
        return {
            "spent_usd": self.spent_usd,
            "raised_to": self.raised_to,
            "exhausted": None if exhausted is None else msgspec.to_builtins(exhausted),
        }
