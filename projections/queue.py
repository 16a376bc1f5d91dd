"""Pending items in dispatch order, and items waiting for a retry.

A pure fold like the others: the scheduler asks it for the next item that
may run at a given time (an RFC 3339 string taken from the clock outside the
fold), and the ``item.dispatched`` it then appends takes the item out.
Order: by item index; an item waiting for a retry becomes ready at its
``not_before``. (Every item leaves the queue by being dispatched or
skipped, so those are the only events that take one out.)
"""

from __future__ import annotations

import heapq

from ledger.events import (
    ItemDispatched,
    ItemEnqueued,
    ItemRequeued,
    ItemRetryScheduled,
    ItemSkipped,
    Record,
)
from projections.base import Projection, handles

__all__ = ["PendingProjection"]


class PendingProjection(Projection):
    name = "pending"

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.queued: dict[str, str] = {}
        """Items that may be dispatched, with their ``not_before`` ("" for now)."""
        self._ready: list[tuple[int, str]] = []
        self._delayed: list[tuple[str, int, str]] = []

    @handles(ItemEnqueued)
    def _enqueued(self, record: Record, e: ItemEnqueued) -> None:
        if e.item in self.index:
            return
        self.index[e.item] = e.index
        self.queued[e.item] = ""
        heapq.heappush(self._ready, (e.index, e.item))

    @handles(ItemRetryScheduled)
    def _retry(self, record: Record, e: ItemRetryScheduled) -> None:
        index = self.index.get(e.item)
        if index is None:
            return
        self.queued[e.item] = e.not_before
        heapq.heappush(self._delayed, (e.not_before, index, e.item))

    @handles(ItemRequeued)
    def _requeued(self, record: Record, e: ItemRequeued) -> None:
        index = self.index.get(e.item)
        if index is None:
            return
        self.queued[e.item] = ""
        heapq.heappush(self._ready, (index, e.item))

    @handles(ItemDispatched, ItemSkipped)
    def _gone(self, record: Record, e: ItemDispatched | ItemSkipped) -> None:
        self.queued.pop(e.item, None)

    def next_ready(self, now: str) -> str | None:
        """The next item that may run at ``now``, without taking it."""
        queued = self.queued
        delayed = self._delayed
        while delayed and delayed[0][0] <= now:
            not_before, index, item = heapq.heappop(delayed)
            if queued.get(item) == not_before:
                heapq.heappush(self._ready, (index, item))
        ready = self._ready
        while ready:
            _index, item = ready[0]
            waiting_until = queued.get(item)
            if waiting_until is not None and waiting_until <= now:
                return item
            heapq.heappop(ready)  # stale: dispatched, skipped, or waiting again
        return None

    def ready_items(self, now: str, limit: int) -> list[str]:
        """Up to ``limit`` items that may run at ``now``, in order, without taking them."""
        out: list[str] = []
        held: list[tuple[int, str]] = []
        while len(out) < limit:
            item = self.next_ready(now)
            if item is None:
                break
            held.append(heapq.heappop(self._ready))
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
