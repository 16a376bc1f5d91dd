"""What a run's agents spent, as its outcome events' ``usage`` records it.

Folded by the stats projection (:mod:`projections.stats`): every attempt's
usage counts, failed and retried ones too (their cost is the run's wasted
spend), and so do setup, reduce and merge steps.
"""

from __future__ import annotations

import msgspec

from ledger.events import AgentUsage

__all__ = ["Spend"]


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

    def add(self, usage: AgentUsage | None, *, item: str | None, failed: bool) -> None:
        """One outcome's usage; ``item`` None: a setup, reduce or merge step."""
        if usage is None:
            return
        self.cost_usd = round(self.cost_usd + usage.cost_usd, 10)
        if failed:
            self.wasted_usd = round(self.wasted_usd + usage.cost_usd, 10)
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
