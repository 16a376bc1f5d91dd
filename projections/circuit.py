"""The circuit breaker's state: consecutive qualifying failures, open or not.

Which error types count is the workflow's (``circuit_breaker.on``); the
projection is built with that list, and stays a pure fold. While half open,
it counts the probes that passed: outcomes that left no streak of
qualifying failures standing (a success, a failure of another type).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from ledger.events import (
    CircuitClosed,
    CircuitHalfOpen,
    CircuitOpened,
    ItemFailed,
    ItemSucceeded,
    Record,
)
from projections.base import Projection, handles

__all__ = ["CircuitProjection"]

DEFAULT_ON = ("rate_limited", "api_error")


class CircuitProjection(Projection):
    def __init__(self, on: Iterable[str] = DEFAULT_ON) -> None:
        self.on = frozenset(on)
        self.state: Literal["closed", "open", "half_open"] = "closed"
        self.streak = 0
        """Consecutive failures whose type is in ``on``."""
        self.last_type: str | None = None
        self.opened_at: str | None = None
        self.cooldown = 0.0
        self.opened = 0
        self.probes = 1
        """Half open: how many probes may run at once (``circuit.half_open``'s ``probes``)."""
        self.success_threshold = 1
        """Half open: how many probes must pass to close it."""
        self.passed = 0
        """Half open: probes that passed since it half-opened."""
        self.until: str | None = None
        """Open: when it half-opens, when an agent said when its usage limit resets."""
        self.opened_by: str | None = None
        """Open: the item whose failure opened it."""

    @handles(ItemFailed)
    def _failed(self, record: Record, e: ItemFailed) -> None:
        if e.error_type in self.on:
            self.streak += 1
            self.last_type = e.error_type
        elif e.error_type != "interrupted":
            self.streak = 0
        if self.state == "half_open" and self.streak == 0:
            self.passed += 1

    @handles(ItemSucceeded)
    def _succeeded(self, record: Record, e: ItemSucceeded) -> None:
        self.streak = 0
        if self.state == "half_open":
            self.passed += 1

    @handles(CircuitOpened)
    def _opened(self, record: Record, e: CircuitOpened) -> None:
        self.state = "open"
        self.opened_at = record.ts
        self.cooldown = e.cooldown
        self.until = e.until
        self.opened_by = e.item
        self.opened += 1
        self.passed = 0

    @handles(CircuitHalfOpen)
    def _half_open(self, record: Record, e: CircuitHalfOpen) -> None:
        self.state = "half_open"
        self.probes = e.probes
        self.success_threshold = e.success_threshold
        self.passed = 0

    @handles(CircuitClosed)
    def _closed(self, record: Record, e: CircuitClosed) -> None:
        self.state = "closed"
        self.streak = 0
        self.passed = 0

    def to_json(self) -> dict[str, object]:
        return {
            "state": self.state,
            "streak": self.streak,
            "opened": self.opened,
            "probes": self.probes,
            "success_threshold": self.success_threshold,
            "passed": self.passed,
            "until": self.until,
            "opened_by": self.opened_by,
        }
