"""Values: what a run recorded that its engine reads back.

Each item's value (its first ``item.enqueued``), each item's result (its last
``item.succeeded`` or ``item.skipped``) or else its last failure, and each
setup or reduce step that succeeded, with the command its ``step.started``
recorded and what it captured. The engine takes the map's values, the results the reduce steps
see (``results.json``) and the setup steps a resume skips from here, never
from a pass of its own over the ledger.

A value or result too large for its record stays in the content store: this
projection keeps the reference (``value_ref``, ``result_ref``), the engine
reads it back. The projection keeps the records' payloads themselves, not
copies; memory grows with items. It is folded only where it is asked for
(``Projections(extra=(ValuesProjection(),))``: the engine), not by every replay that only
shows a run.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ledger.events import (
    ItemEnqueued,
    ItemFailed,
    ItemSkipped,
    ItemSucceeded,
    Record,
    StepStarted,
    StepSucceeded,
)
from projections.base import Projection, handles

__all__ = ["DoneStep", "ValuesProjection", "ValuesView"]


class DoneStep(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A setup or reduce step that succeeded, as it was when it ran."""

    phase: str
    index: int
    name: str
    command: str | None
    """The command its ``step.started`` recorded (None: no ``step.started`` for it)."""
    captured: str | None
    captured_value: Any


class ValuesView(msgspec.Struct, kw_only=True):
    """The values projection's JSON form (for comparisons; no command shows it)."""

    values: dict[str, ItemEnqueued]
    results: dict[str, ItemSucceeded | ItemSkipped]
    failures: dict[str, ItemFailed]
    steps: list[DoneStep]


class ValuesProjection(Projection):
    def __init__(self) -> None:
        self.enqueued: dict[str, ItemEnqueued] = {}
        """Each item's first ``item.enqueued`` (its value, or the value's reference)."""
        self.results: dict[str, ItemSucceeded | ItemSkipped] = {}
        """Each item's last success or skip, in the order the items first had one."""
        self.failures: dict[str, ItemFailed] = {}
        """Each item's last failure, while it has no success or skip after it."""
        self.steps: dict[tuple[str, int], DoneStep] = {}
        """(phase, index) of each step that succeeded: its last success."""
        self._started: dict[tuple[str, int], StepStarted] = {}

    @handles(ItemEnqueued)
    def _enqueued(self, record: Record, e: ItemEnqueued) -> None:
        self.enqueued.setdefault(e.item, e)

    @handles(ItemSucceeded, ItemSkipped)
    def _result(self, record: Record, e: ItemSucceeded | ItemSkipped) -> None:
        self.results[e.item] = e
        self.failures.pop(e.item, None)

    @handles(ItemFailed)
    def _failed(self, record: Record, e: ItemFailed) -> None:
        self.failures[e.item] = e

    @handles(StepStarted)
    def _step_started(self, record: Record, e: StepStarted) -> None:
        self._started[(e.phase, e.index)] = e

    @handles(StepSucceeded)
    def _step_succeeded(self, record: Record, e: StepSucceeded) -> None:
        key = (e.phase, e.index)
        started = self._started.get(key)
        self.steps[key] = DoneStep(
            phase=e.phase,
            index=e.index,
            name=started.name if started is not None else "",
            command=started.command if started is not None else None,
            captured=e.captured,
            captured_value=e.captured_value,
        )

    def to_json(self) -> ValuesView:
        return ValuesView(
            values=dict(self.enqueued),
            results=dict(self.results),
            failures=dict(self.failures),
            steps=[self.steps[key] for key in sorted(self.steps)],
        )
