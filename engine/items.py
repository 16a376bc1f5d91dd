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
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from engine.spec import MapSpec
from engine.template import TemplateError, render_shell, render_text
from ledger.errors import EngineError

if TYPE_CHECKING:
    from jsonpath import JSONPathEnvironment

__all__ = [
    "ItemsError",
    "LoadedItems",
    "SortKey",
    "WorkItem",
    "canonical_json",
    "compile_filter",
    "load_items",
    "parse_sort",
]


class ItemsError(EngineError):
    """The map's items cannot be loaded, selected or identified."""

    exit_code = 2


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
    from engine import jsonpath_env  # noqa: PLC0415 - costly, rarely needed

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
    except _jsonpath_error() as exc:
        first = str(exc).splitlines()[0]
        raise ItemsError(
            f"map.filter: cannot parse {expression!r}: {first}",
            hint="e.g. item.size > 100 and item.lang == 'py'",
        ) from None


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


# --- loading ---------------------------------------------------------------------------


def _parse_lines(text: str) -> list[Any]:
    items: list[Any] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            items.append(json.loads(line))
        except ValueError:
            items.append(line)
    return items


def _parse_document(text: str, where: str) -> Any:
    stripped = text.strip()
    if not stripped:
        return []
    if stripped[0] in "[{":
        try:
            return json.loads(stripped)
        except ValueError:
            if stripped[0] == "[":
                raise ItemsError(f"{where}: not valid JSON", hint="fix the JSON") from None
    return _parse_lines(text)


def _source(
    spec: MapSpec, directory: Path, env: Mapping[str, str], context: Mapping[str, Any]
) -> Any:
    if spec.items is not None:
        return spec.items
    if spec.input is not None:
        path = directory / spec.input
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ItemsError(
                f"map.input: cannot read {path} ({exc.strerror})",
                hint="check the path (relative to the workflow file) or create it in setup",
            ) from None
        return _parse_document(text, str(path))
    assert spec.command is not None
    try:
        command, variables = render_shell(spec.command, context)
    except TemplateError as exc:
        raise ItemsError(f"map.command: {exc}") from None
    proc = subprocess.run(
        ["/bin/sh", "-c", command],
        cwd=directory,
        env={**env, **variables},
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or [""]
        raise ItemsError(
            f"map.command exited {proc.returncode}: {tail[0]}",
            hint="run the command by hand to see why",
        )
    return _parse_document(proc.stdout, "map.command output")


def select(spec: MapSpec, document: Any) -> list[Any]:
    """JSONPath, filter, sort, offset and max_items applied to a document."""
    if spec.json_path:
        try:
            values = _jsonpath().findall(spec.json_path, document)
        except _jsonpath_error() as exc:
            raise ItemsError(
                f"map.json_path: {str(exc).splitlines()[0]}", hint="e.g. $.files[*]"
            ) from None
    elif isinstance(document, list):
        values = list(document)
    else:
        raise ItemsError(
            "map: the items are not a list",
            hint="add json_path to select the list, e.g. $.files[*]",
        )
    if spec.filter:
        compiled = compile_filter(spec.filter)
        values = [v for v in values if compiled.findall([v])]
    if spec.sort_by:
        values = _sort(values, parse_sort(spec.sort_by))
    values = values[spec.offset :]
    if spec.max_items is not None:
        values = values[: spec.max_items]
    return values


def item_id(spec: MapSpec, value: Any, index: int, env: Mapping[str, str]) -> str:
    if spec.id is None:
        return "sha256:" + hashlib.sha256(canonical_json(value)).hexdigest()
    try:
        rendered = render_text(spec.id, {"item": value, "item_index": index, "env": env})
    except TemplateError as exc:
        raise ItemsError(
            f"map.id: item {index}: {exc}", hint="every item needs those fields"
        ) from None
    if not rendered:
        raise ItemsError(f"map.id: item {index} has an empty id", hint="check the id template")
    return rendered


def load_items(
    spec: MapSpec,
    directory: Path,
    env: Mapping[str, str],
    context: Mapping[str, Any] | None = None,
) -> LoadedItems:
    """Load, select and identify the map's items (``context``: variables for ``command``)."""
    values = select(spec, _source(spec, directory, env, context or {"env": env}))
    items: list[WorkItem] = []
    duplicates: list[tuple[WorkItem, int]] = []
    first: dict[str, int] = {}
    for index, value in enumerate(values):
        work = WorkItem(item_id(spec, value, index, env), index, value)
        if work.id in first:
            duplicates.append((work, first[work.id]))
        else:
            first[work.id] = index
            items.append(work)
    return LoadedItems(items, duplicates)
