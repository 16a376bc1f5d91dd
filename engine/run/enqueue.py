"""The map's items, enqueued once: loaded, redacted, recorded in batches.

A resume finishes an enqueue a crash cut short: the items recorded already
keep their values (read back through the values projection), the rest are
recorded now, and ``map.enqueued`` closes the list.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.errors import ItemsError
from engine.items.selection import LoadCancelled, LoadStop, load_items
from engine.run.context import RunContext
from engine.run.loading import stoppable
from ledger.events import Event, ItemDuplicate, ItemEnqueued, MapEnqueued

__all__ = ["ENQUEUE_BATCH", "enqueue", "enqueued_values"]

ENQUEUE_BATCH = 1000
"""Events appended at a time while the items are recorded."""


def enqueued_values(run: RunContext) -> dict[str, Any]:
    """Every enqueued item's value, as recorded (a large one read back from the store)."""
    return {item: run.stored(e.value, e.value_ref) for item, e in run.values.enqueued.items()}


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


async def enqueue(run: RunContext) -> dict[str, Any] | None:
    """Every item's value, its items enqueued first if the ledger does not have them all.

    None when a signal or a cancel stopped the loading (nothing enqueued).
    """
    spec = run.spec.map
    assert spec is not None
    known = enqueued_values(run)
    if run.p.run.map_enqueued:
        return known
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
    batch: list[Event] = [
        _enqueue_event(run, w.id, w.index, w.value) for w in loaded.items if w.id not in known
    ]
    if not run.p.items.duplicates:
        batch += [
            ItemDuplicate(item=w.id, index=w.index, first_index=first)
            for w, first in loaded.duplicates
        ]
    batch.append(
        MapEnqueued(total=len(loaded.items), duplicates=len(loaded.duplicates), source=source)
    )
    for start in range(0, len(batch), ENQUEUE_BATCH):
        await run.append(batch[start : start + ENQUEUE_BATCH])
    return {**values, **known}
