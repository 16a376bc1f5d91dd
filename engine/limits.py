"""Bounds on everything the engine reads, so that no input can hang it.

Each limit has a default and an environment variable that overrides it
(a whole number; ``0`` or an unparsable value keeps the default). See
``docs/operations.md`` ("Input limits").
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from engine.errors import InputRefused

__all__ = [
    "MAX_DEPTH",
    "MAX_DURATION",
    "MAX_ENV_ENTRY",
    "MAX_ID_BYTES",
    "MAX_YAML_NODES",
    "InputRefused",
    "Limits",
    "limits",
    "read_bounded",
]

MAX_DEPTH = 100
"""How deeply a workflow or an item may nest (lists and mappings)."""
MAX_YAML_NODES = 1_000_000
"""How many values a workflow may hold once its aliases are expanded."""
MAX_ID_BYTES = 4096
"""The longest item id (UTF-8 bytes): an id is in every record of its item, whole."""
MAX_ENV_ENTRY = 128 * 1024
"""Bytes of one ``NAME=value`` environment entry, its NUL included (Linux's MAX_ARG_STRLEN)."""
MAX_DURATION = 366 * 86400.0
"""The longest duration (a timeout, a retry delay, a cooldown): a year."""


@dataclass(frozen=True)
class Limits:
    workflow_bytes: int
    """``ENGINE_MAX_WORKFLOW_BYTES``: the largest workflow file."""
    input_bytes: int
    """``ENGINE_MAX_INPUT_BYTES``: the largest ``map.input`` file or ``map.command`` output."""
    items: int
    """``ENGINE_MAX_ITEMS``: the most items a map may load (before filter and max_items)."""


_DEFAULTS = {
    "ENGINE_MAX_WORKFLOW_BYTES": 1 << 20,
    "ENGINE_MAX_INPUT_BYTES": 64 << 20,
    "ENGINE_MAX_ITEMS": 1_000_000,
}


def _env_int(name: str) -> int:
    text = os.environ.get(name, "").strip().replace("_", "")
    try:
        value = int(text) if len(text) <= 18 else 0
    except ValueError:
        value = 0
    return value if value > 0 else _DEFAULTS[name]


def limits() -> Limits:
    """The limits in force (read from the environment on each call)."""
    return Limits(
        workflow_bytes=_env_int("ENGINE_MAX_WORKFLOW_BYTES"),
        input_bytes=_env_int("ENGINE_MAX_INPUT_BYTES"),
        items=_env_int("ENGINE_MAX_ITEMS"),
    )


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def read_bounded(
    path: str | os.PathLike[str],
    *,
    limit: int,
    what: str,
    env_name: str,
    stream_hint: str = "save it to a regular file first",
) -> bytes:
    """A regular file's bytes, at most ``limit`` of them; never blocks on a FIFO or device.

    The file is opened non-blocking (opening a FIFO without a writer would
    wait forever) and checked to be a regular file through the open
    descriptor, so nothing can swap it in between.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise InputRefused(
            f"{path}: cannot read the {what} ({exc.strerror})", hint="check the path"
        ) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InputRefused(
                f"{path}: the {what} is {_kind(info.st_mode)}, not a regular file",
                hint="write it to a file first (a map can read a stream with `command: cat PATH`)",
            )
        if info.st_size > limit:
            raise _too_large(path, what, limit, env_name)
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise _too_large(path, what, limit, env_name)
        return b"".join(chunks)
    except OSError as exc:
        raise InputRefused(
            f"{path}: cannot read the {what} ({exc.strerror})", hint="check the path"
        ) from None
    finally:
        os.close(fd)


def _too_large(path: str | os.PathLike[str], what: str, limit: int, env_name: str) -> InputRefused:
    return InputRefused(
        f"{path}: the {what} is over the {limit:,}-byte limit",
        hint=f"make it smaller, or raise the limit with {env_name}=BYTES",
    )
