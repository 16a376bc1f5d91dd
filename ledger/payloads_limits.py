"""The payloads of the limits family: the circuit breaker, and the run's budget.

The circuit opens after a streak of failures of its types, or at once when an
agent said when its usage limit resets (``until``); no item is dispatched while
it is open, and it half-opens to let probes through. The budget is spent when
the recorded cost of the run's agents reaches it: no new attempt starts, and
the run stops, resumable with a higher budget.
"""

from __future__ import annotations

from typing import ClassVar

from ledger.payloads import Event

__all__ = [
    "ITEM_BUDGET_SPENT",
    "BudgetExhausted",
    "CircuitClosed",
    "CircuitHalfOpen",
    "CircuitOpened",
]

ITEM_BUDGET_SPENT = "item budget spent"
"""``item.dead_lettered``'s ``reason`` for an item whose recorded spend reached
``budget.max_item_cost_usd``."""


class CircuitOpened(Event, frozen=True):
    TYPE: ClassVar[str] = "circuit.opened"
    failures: int
    error_type: str
    cooldown: float
    """Seconds it stays open before it half-opens."""
    until: str | None = None
    """When it half-opens (RFC 3339), when that is known rather than a cooldown: the
    reset of the usage limit an agent hit (``cooldown`` is then the seconds to it)."""
    item: str | None = None
    """The item whose failure opened it."""


class CircuitHalfOpen(Event, frozen=True):
    TYPE: ClassVar[str] = "circuit.half_open"
    probe_item: str | None = None
    """The first probe: the next item ready when it half-opened."""
    probes: int = 1
    """Probes let through at once (``circuit_breaker.half_open_requests``)."""
    success_threshold: int = 1
    """Probes that must pass (succeed, or fail otherwise than the circuit's types) to close it."""


class CircuitClosed(Event, frozen=True):
    TYPE: ClassVar[str] = "circuit.closed"
    reason: str = ""


class BudgetExhausted(Event, frozen=True):
    TYPE: ClassVar[str] = "budget.exhausted"
    spent_usd: float
    """The recorded spend of the run's agents when it was reached."""
    max_cost_usd: float
    """The budget in force (``budget.max_cost_usd``, or the last ``engine resume --budget``)."""
