"""An attempt's log files under the run directory: their names, and keeping a partial one.

Each attempt of item ``I`` writes each stream (``stdout``, ``stderr``) as it
comes to ``logs/.<base>.<stream>.tmp`` and, once the attempt has ended and
the file is durable, renames it to ``logs/<base>.<stream>``, where
``<base>`` is the first 16 hex digits of SHA-256 of ``I``, ``-``, and the
attempt number (a setup or reduce step hashes its phase in as well, so no
item shares its files). The attempt's ``item.succeeded`` or ``item.failed`` record
names the final file (a :class:`~ledger.events.LogRef`: path, sha256, size).
An attempt that printed nothing on a stream has no file for it.

An engine killed during an attempt leaves its partial file behind; the next
engine keeps it (:func:`keep_partial_logs`) under the final name and names
it in the attempt's ``item.failed``. The executors write, the views read,
and both find the files here.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import Literal

from engine.store.content import file_sha256
from ledger.atomic import fsync_dir
from ledger.events import LogRef

__all__ = [
    "LOGS_DIR",
    "STREAMS",
    "Stream",
    "attempt_base",
    "keep_partial_logs",
    "log_name",
    "log_paths",
    "partial_name",
]

LOGS_DIR = "logs"
"""The directory of attempt logs, under the run directory."""

Stream = Literal["stdout", "stderr"]
STREAMS: tuple[Stream, Stream] = ("stdout", "stderr")


def attempt_base(item: str, attempt: int, phase: str = "map") -> str:
    """The part of an attempt's file names (logs, heartbeat, values) that is the attempt's.

    A setup or reduce step (``phase``) hashes its phase in too, with a NUL no
    item id can hold: a map item named like a step (``setup-0``) has files of
    its own.
    """
    material = item if phase == "map" else f"{phase}\x00{item}"
    return f"{hashlib.sha256(material.encode()).hexdigest()[:16]}-{attempt}"


def log_name(item: str, attempt: int, stream: Stream, phase: str = "map") -> str:
    """The final name of one stream's log of an attempt (under :data:`LOGS_DIR`)."""
    return f"{attempt_base(item, attempt, phase)}.{stream}"


def partial_name(name: str) -> str:
    """The name a log is written under until it is final."""
    return f".{name}.tmp"


def log_paths(run_dir: Path, item: str, attempt: int, stream: Stream) -> tuple[Path, Path]:
    """(final, partial) paths of one stream's log of an attempt."""
    name = log_name(item, attempt, stream)
    logs = run_dir / LOGS_DIR
    return logs / name, logs / partial_name(name)


def _keep(final: Path, partial: Path) -> bool:
    """Make a partial log final (durable first); whether a file was renamed."""
    try:
        fd = os.open(partial, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        empty = os.fstat(fd).st_size == 0
        if not empty:
            os.fsync(fd)
    finally:
        os.close(fd)
    if empty:  # opened at its first byte, killed before writing it: nothing was printed
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        return False
    os.replace(partial, final)
    return True


def keep_partial_logs(
    run_dir: Path, item: str, attempt: int
) -> tuple[LogRef | None, LogRef | None]:
    """The logs of an attempt whose engine died before its outcome, kept: (stdout, stderr).

    A partial file is made durable and renamed to its final name (the
    directory fsynced after); a final file the dead engine had made already
    is taken as it is. A stream with neither printed nothing: None.
    Raises OSError when a file cannot be kept.
    """
    refs: list[LogRef | None] = []
    renamed = False
    for stream in STREAMS:
        final, partial = log_paths(run_dir, item, attempt, stream)
        renamed = _keep(final, partial) or renamed
        try:
            digest, size = file_sha256(final)
        except FileNotFoundError:
            refs.append(None)
            continue
        refs.append(LogRef(path=f"{LOGS_DIR}/{final.name}", sha256=digest, size=size))
    if renamed:
        fsync_dir(run_dir / LOGS_DIR)
    return refs[0], refs[1]
