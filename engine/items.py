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

import contextlib
import functools
import hashlib
import math
import os
import re
import selectors
import signal
import subprocess
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from engine.limits import MAX_DEPTH, InputRefused, limits, read_bounded
from engine.spec import MapSpec
from engine.template import TemplateError, render_shell, render_text
from ledger.errors import EngineError

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


class ItemsError(EngineError):
    """The map's items cannot be loaded, selected or identified."""

    exit_code = 2


class LoadCancelled(Exception):
    """Loading was stopped (a signal, a cancel); nothing was enqueued."""


@dataclass
class LoadStop:
    """Stops a load running in another thread: its checks raise, its command is killed."""

    event: threading.Event = field(default_factory=threading.Event)
    process: subprocess.Popen[bytes] | None = None

    def cancel(self) -> None:
        self.event.set()
        process = self.process
        if process is not None and process.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(process.pid, signal.SIGKILL)

    def check(self) -> None:
        if self.event.is_set():
            raise LoadCancelled


_NEVER = LoadStop()
_INT_RANGE = 2**63


def check_value(value: Any) -> str | None:
    """Why an item's value is not JSON data the engine can pass on, or None if it is."""
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        v, where, depth = stack.pop()
        at = f" at {where}" if where else ""
        if depth > MAX_DEPTH:
            return f"nested more than {MAX_DEPTH} levels deep{at} (flatten it)"
        if v is None or isinstance(v, bool):
            continue
        if isinstance(v, int):
            if not -_INT_RANGE <= v < _INT_RANGE:
                return f"a whole number{at} is beyond 64 bits (quote it as a string)"
        elif isinstance(v, float):
            if not math.isfinite(v):
                return f"a number{at} is not finite (NaN or infinity; quote it as a string)"
        elif isinstance(v, str):
            if "\x00" in v:
                return f"a string{at} holds a NUL character (\\0), which no command can receive"
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return f"a string{at} holds a lone surrogate, which is not text"
        elif isinstance(v, list):
            stack.extend((x, f"{where}[{i}]", depth + 1) for i, x in enumerate(v))
        elif isinstance(v, dict):
            for k, x in v.items():
                if not isinstance(k, str):
                    return f"a key{at} is {type(k).__name__}, not a string (quote it)"
                stack.append((k, f"{where}.{k[:40]}", depth + 1))
                stack.append((x, f"{where}.{k[:40]}", depth + 1))
        else:
            return f"a value{at} is {type(v).__name__}, not JSON data (quote it as a string)"
    return None


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


# --- loading ---------------------------------------------------------------------------

_decode_json = msgspec.json.Decoder()


def _json(text: str, where: str) -> Any:
    """Strict JSON (no NaN, numbers in range), or ItemsError."""
    try:
        return _decode_json.decode(text)
    except RecursionError:
        raise ItemsError(
            f"{where}: nested too deeply", hint=f"at most {MAX_DEPTH} levels"
        ) from None
    except msgspec.DecodeError as exc:
        raise ItemsError(f"{where}: not valid JSON: {exc}", hint="fix the JSON") from None


def _parse_lines(text: str, where: str, stop: LoadStop) -> list[Any]:
    items: list[Any] = []
    cap = limits().items
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if number % 1024 == 0:
            stop.check()
        if len(items) >= cap:
            raise _too_many(where, cap)
        stripped = line.strip()
        if stripped[0] in '[{"-0123456789' or stripped in ("true", "false", "null"):
            try:
                items.append(_decode_json.decode(stripped))
                continue
            except (msgspec.DecodeError, RecursionError):
                pass
        items.append(line)
    return items


def _parse_document(text: str, where: str, stop: LoadStop) -> Any:
    stripped = text.strip()
    if not stripped:
        return []
    if stripped[0] in "[{":
        try:
            return _decode_json.decode(stripped)
        except (msgspec.DecodeError, RecursionError):
            if stripped[0] == "[":
                _json(stripped, where)  # raises, saying why
    return _parse_lines(text, where, stop)


def _text(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ItemsError(
            f"{where}: not UTF-8 text (line {line}, byte {exc.start})",
            hint="convert it to UTF-8 (e.g. iconv -t UTF-8)",
        ) from None


def _too_many(where: str, cap: int) -> ItemsError:
    return ItemsError(
        f"{where}: more than {cap:,} items",
        hint="split the work into several runs, or raise ENGINE_MAX_ITEMS",
    )


def _run_command(
    argv: list[str], directory: Path, env: Mapping[str, str], stop: LoadStop
) -> tuple[int, bytes, bytes]:
    """Run ``map.command``: its exit code, stdout (bounded) and the end of its stderr.

    It runs in a session of its own, so that a stop or an oversized output
    kills it and whatever it started.
    """
    cap = limits().input_bytes
    stop.check()
    process = subprocess.Popen(
        argv,
        cwd=directory,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    stop.process = process
    out: list[bytes] = []
    size = 0
    err = b""
    try:
        assert process.stdout is not None and process.stderr is not None
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ, "out")
            selector.register(process.stderr, selectors.EVENT_READ, "err")
            while selector.get_map():
                stop.check()
                for key, _ in selector.select(timeout=0.1):
                    chunk = os.read(key.fd, 1 << 16)
                    if not chunk:
                        selector.unregister(key.fileobj)
                    elif key.data == "out":
                        out.append(chunk)
                        size += len(chunk)
                        if size > cap:
                            raise ItemsError(
                                f"map.command: printed more than the {cap:,}-byte limit",
                                hint="print fewer or smaller items, or raise "
                                "ENGINE_MAX_INPUT_BYTES=BYTES",
                            )
                    else:
                        err = (err + chunk)[-65536:]
        while process.poll() is None:
            stop.check()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=0.1)
    finally:
        if process.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        stop.process = None
        process.stdout.close()  # type: ignore[union-attr]
        process.stderr.close()  # type: ignore[union-attr]
    stop.check()
    return process.returncode, b"".join(out), err


def _source(
    spec: MapSpec,
    directory: Path,
    env: Mapping[str, str],
    context: Mapping[str, Any],
    stop: LoadStop,
) -> Any:
    if spec.items is not None:
        return spec.items
    if spec.input is not None:
        path = directory / spec.input
        try:
            data = read_bounded(
                path,
                limit=limits().input_bytes,
                what="map input",
                env_name="ENGINE_MAX_INPUT_BYTES",
            )
        except InputRefused as exc:
            raise ItemsError(
                f"map.input: {exc.message}",
                hint=exc.hint or "check the path (relative to the workflow file)",
            ) from None
        return _parse_document(_text(data, str(path)), str(path), stop)
    assert spec.command is not None
    try:
        command, variables = render_shell(spec.command, context)
    except TemplateError as exc:
        raise ItemsError(f"map.command: {exc}") from None
    code, out, err = _run_command(["/bin/sh", "-c", command], directory, {**env, **variables}, stop)
    if code != 0:
        tail = err.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        raise ItemsError(
            f"map.command exited {code}: {tail[0][:200]}",
            hint="run the command by hand to see why",
        )
    where = "map.command output"
    return _parse_document(_text(out, where), where, stop)


def select(spec: MapSpec, document: Any, stop: LoadStop = _NEVER) -> list[Any]:
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
        raise _too_many("map", cap)
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
    why = check_value(rendered)
    if why is not None:
        raise ItemsError(f"map.id: item {index}: the id {why.removeprefix('a string ')}")
    return rendered


def load_items(
    spec: MapSpec,
    directory: Path,
    env: Mapping[str, str],
    context: Mapping[str, Any] | None = None,
    *,
    stop: LoadStop = _NEVER,
) -> LoadedItems:
    """Load, select and identify the map's items (``context``: variables for ``command``).

    ``stop``: cancelled from another thread, loading raises :class:`LoadCancelled`.
    """
    document = _source(spec, directory, env, context or {"env": env}, stop)
    values = select(spec, document, stop)
    items: list[WorkItem] = []
    duplicates: list[tuple[WorkItem, int]] = []
    first: dict[str, int] = {}
    for index, value in enumerate(values):
        if index % 1024 == 0:
            stop.check()
        why = check_value(value)
        if why is not None:
            raise ItemsError(f"map: item {index}: {why}", hint="fix the item source")
        work = WorkItem(item_id(spec, value, index, env), index, value)
        if work.id in first:
            duplicates.append((work, first[work.id]))
        else:
            first[work.id] = index
            items.append(work)
    return LoadedItems(items, duplicates)
