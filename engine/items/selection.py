"""Loading the map's work items: source, JSONPath, filter, sort, offset, limit, identity.

* Source: ``input`` (a JSON file, or JSON Lines), ``command`` (its stdout:
  a JSON document, or one item a line, each JSON or plain text), or inline
  ``items``.
* ``json_path``: RFC 9535 JSONPath (python-jsonpath) selecting the items.
* ``filter``: an expression over ``item`` evaluated by python-jsonpath's
  filter language (no ``eval``): ``==`` ``!=`` ``<`` ``<=`` ``>`` ``>=``,
  ``and``/``&&``, ``or``/``||``, ``not``/``!``, ``in [...]``, nested fields,
  ``is_null(x)``, ``contains(x, y)`` (or ``x contains y``),
  ``starts_with(x, y)``, ``ends_with(x, y)``, ``length(x)``, ``match(x, re)``
  (whole string), ``search(x, re)``, and ``x =~ /re/`` (whole string).
* ``sort_by``: ``item.a DESC, item.b ASC NULLS FIRST``; stable.
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
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from engine.errors import ItemsError
from engine.items.sources import NEVER, LoadCancelled, LoadStop, check_value, read_source, too_many
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


# --- filter ---------------------------------------------------------------------------


def _jsonpath_error() -> type[Exception]:
    from jsonpath import JSONPathError  # noqa: PLC0415 - costly, rarely needed

    return JSONPathError


@functools.cache
def _jsonpath() -> JSONPathEnvironment:
    """python-jsonpath with the engine's filter functions (imported on first use)."""
    from engine.items import jsonpath as jsonpath_env  # noqa: PLC0415 - costly, rarely needed

    return jsonpath_env.environment()


_TOKEN = re.compile(
    r"""(?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")|(?P<regex>/(?:[^/\\]|\\.)*/)"""
    r"""|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<other>.)""",
    re.S,
)


def _translate(expression: str) -> str:
    """``item.size > 1 and contains(item.tags, 'x')`` -> the JSONPath filter text."""
    out: list[str] = []
    for m in _TOKEN.finditer(expression):
        text = m.group(0)  # strings and /regex/ literals pass through untouched
        if m.lastgroup == "name":
            if text == "item":
                text = "@"
            elif text == "contains" and expression[m.end() :].lstrip().startswith("("):
                text = "includes"  # the function form; `x contains y` is native
        out.append(text)
    return "".join(out)


def compile_filter(expression: str) -> Any:
    """Compile a filter once; raise ItemsError naming the problem."""
    text = _translate(expression)
    try:
        return _jsonpath().compile(f"$[?{text}]")
    except (_jsonpath_error(), RecursionError) as exc:
        first = (str(exc).splitlines() or ["nested too deeply"])[0]
        if isinstance(exc, RecursionError):
            first = "nested too deeply"
        raise ItemsError(
            f"map.filter: cannot parse {expression[:80]!r}: {first}",
            hint="e.g. item.size > 100 and item.lang == 'py'",
        ) from None


def compile_json_path(text: str) -> Any:
    """Compile ``map.json_path`` once; raise ItemsError naming the problem."""
    try:
        return _jsonpath().compile(text)
    except (_jsonpath_error(), RecursionError) as exc:
        first = (str(exc).splitlines() or [""])[0]
        if isinstance(exc, RecursionError):
            first = "nested too deeply"
        raise ItemsError(f"map.json_path: {first}", hint="e.g. $.files[*]") from None


# --- sort ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SortKey:
    path: list[str]
    descending: bool
    nulls_first: bool


_SORT = re.compile(
    r"^\s*item((?:\.[A-Za-z0-9_\-]+)*)\s*(ASC|DESC)?\s*(NULLS\s+(?:FIRST|LAST))?\s*$", re.I
)


def parse_sort(text: str) -> list[SortKey]:
    keys = []
    for part in text.split(","):
        m = _SORT.match(part)
        if not m:
            raise ItemsError(
                f"map.sort_by: cannot parse {part.strip()!r}",
                hint="e.g. 'item.priority DESC, item.name ASC NULLS LAST'",
            )
        path = [p for p in m.group(1).split(".") if p]
        descending = (m.group(2) or "ASC").upper() == "DESC"
        nulls = (m.group(3) or "").upper().split()
        # Default like PostgreSQL: NULLS LAST for ASC, NULLS FIRST for DESC.
        nulls_first = nulls[-1] == "FIRST" if nulls else descending
        keys.append(SortKey(path, descending, nulls_first))
    return keys


def _field(value: Any, path: list[str]) -> Any:
    for part in path:
        if isinstance(value, Mapping):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def _rank(value: Any) -> tuple[int, Any]:
    """Mixed types sort by type first: numbers, strings, then the rest as JSON."""
    if isinstance(value, bool):
        return (0, int(value))
    if isinstance(value, int | float):
        return (0, value)
    if isinstance(value, str):
        return (1, value)
    return (2, canonical_json(value))


def _sort(values: list[Any], keys: list[SortKey]) -> list[Any]:
    ordered = list(values)
    for key in reversed(keys):  # stable sorts, least significant key first
        present = [v for v in ordered if _field(v, key.path) is not None]
        missing = [v for v in ordered if _field(v, key.path) is None]
        path = key.path

        def rank(value: Any, path: list[str] = path) -> tuple[int, Any]:
            return _rank(_field(value, path))

        present.sort(key=rank, reverse=key.descending)
        ordered = missing + present if key.nulls_first else present + missing
    return ordered


def select(spec: MapSpec, document: Any, stop: LoadStop = NEVER) -> list[Any]:
    """JSONPath, filter, sort, offset and max_items applied to a document."""
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
        compiled = compile_filter(spec.filter)
        kept = []
        for number, v in enumerate(values):
            if number % 256 == 0:
                stop.check()
            try:
                if compiled.findall([v]):
                    kept.append(v)
            except (_jsonpath_error(), RecursionError) as exc:
                raise ItemsError(
                    f"map.filter: item {number}: {(str(exc).splitlines() or ['failed'])[0]}",
                    hint="check the filter against the items",
                ) from None
        values = kept
    stop.check()
    if spec.sort_by:
        values = _sort(values, parse_sort(spec.sort_by))
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
    document = read_source(spec, directory, env, context or {"env": env}, stop)
    values = select(spec, document, stop)
    works: list[WorkItem] = []
    for index, value in enumerate(values):
        if index % 1024 == 0:
            stop.check()
        why = check_value(value)
        if why is not None:
            raise ItemsError(f"map: item {index}: {why}", hint="fix the item source")
        works.append(WorkItem(item_id(spec, value, index, env), index, value))
    return dedupe(works)


def dedupe(works: Iterable[WorkItem]) -> LoadedItems:
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
    return LoadedItems(items, duplicates)
