"""Pending items in dispatch order, and items waiting for a retry.

A pure fold like the others: the scheduler asks it for the next item that
may run at a given time (an RFC 3339 string taken from the clock outside the
fold), and the ``item.dispatched`` it then appends takes the item out.
Order: by item index; an item waiting for a retry becomes ready at its
``not_before``.
"""

from __future__ import annotations

import heapq

from ledger.events import (
    ItemDeadLettered,
    ItemDispatched,
    ItemEnqueued,
    ItemRequeued,
    ItemRetryScheduled,
    ItemSkipped,
    ItemSucceeded,
    Record,
)
from projections.base import Projection, handles

__all__ = ["PendingProjection"]


class PendingProjection(Projection):
    name = "pending"

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.queued: set[str] = set()
        """Items that may be dispatched (now or after their retry time)."""
        self.not_before: dict[str, str] = {}
        self._ready: list[tuple[int, str]] = []
        self._delayed: list[tuple[str, int, str]] = []

    @handles(ItemEnqueued)
    def _enqueued(self, record: Record, e: ItemEnqueued) -> None:
        if e.item in self.index:
            return
        self.index[e.item] = e.index
        self.queued.add(e.item)
        heapq.heappush(self._ready, (e.index, e.item))

    @handles(ItemRetryScheduled)
    def _retry(self, record: Record, e: ItemRetryScheduled) -> None:
        if e.item not in self.index:
            return
        self.queued.add(e.item)
        self.not_before[e.item] = e.not_before
        heapq.heappush(self._delayed, (e.not_before, self.index[e.item], e.item))

    @handles(ItemRequeued)
    def _requeued(self, record: Record, e: ItemRequeued) -> None:
        if e.item not in self.index:
            return
        self.queued.add(e.item)
        self.not_before.pop(e.item, None)
        heapq.heappush(self._ready, (self.index[e.item], e.item))

    @handles(ItemDispatched, ItemSkipped, ItemSucceeded, ItemDeadLettered)
    def _gone(
        self, record: Record, e: ItemDispatched | ItemSkipped | ItemSucceeded | ItemDeadLettered
    ) -> None:
        self.queued.discard(e.item)
        self.not_before.pop(e.item, None)

    def next_ready(self, now: str) -> str | None:
        """The next item that may run at ``now``, without taking it."""
        delayed = self._delayed
        while delayed and delayed[0][0] <= now:
            not_before, index, item = heapq.heappop(delayed)
            if item in self.queued and self.not_before.get(item) == not_before:
                heapq.heappush(self._ready, (index, item))
        ready = self._ready
        while ready:
            index, item = ready[0]
            if item in self.queued and item not in self.not_before:
                return item
            if item in self.queued and self.not_before.get(item, "") <= now:
                return item
            heapq.heappop(ready)  # stale: dispatched, done, or waiting again
        return None

    def next_time(self) -> str | None:
        """When the earliest waiting retry becomes ready."""
        while self._delayed:
            not_before, _index, item = self._delayed[0]
            if item in self.queued and self.not_before.get(item) == not_before:
                return not_before
            heapq.heappop(self._delayed)
        return None

    @property
    def empty(self) -> bool:
        return not self.queued

    def to_json(self) -> dict[str, object]:
        return {"queued": len(self.queued), "waiting_for_retry": len(self.not_before)}
