"""All projections together, and ``replay()``: one streaming pass over a ledger."""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import msgspec

from ledger.errors import LedgerCorrupt
from ledger.events import Event, Record
from ledger.reader import BackgroundVerify, LedgerReader, ScanResult, can_verify_in_background
from projections.base import Projection
from projections.circuit import DEFAULT_ON, CircuitProjection
from projections.dlq import DLQProjection, DLQView
from projections.items import AttemptsView, ItemsProjection, ItemsView
from projections.queue import PendingProjection
from projections.run import RunProjection, RunView
from projections.signatures import SignaturesProjection, SignaturesView
from projections.snapshots import load_snapshot
from projections.spend import BudgetProjection
from projections.workers import WorkersProjection, WorkersView
from projections.worktrees import WorktreesProjection, WorktreesView

__all__ = ["Projections", "ProjectionsView", "replay"]

BoundHandler = Callable[[Record, Any], None]


class ProjectionsView(msgspec.Struct, kw_only=True):
    """The JSON form of every projection of a run (``engine replay --json``)."""

    seq: int
    """The last seq applied (-1 when none)."""
    run: RunView
    items: ItemsView
    attempts: AttemptsView
    dlq: DLQView
    workers: WorkersView
    signatures: SignaturesView
    worktrees: WorktreesView


P = TypeVar("P", bound=Projection)


class Projections:
    """Every projection of one run, fed by :meth:`apply`.

    The live engine applies each record it appends through this same object;
    :func:`replay` applies every record of a ledger. Equal events give equal
    state.
    """

    def __init__(
        self,
        *,
        circuit_on: Iterable[str] = DEFAULT_ON,
        extra: Iterable[Projection] = (),
    ) -> None:
        """``extra``: on-demand folds to feed as well (item values for the engine, the
        timeline and stats for the report); only the callers who ask pay for them."""
        self.run = RunProjection()
        self.items = ItemsProjection()
        self.dlq = DLQProjection()
        self.workers = WorkersProjection()
        self.signatures = SignaturesProjection()
        self.pending = PendingProjection(self.items)
        self.circuit = CircuitProjection(circuit_on)
        self.worktrees = WorktreesProjection()
        self.budget = BudgetProjection()
        self.last: Record | None = None
        self.scan: ScanResult | None = None
        """Where the replayed ledger ended (set by :func:`replay`)."""
        self.scheduling = False
        self.extra = tuple(extra)
        """On-demand folds (the timeline, stats) fed with the rest; only their callers pay."""
        self._build_table()

    def _build_table(self) -> None:
        """One dispatch table: event class -> the bound handlers that care."""
        projections = list(self.all())
        projections += self.extra
        if self.scheduling:
            projections.append(self.pending)  # after items: it reads item indexes
        table: dict[type[Event], list[BoundHandler]] = {}
        for projection in projections:
            for event, handler in type(projection).handlers.items():
                table.setdefault(event, []).append(handler.__get__(projection))
        self._table = {event: tuple(handlers) for event, handlers in table.items()}

    def find(self, kind: type[P]) -> P | None:
        """The on-demand fold of type ``kind`` given in ``extra``, if any."""
        return next((x for x in self.extra if isinstance(x, kind)), None)

    def enable_scheduling(self) -> None:
        """Build the pending-items index and keep it current from now on.

        Only a scheduler needs it; a replay that only shows a run skips it.
        """
        if not self.scheduling:
            self.scheduling = True
            self.pending.build()
            self._build_table()

    @property
    def seq(self) -> int:
        """The last seq applied (-1 when none)."""
        return -1 if self.last is None else self.last.seq

    def all(self) -> tuple[Projection, ...]:
        return (
            self.run,
            self.items,
            self.dlq,
            self.workers,
            self.signatures,
            self.circuit,
            self.worktrees,
            self.budget,
        )

    def apply(self, record: Record) -> None:
        """Fold one record into every projection."""
        data = record.data
        for handler in self._table.get(type(data), ()):
            handler(record, data)
        self.last = record
        self.run.observe(record)

    def apply_all(self, records: Iterable[Record]) -> None:
        """Fold many records; the same as :meth:`apply` on each, only faster."""
        get = self._table.get
        last = None
        for last in records:
            data = last.data
            for handler in get(type(data), ()):
                handler(last, data)
        if last is not None:
            self.last = last
            self.run.observe(last)

    def attempts_view(self) -> AttemptsView:
        by_item = {s.item: s.attempts for s in self.items.items.values() if s.attempts}
        return AttemptsView(
            dispatched=self.items.dispatched,
            retries=self.items.dispatched - len(by_item),
            running=len(self.workers.running),
            max_attempts=max(by_item.values(), default=0),
            by_item=dict(sorted(by_item.items())),
        )

    def to_json(self) -> ProjectionsView:
        return ProjectionsView(
            seq=self.seq,
            run=self.run.to_json(),
            items=self.items.to_json(),
            attempts=self.attempts_view(),
            dlq=self.dlq.to_json(),
            workers=self.workers.to_json(),
            signatures=self.signatures.to_json(),
            worktrees=self.worktrees.to_json(),
        )


def replay(
    path: str | os.PathLike[str],
    *,
    until: int | None = None,
    verify: bool = True,
    into: Projections | None = None,
    extra: Iterable[Projection] = (),
    snapshot: bool = True,
) -> Projections:
    """Rebuild every projection from the ledger at ``path`` in one pass.

    Records are checked as they are read (seq, decode, and with ``verify``
    the hash chain); a torn tail ends the replay (see ``.scan.torn``),
    corruption raises :class:`~ledger.errors.LedgerCorrupt`. ``until`` stops
    after that seq. A large ledger's chain is checked by a parallel process
    while this one decodes and folds. ``into``: fresh projections configured
    by the caller (a circuit breaker's error types) to fold into. ``extra``:
    on-demand folds to feed as well (``TimelineProjection``, ``StatsProjection``).
    ``snapshot``: start from the valid snapshot beside the ledger, if any
    (:mod:`projections.snapshots`), and fold only the records after it; never
    with ``until``, nor when an on-demand fold asked for is not snapshotted.
    """
    extra = tuple(extra)
    if into is not None and extra:
        raise ValueError("give extra projections to Projections(extra=...) when passing into")
    projections = into if into is not None else Projections(extra=extra)
    snap = None
    if snapshot and until is None:
        snap = load_snapshot(path, [*projections.all(), *projections.extra])
    if snap is not None:
        projections.last = snap.record
    reader = LedgerReader(path, start=None if snap is None else snap.start())
    background = None
    end = None
    if verify and snap is None and until is None and can_verify_in_background(path):
        # Both passes stop at the same byte, even if a writer is appending.
        end = os.path.getsize(path)
        background = BackgroundVerify(os.fspath(path), end=end, decode=False)
    gc_was_enabled = gc.isenabled()
    gc.disable()  # projections hold no cycles; collector passes only cost time
    try:
        for records, _lines, _offset in reader.batches(
            until=until, check_hash=verify and background is None, end=end
        ):
            projections.apply_all(records)
    finally:
        if gc_was_enabled:
            gc.enable()
        if background is not None:
            chain = background.wait()
    projections.scan = reader.result
    if background is not None and reader.result is not None:
        _check_agreement(os.fspath(path), reader.result, chain)
    return projections


def _check_agreement(path: str, decoded: ScanResult, chain: ScanResult) -> None:
    """The chain check must cover every record the decoding pass applied."""
    if chain.records < decoded.records:
        raise LedgerCorrupt(
            path,
            seq=chain.records,
            offset=chain.end_offset,
            reason="hash chain breaks here" + (f": {chain.torn.reason}" if chain.torn else ""),
        )
