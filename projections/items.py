"""Items: the status of every work item, and attempt counts.

Statuses (the one place they are declared):

* ``pending``: enqueued, requeued from the DLQ, or waiting for a retry
  (then ``retry_at`` is set);
* ``running``: an attempt was dispatched and has no outcome yet;
* ``succeeded``: an attempt succeeded (final: it never runs again);
* ``failed``: the last attempt failed and no retry or dead-lettering was
  recorded after it (``on_item_failure: ignore``/``fail``, or a decision
  still to come);
* ``dead``: in the dead-letter queue;
* ``skipped``: not run (a cache hit, or already done).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from ledger.events import (
    CacheHit,
    ItemDeadLettered,
    ItemDispatched,
    ItemDuplicate,
    ItemEnqueued,
    ItemFailed,
    ItemRequeued,
    ItemRetryScheduled,
    ItemSkipped,
    ItemSucceeded,
    Record,
)
from projections.base import Projection, handles

__all__ = [
    "ITEM_STATUSES",
    "AttemptsView",
    "ItemCounts",
    "ItemState",
    "ItemStatus",
    "ItemsProjection",
    "ItemsView",
]

ItemStatus = Literal["pending", "running", "succeeded", "failed", "dead", "skipped"]
ITEM_STATUSES: tuple[ItemStatus, ...] = (
    "pending",
    "running",
    "succeeded",
    "failed",
    "dead",
    "skipped",
)


class ItemState(msgspec.Struct, kw_only=True, gc=False):
    """One item's state; kept small, since memory grows with items."""

    item: str
    index: int
    status: ItemStatus = "pending"
    attempts: int = 0
    """Attempts dispatched so far (across resumes and DLQ retries)."""
    error_type: str | None = None
    signature: str | None = None
    last_error: str | None = None
    retry_at: str | None = None
    updated_at: str | None = None
    cache_hit: bool = False
    requeued: bool = False
    """Came back from the DLQ (``item.requeued``); such items run last."""
    waits: int = 0
    """Attempts that ended at a usage limit and do not count against ``max_attempts``."""
    session: str | None = None
    """The agent session of its last failed attempt that reported one (what
    ``retry.resume_session`` resumes)."""


class ItemCounts(msgspec.Struct, kw_only=True):
    total: int = 0
    pending: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    dead: int = 0
    skipped: int = 0
    duplicate: int = 0


class ItemsView(msgspec.Struct, kw_only=True):
    counts: ItemCounts
    items: list[ItemState]


class ItemsProjection(Projection):
    """Every item's state (``items``) and the counts by status.

    The counts stand alone (their sum is the number of items), so a reader
    that only counts never needs the table: restored from a snapshot, the
    table is decoded on its first use (:meth:`defer_items`).
    """

    items: dict[str, ItemState]

    def __init__(self) -> None:
        self.items: dict[str, ItemState] = {}
        self.counts: dict[str, int] = dict.fromkeys(ITEM_STATUSES, 0)
        self.duplicates = 0
        self.dispatched = 0
        """Attempts dispatched in all (across resumes and DLQ retries)."""

    def defer_items(self, load: Callable[[], dict[str, ItemState]]) -> None:
        """Drop the table; ``load()`` gives it back on its first use."""
        self.__dict__.pop("items", None)
        self._load_items = load

    @property
    def items_loaded(self) -> bool:
        """Whether the table is at hand (not waiting for its first use)."""
        return "items" in self.__dict__

    if not TYPE_CHECKING:

        def __getattr__(self, name: str) -> Any:
            # Only reached while ``items`` is deferred: a normal attribute after.
            if name == "items" and "_load_items" in self.__dict__:
                self.items = self.__dict__.pop("_load_items")()
                return self.items
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _move(self, state: ItemState, status: ItemStatus, ts: str) -> None:
        counts = self.counts
        counts[state.status] -= 1
        counts[status] += 1
        state.status = status
        state.updated_at = ts

    @handles(ItemEnqueued)
    def _enqueued(self, record: Record, e: ItemEnqueued) -> None:
        if e.item in self.items:
            return
        self.items[e.item] = ItemState(item=e.item, index=e.index, updated_at=record.ts)
        self.counts["pending"] += 1

    @handles(ItemDuplicate)
    def _duplicate(self, record: Record, e: ItemDuplicate) -> None:
        self.duplicates += 1

    @handles(ItemDispatched)
    def _dispatched(self, record: Record, e: ItemDispatched) -> None:
        state = self.items.get(e.item)
        if state is None:
            return
        self.dispatched += 1
        state.attempts = max(state.attempts, e.attempt)
        state.retry_at = None
        counts = self.counts
        counts[state.status] -= 1
        counts["running"] += 1
        state.status = "running"
        state.updated_at = record.ts

    @handles(ItemSucceeded)
    def _succeeded(self, record: Record, e: ItemSucceeded) -> None:
        state = self.items.get(e.item)
        if state is None or e.attempt < state.attempts:
            return  # unknown, or a late outcome of an older attempt
        state.error_type = state.signature = state.last_error = None
        self._move(state, "succeeded", record.ts)

    @handles(ItemFailed)
    def _failed(self, record: Record, e: ItemFailed) -> None:
        state = self.items.get(e.item)
        if state is None or e.attempt < state.attempts:
            return  # unknown, or a late outcome of an older attempt
        state.error_type = e.error_type
        state.signature = e.signature
        state.last_error = e.message
        if e.usage is not None and e.usage.session_id is not None:
            state.session = e.usage.session_id  # else the last one known stays
        self._move(state, "failed", record.ts)

    @handles(ItemRetryScheduled)
    def _retry(self, record: Record, e: ItemRetryScheduled) -> None:
        state = self.items.get(e.item)
        if state is None:
            return
        state.retry_at = e.not_before
        if not e.counted:
            state.waits += 1
        self._move(state, "pending", record.ts)

    @handles(ItemDeadLettered)
    def _dead(self, record: Record, e: ItemDeadLettered) -> None:
        state = self.items.get(e.item)
        if state is None:
            return
        state.error_type = e.error_type
        state.signature = e.signature
        self._move(state, "dead", record.ts)

    @handles(ItemRequeued)
    def _requeued(self, record: Record, e: ItemRequeued) -> None:
        state = self.items.get(e.item)
        if state is None:
            return
        state.retry_at = None
        state.requeued = True
        self._move(state, "pending", record.ts)

    @handles(ItemSkipped)
    def _skipped(self, record: Record, e: ItemSkipped) -> None:
        state = self.items.get(e.item)
        if state is None:
            return
        self._move(state, "skipped", record.ts)

    @handles(CacheHit)
    def _cache_hit(self, record: Record, e: CacheHit) -> None:
        state = self.items.get(e.item)
        if state is not None:
            state.cache_hit = True

    def item_counts(self) -> ItemCounts:
        c = self.counts
        return ItemCounts(
            total=sum(c.values()),  # each item is in one status: no need of the table
            pending=c["pending"],
            running=c["running"],
            succeeded=c["succeeded"],
            failed=c["failed"],
            dead=c["dead"],
            skipped=c["skipped"],
            duplicate=self.duplicates,
        )

    def to_json(self) -> ItemsView:
        ordered = sorted(self.items.values(), key=lambda s: (s.index, s.item))
        return ItemsView(counts=self.item_counts(), items=ordered)


class AttemptsView(msgspec.Struct, kw_only=True):
    """Attempt counts, derived from the items and workers projections."""

    dispatched: int
    """Attempts dispatched in all."""
    retries: int
    """Attempts beyond each item's first."""
    running: int
    """Attempts dispatched whose outcome is not (yet) in the ledger."""
    max_attempts: int
    by_item: dict[str, int]
    """Attempts per item that was dispatched at least once."""
