"""Where the map's items come from, read within bounds and stoppable.

``input`` (a regular file, opened non-blocking: never a FIFO or a device),
``command`` (its stdout; the command runs in a session of its own) or the
inline ``items``; a JSON document, or JSON Lines / one item a line. With
``input_missing: command``, an ``input`` that names no file (nothing at that
path, once setup is done) is run as ``command`` would be: Prodigy's rule. Bounds
(:mod:`engine.limits`): ``ENGINE_MAX_INPUT_BYTES`` for a file or an output,
``ENGINE_MAX_ITEMS`` items; strict UTF-8 and strict JSON; every value JSON
data (:func:`check_value`). A :class:`LoadStop` cancelled from another
thread ends the reading within a fraction of a second.
"""

from __future__ import annotations

import contextlib
import math
import os
import selectors
import signal
import subprocess
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec

from engine.errors import InputRefused, ItemsError
from engine.limits import MAX_DEPTH, limits, read_bounded
from engine.workflow.spec import MapSpec
from engine.workflow.template import TemplateError, render_shell, render_text

__all__ = [
    "NEVER",
    "ItemsError",
    "LoadCancelled",
    "LoadStop",
    "Source",
    "check_value",
    "read_source",
    "too_many",
]


Source = Literal["input", "command", "items", "input_command"]
"""Where the items came from; ``input_command``: ``input`` run as a command."""


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


NEVER = LoadStop()
"""A stop that is never cancelled."""
_INT_RANGE = 2**63


def check_value(value: Any) -> str | None:
    """Why an item's value is not JSON data the engine can pass on, or None if it is."""
    kind = type(value)
    if (kind is str and value.isascii() and "\x00" not in value) or (
        kind is int and -_INT_RANGE <= value < _INT_RANGE
    ):
        return None  # the common case, at once: plain text or a whole number
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
            raise too_many(where, cap)
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


def too_many(where: str, cap: int) -> ItemsError:
    return ItemsError(
        f"{where}: more than {cap:,} items",
        hint="split the work into several runs, or raise ENGINE_MAX_ITEMS",
    )


def _run_command(
    argv: list[str], directory: Path, env: Mapping[str, str], stop: LoadStop, where: str
) -> tuple[int, bytes, bytes]:
    """Run the map's command: its exit code, stdout (bounded) and the end of its stderr.

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
                                f"{where}: printed more than the {cap:,}-byte limit",
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


def _from_command(
    text: str,
    where: str,
    directory: Path,
    env: Mapping[str, str],
    context: Mapping[str, Any],
    stop: LoadStop,
) -> Any:
    """The document a command prints (``map.command``, or ``map.input`` run as one)."""
    try:
        command, variables = render_shell(text, context)
    except TemplateError as exc:
        raise ItemsError(f"{where}: {exc}") from None
    argv = ["/bin/sh", "-c", command]
    code, out, err = _run_command(argv, directory, {**env, **variables}, stop, where)
    if code != 0:
        tail = err.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        raise ItemsError(
            f"{where} exited {code}: {tail[0][:200]}",
            hint="run the command by hand to see why",
        )
    shown = f"{where} output"
    return _parse_document(_text(out, shown), shown, stop)


def _from_file(path: Path, stop: LoadStop) -> Any:
    try:
        data = read_bounded(
            path,
            limit=limits().input_bytes,
            what="map input",
            env_name="ENGINE_MAX_INPUT_BYTES",
            stream_hint="to read a stream, use `command: cat PATH` instead of input",
        )
    except InputRefused as exc:
        raise ItemsError(
            f"map.input: {exc.message}",
            hint=exc.hint or "check the path (relative to the workflow file)",
        ) from None
    return _parse_document(_text(data, str(path)), str(path), stop)


def _as_path(text: str, context: Mapping[str, Any]) -> str:
    """An input that may be a command, as the file it may name: its values put in as text
    (never run: only looked for), or as written when that cannot be done."""
    try:
        return render_text(text, context)
    except TemplateError:
        return text


INPUT_AS_COMMAND = "map.input (run as a command: no such file, input_missing: command)"
"""How errors name ``map.input`` run as a command."""


def read_source(
    spec: MapSpec,
    directory: Path,
    env: Mapping[str, str],
    context: Mapping[str, Any],
    stop: LoadStop,
) -> tuple[Any, Source]:
    """The document the map's items are selected from, and where it came from."""
    if spec.items is not None:
        return spec.items, "items"
    if spec.input is not None:
        path = directory / spec.input
        if spec.input_missing == "command":
            path = directory / _as_path(spec.input, context)
        if spec.input_missing == "command" and not os.path.lexists(path):
            document = _from_command(spec.input, INPUT_AS_COMMAND, directory, env, context, stop)
            return document, "input_command"
        return _from_file(path, stop), "input"
    assert spec.command is not None
    return _from_command(spec.command, "map.command", directory, env, context, stop), "command"
