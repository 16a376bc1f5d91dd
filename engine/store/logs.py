"""An attempt's log files under the run directory: their names, finished or partial.

Each attempt of item ``I`` writes each stream (``stdout``, ``stderr``) as it
comes to ``logs/.<base>.<stream>.tmp`` and, once the attempt has ended and
the file is durable, renames it to ``logs/<base>.<stream>``, where
``<base>`` is the first 16 hex digits of SHA-256 of ``I``, ``-``, and the
attempt number. The attempt's ``item.succeeded`` or ``item.failed`` record
names the final file (a :class:`~ledger.events.LogRef`: path, sha256, size).
An attempt that printed nothing on a stream has no file for it.

The executors write, the views read, and both find the files here.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

__all__ = [
    "LOGS_DIR",
    "STREAMS",
    "Stream",
    "attempt_base",
    "log_name",
    "log_paths",
    "partial_name",
]

LOGS_DIR = "logs"
"""The directory of attempt logs, under the run directory."""

Stream = Literal["stdout", "stderr"]
STREAMS: tuple[Stream, Stream] = ("stdout", "stderr")


def attempt_base(item: str, attempt: int) -> str:
    """The part of an attempt's file names (logs, heartbeat, values) that is the attempt's."""
    return f"{hashlib.sha256(item.encode()).hexdigest()[:16]}-{attempt}"


def log_name(item: str, attempt: int, stream: Stream) -> str:
    """The final name of one stream's log of an attempt (under :data:`LOGS_DIR`)."""
    return f"{attempt_base(item, attempt)}.{stream}"


def partial_name(name: str) -> str:
    """The name a log is written under until it is final."""
    return f".{name}.tmp"


def log_paths(run_dir: Path, item: str, attempt: int, stream: Stream) -> tuple[Path, Path]:
    """(final, partial) paths of one stream's log of an attempt."""
    name = log_name(item, attempt, stream)
    logs = run_dir / LOGS_DIR
    return logs / name, logs / partial_name(name)
