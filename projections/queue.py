"""Pending items in dispatch order, and items waiting for a retry.

An index over the items projection, built only for a scheduler: a replay
that only shows a run never pays for it. :meth:`PendingProjection.build`
derives it from the items' statuses; from then on it is a fold like every
other projection. Ready items go in this order: items that ran before
(a retry once its ``not_before`` has passed, or an interrupted attempt),
earliest due first; then items never dispatched, by index (the input's
order); then items requeued from the DLQ, by index. So a retry runs when it
is due, not after every fresh item. The scheduler asks it for the next
items that may run at a given time (an RFC 3339 string taken from the clock
outside the fold); the ``item.dispatched`` it then appends takes them out.
(Every item leaves the queue by being dispatched or skipped.)
"""

from __future__ import annotations

import heapq
from collections.abc import Container
from typing import Any

from ledger.events import (
    ItemDeadLettered,
    ItemDispatched,
    ItemEnqueued,
    ItemFailed,
    ItemRequeued,
    ItemRetryScheduled,
    ItemSkipped,
    ItemSucceeded,
    Record,
)
from projections.base import Projection, handles
from projections.items import ItemsProjection

__all__ = ["PendingProjection"]


class PendingProjection(Projection):
    def __init__(self, items: ItemsProjection) -> None:
        self.items = items
        self.queued: dict[str, str] = {}
        """Items that may be dispatched, with their ``not_before`` ("" for now)."""
        self._ready: list[tuple[int, str, int, str]] = []
        """(rank, due, index, item): see :func:`_rank`; ``due`` is the ``not_before`` the
        item was queued with ("" for none)."""
        self._delayed: list[tuple[str, int, str]] = []
        self._queued_rank: dict[str, int] = {}
        """The rank each queued item was queued with (see :func:`_rank`)."""

    def build(self) -> None:
        """Derive the queue from the items projection as it stands."""
        self.queued.clear()
        self._queued_rank.clear()
        self._ready.clear()
        self._delayed.clear()
        for state in self.items.items.values():
            if state.status != "pending":
                continue
            if state.retry_at:
                self.queued[state.item] = state.retry_at
                self._delayed.append((state.retry_at, state.index, state.item))
            else:
                self.queued[state.item] = ""
                self._queued_rank[state.item] = _rank(state)
                self._ready.append((_rank(state), "", state.index, state.item))
        heapq.heapify(self._ready)
        heapq.heapify(self._delayed)

    @handles(
        ItemEnqueued,
        ItemDispatched,
        ItemSucceeded,
        ItemFailed,
        ItemRetryScheduled,
        ItemDeadLettered,
        ItemRequeued,
        ItemSkipped,
    )
    def _changed(self, record: Record, e: Any) -> None:
        """Mirror the item's status, as the items projection (applied first) now has it."""
        state = self.items.items.get(e.item)
        if state is None:
            return
        if state.status != "pending":
            self.queued.pop(e.item, None)
            return
        not_before = state.retry_at or ""
        rank = _rank(state)
        if self.queued.get(e.item) == not_before and (
            not_before or self._queued_rank.get(e.item) == rank
        ):
            return  # queued as it is already (a change of rank queues it again)
        self.queued[e.item] = not_before
        self._queued_rank[e.item] = rank
        if not_before:
            heapq.heappush(self._delayed, (not_before, state.index, e.item))
        else:
            heapq.heappush(self._ready, (rank, "", state.index, e.item))

    def next_ready(self, now: str) -> str | None:
        """The next item that may run at ``now``, without taking it."""
        queued = self.queued
        delayed = self._delayed
        while delayed and delayed[0][0] <= now:
            not_before, index, item = heapq.heappop(delayed)
            if queued.get(item) == not_before:
                rank = _rank(self.items.items[item])
                heapq.heappush(self._ready, (rank, not_before, index, item))
        ready = self._ready
        items = self.items.items
        while ready:
            rank, due, _index, item = ready[0]
            if queued.get(item) == due and rank == _rank(items[item]):
                return item
            # Stale: dispatched, skipped, waiting again, or queued since with another rank.
            heapq.heappop(ready)
        return None

    def ready_items(self, now: str, limit: int, exclude: Container[str] = frozenset()) -> list[str]:
        """Up to ``limit`` items that may run at ``now``, in order, without taking them.

        Items in ``exclude`` (already being dispatched) are passed over.
        """
        out: list[str] = []
        held: list[tuple[int, str, int, str]] = []
        while len(out) < limit:
            item = self.next_ready(now)
            if item is None:
                break
            entry = heapq.heappop(self._ready)
            if item in out:
                continue  # a second entry for the same item
            held.append(entry)
            if item not in exclude:
                out.append(item)
        for entry in held:
            heapq.heappush(self._ready, entry)
        return out

    def next_time(self) -> str | None:
        """When the earliest waiting retry becomes ready."""
        while self._delayed:
            not_before, _index, item = self._delayed[0]
            if self.queued.get(item) == not_before:
                return not_before
            heapq.heappop(self._delayed)
        return None

    @property
    def empty(self) -> bool:
        return not self.queued

    def to_json(self) -> dict[str, object]:
        waiting = sum(1 for nb in self.queued.values() if nb)
        return {"queued": len(self.queued), "waiting_for_retry": waiting}


def _rank(state: Any) -> int:
    """0: ran before (a retry, or interrupted); 1: never dispatched; 2: back from the DLQ."""
    if state.requeued:
        return 2
    return 0 if state.attempts else 1
