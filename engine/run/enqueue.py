"""The map's items, enqueued once: loaded, redacted, recorded in batches beside dispatch.

The items are loaded whole (the duplicate check and the order need every
id), then recorded in batches of :data:`ENQUEUE_BATCH`: the first before the
scheduler starts, the rest by :class:`ItemFeed` while it dispatches (the
first attempt of a million-item run starts at once, not after a million
appends). The batches keep the input's order; the duplicates follow the
last item, and ``map.enqueued`` closes the list (the scheduler ends the map
only after it). A map stopped meanwhile (a signal, a failure limit, the
budget) stops the feed after its current batch.

A resume finishes an enqueue a crash or a stop cut short: the items
recorded already keep their values (read back through the values
projection), the rest are recorded now, and ``map.enqueued`` closes the list.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import ItemsError
from engine.items.selection import LoadCancelled, LoadStop, WorkItem, load_items
from engine.run.context import RunContext
from engine.run.loading import stoppable
from ledger.events import Event, ItemDuplicate, ItemEnqueued, MapEnqueued

__all__ = ["ENQUEUE_BATCH", "Enqueued", "ItemFeed", "enqueue", "enqueued_values"]

ENQUEUE_BATCH = 1000
"""Items recorded at a time (one append each)."""


def enqueued_values(run: RunContext) -> dict[str, Any]:
    """Every enqueued item's value, as recorded (a large one read back from the store)."""
    stored = run.stored
    return {
        item: e.value if e.value_ref is None else stored(e.value, e.value_ref)
        for item, e in run.values.enqueued.items()
    }


def _enqueue_event(run: RunContext, item: str, index: int, value: Any) -> ItemEnqueued:
    """``item.enqueued``, its value in the content store when too large for the record."""
    try:
        inline, ref = run.store.inline_or_ref(value)
    except (UnicodeEncodeError, TypeError, ValueError) as exc:
        raise ItemsError(
            f"item {item!r} (index {index}): its value cannot be recorded as JSON ({exc})",
            hint="fix the item source: text must be valid Unicode (no lone surrogates)",
        ) from None
    return ItemEnqueued(item=item, index=index, value=inline, value_ref=ref)


def _items_directory(run: RunContext) -> Path:
    """Where the map's input is read and its command runs: where the steps work. With
    isolation, an input file found only in the workspace (not committed, not written by
    setup) is read from there."""
    spec = run.spec.map
    assert spec is not None
    here = run.workdir
    name = spec.input
    if name is not None and not (here / name).exists() and (run.loaded.directory / name).exists():
        return run.loaded.directory
    return here


@dataclass
class ItemFeed:
    """The items not recorded yet, recorded batch by batch while the scheduler dispatches.

    ``items`` are recorded from ``start`` on; ``tail`` (the duplicates and
    ``map.enqueued``) goes with the last batch.
    """

    run: RunContext
    items: Sequence[WorkItem]
    tail: list[Event]
    start: int = 0

    @property
    def done(self) -> bool:
        return self.start >= len(self.items) and not self.tail

    def _next(self) -> list[Event]:
        end = min(self.start + ENQUEUE_BATCH, len(self.items))
        run = self.run
        batch: list[Event] = [
            _enqueue_event(run, w.id, w.index, w.value) for w in self.items[self.start : end]
        ]
        self.start = end
        if end >= len(self.items):
            batch += self.tail
            self.tail = []
        return batch

    async def step(self) -> None:
        """Record the next batch (the tail with the last one)."""
        batch = self._next()
        if batch:
            await self.run.append(batch)

    async def __call__(self, woken: Callable[[], None], stopped: Callable[[], bool]) -> None:
        """Record every batch left, telling ``woken`` after each; stop between batches once
        ``stopped`` says so (a resume records the rest)."""
        while not self.done and not stopped():
            await self.step()
            woken()


@dataclass(frozen=True)
class Enqueued:
    values: dict[str, Any]
    """Every item's value (recorded or about to be)."""
    feed: ItemFeed | None = None
    """What is left to record, beside dispatch (None: the list is complete)."""


async def enqueue(run: RunContext) -> Enqueued | None:
    """Every item's value, and the feed recording the items the ledger does not have yet.

    The first batch is recorded before this returns. None when a signal or
    a cancel stopped the loading (nothing enqueued).
    """
    spec = run.spec.map
    assert spec is not None
    known = enqueued_values(run)
    if run.p.run.map_enqueued:
        return Enqueued(known)
    stop = run.loading = LoadStop()
    directory, env, context = _items_directory(run), run.process_env(), dict(run.context)
    try:
        loaded = await stoppable(lambda: load_items(spec, directory, env, context, stop=stop), stop)
    except LoadCancelled:
        return None
    finally:
        run.loading = None
    source = loaded.source
    # Ids and values as the ledger will hold them: what the items are from now on.
    loaded = run.redactor.items(loaded)
    values = {w.id: w.value for w in loaded.items}
    fresh = [w for w in loaded.items if w.id not in known] if known else loaded.items
    tail: list[Event] = []
    if not run.p.items.duplicates:
        tail += [
            ItemDuplicate(item=w.id, index=w.index, first_index=first)
            for w, first in loaded.duplicates
        ]
    tail.append(
        MapEnqueued(total=len(loaded.items), duplicates=len(loaded.duplicates), source=source)
    )
    feed = ItemFeed(run, fresh, tail)
    await feed.step()
    values.update(known)
    return Enqueued(values, None if feed.done else feed)
