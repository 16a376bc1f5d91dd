"""Loading the map's work items: source, JSONPath, filter, sort, distinct, offset, limit, identity.

In Prodigy's order: ``json_path`` -> ``filter`` -> ``sort_by`` ->
``distinct`` -> ``offset`` -> ``max_items``.

* Source (:mod:`engine.items.sources`): ``input`` (a JSON file, or JSON
  Lines; with ``input_missing: command``, run as a command when no such file
  exists), ``command`` (its stdout: a JSON document, or one item a line, each
  JSON or plain text), or inline ``items``.
* ``json_path``: RFC 9535 JSONPath (python-jsonpath) selecting the items.
* ``filter``: an expression over the item (:mod:`engine.items.filtering`;
  no ``eval``), in the engine's spelling or Prodigy's.
* ``sort_by``, ``distinct``: :mod:`engine.items.ordering`.
* Identity: the ``id`` template, or ``sha256`` of the item's canonical JSON.

Every source is bounded (:mod:`engine.limits`): ``input`` must be a regular
file (never a FIFO or a device) of at most ``ENGINE_MAX_INPUT_BYTES``, as
must ``command``'s output; at most ``ENGINE_MAX_ITEMS`` items; every value
is JSON data (nested at most 100 deep, numbers finite and within 64 bits,
strings without NUL or lone surrogates). Loading can be stopped from another
thread (:class:`LoadStop`): a signal ends it within a fraction of a second.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from engine.errors import ItemsError
from engine.items.filtering import compile_filter
from engine.items.ordering import SortKey, distinct, parse_distinct, parse_sort, sort
from engine.items.sources import (
    NEVER,
    LoadCancelled,
    LoadStop,
    Source,
    check_value,
    read_source,
    too_many,
)
from engine.limits import MAX_ID_BYTES, limits
from engine.workflow.spec import MapSpec
from engine.workflow.template import TemplateError, render_text

if TYPE_CHECKING:
    from jsonpath import JSONPathEnvironment

__all__ = [
    "ItemsError",
    "LoadCancelled",
    "LoadStop",
    "LoadedItems",
    "SortKey",
    "WorkItem",
    "canonical_json",
    "check_value",
    "compile_filter",
    "compile_json_path",
    "load_items",
    "parse_distinct",
    "parse_sort",
]


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no whitespace: the bytes that identify a value."""
    return msgspec.json.encode(value, order="sorted")


@dataclass(frozen=True, slots=True)
class WorkItem:
    id: str
    index: int
    value: Any


@dataclass(frozen=True)
class LoadedItems:
    items: list[WorkItem]
    """Unique items in order."""
    duplicates: list[tuple[WorkItem, int]]
    """Items whose id was taken, with the index of the first holder."""
    source: Source = "items"
    """Where they came from: ``input`` (a file), ``command``, ``items``, or
    ``input_command`` (``input`` run as a command: no such file, ``input_missing: command``)."""


# --- JSONPath -------------------------------------------------------------------------


def _jsonpath_error() -> type[Exception]:
    from jsonpath import JSONPathError  # noqa: PLC0415 - costly, rarely needed

    return JSONPathError


@functools.cache
def _jsonpath() -> JSONPathEnvironment:
    """python-jsonpath with the engine's filter functions (imported on first use)."""
    from engine.items import jsonpath as jsonpath_env  # noqa: PLC0415 - costly, rarely needed

    return jsonpath_env.environment()


def compile_json_path(text: str) -> Any:
    """Compile ``map.json_path`` once; raise ItemsError naming the problem."""
    try:
        return _jsonpath().compile(text)
    except (_jsonpath_error(), RecursionError) as exc:
        first = (str(exc).splitlines() or [""])[0]
        if isinstance(exc, RecursionError):
            first = "nested too deeply"
        raise ItemsError(f"map.json_path: {first}", hint="e.g. $.files[*]") from None


def _filter(expression: str, values: list[Any], stop: LoadStop) -> list[Any]:
    compiled = compile_filter(expression)
    kept = []
    for number, v in enumerate(values):
        if number % 256 == 0:
            stop.check()
        if compiled(v):
            kept.append(v)
    return kept


def select(spec: MapSpec, document: Any, stop: LoadStop = NEVER) -> list[Any]:
    """JSONPath, filter, sort, distinct, offset and max_items applied to a document."""
    cap = limits().items
    if spec.json_path:
        try:
            values: list[Any] = list(compile_json_path(spec.json_path).findall(document))
        except (_jsonpath_error(), RecursionError) as exc:
            raise ItemsError(
                f"map.json_path: {(str(exc).splitlines() or ['failed'])[0]}",
                hint="e.g. $.files[*]",
            ) from None
    elif isinstance(document, list):
        values = list(document)
    else:
        raise ItemsError(
            "map: the items are not a list",
            hint="add json_path to select the list, e.g. $.files[*]",
        )
    if len(values) > cap:
        raise too_many("map", cap)
    stop.check()
    if spec.filter:
        values = _filter(spec.filter, values, stop)
    stop.check()
    if spec.sort_by:
        values = sort(values, parse_sort(spec.sort_by))
    if spec.distinct:
        values = distinct(values, parse_distinct(spec.distinct))
    values = values[spec.offset :]
    if spec.max_items is not None:
        values = values[: spec.max_items]
    return values


def default_id(value: Any) -> str:
    """An item's id when the workflow gives no ``id`` template: the hash of its value."""
    return "sha256:" + hashlib.sha256(canonical_json(value)).hexdigest()


def item_id(spec: MapSpec, value: Any, index: int, env: Mapping[str, str]) -> str:
    if spec.id is None:
        return default_id(value)
    try:
        rendered = render_text(spec.id, {"item": value, "item_index": index, "env": env})
    except TemplateError as exc:
        raise ItemsError(
            f"map.id: item {index}: {exc}", hint="every item needs those fields"
        ) from None
    if not rendered:
        raise ItemsError(f"map.id: item {index} has an empty id", hint="check the id template")
    why = check_value(rendered)
    if why is not None:
        raise ItemsError(f"map.id: item {index}: the id {why.removeprefix('a string ')}")
    if len(rendered.encode("utf-8")) > MAX_ID_BYTES:
        raise ItemsError(
            f"map.id: item {index}: the id is {len(rendered.encode('utf-8')):,} bytes, "
            f"over the {MAX_ID_BYTES:,}-byte limit",
            hint="make map.id a short field of the item (a path, a key), not the whole value",
        )
    return rendered


def load_items(
    spec: MapSpec,
    directory: Path,
    env: Mapping[str, str],
    context: Mapping[str, Any] | None = None,
    *,
    stop: LoadStop = NEVER,
) -> LoadedItems:
    """Load, select and identify the map's items (``context``: variables for ``command``).

    ``stop``: cancelled from another thread, loading raises :class:`LoadCancelled`.
    """
    document, source = read_source(spec, directory, env, context or {"env": env}, stop)
    values = select(spec, document, stop)
    works: list[WorkItem] = []
    for index, value in enumerate(values):
        if index % 1024 == 0:
            stop.check()
        why = check_value(value)
        if why is not None:
            raise ItemsError(f"map: item {index}: {why}", hint="fix the item source")
        works.append(WorkItem(item_id(spec, value, index, env), index, value))
    return dedupe(works, source)


def dedupe(works: Iterable[WorkItem], source: Source = "items") -> LoadedItems:
    """Items in order, each id kept by its first holder; the later ones are duplicates."""
    items: list[WorkItem] = []
    duplicates: list[tuple[WorkItem, int]] = []
    first: dict[str, int] = {}
    for work in works:
        if work.id in first:
            duplicates.append((work, first[work.id]))
        else:
            first[work.id] = work.index
            items.append(work)
    return LoadedItems(items, duplicates, source)
