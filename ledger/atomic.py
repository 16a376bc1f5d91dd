"""Atomic, durable file writes.

File systems reorder and lose what a careful program does not pin down
(ALICE, OSDI 2014): a rename is not ordered after the writes before it, and a
new or renamed file is durable only once its directory is fsynced. Every file
the project writes outside the ledger's own append path goes through
:func:`atomic_write`: a temporary file in the same directory, fsync, rename
over the target, fsync the directory.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

__all__ = ["DIR_MODE", "FILE_MODE", "atomic_write", "fsync_dir", "make_private_dir"]

FILE_MODE = 0o600
"""Mode of every file the engine creates: private to the user who ran it."""
DIR_MODE = 0o700
"""Mode of every directory the engine creates."""


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make the entries of directory ``path`` (creations, renames) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_private_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` and its missing parents as 0700 directories, durably."""
    path = Path(path)
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(d, DIR_MODE)
        fsync_dir(d.parent)
    return path


def atomic_write(
    path: str | os.PathLike[str],
    data: bytes,
    *,
    mode: int = FILE_MODE,
    before_rename: Callable[[int], None] | None = None,
) -> None:
    """Replace ``path`` with ``data`` atomically and durably.

    Readers see the old content or the new, never a mix; after return the
    new content survives a crash. ``before_rename`` is called with the
    temporary file's descriptor once its content is durable and before it
    takes the target's name (the run lock uses it to lock the new file
    before it becomes visible); it then owns the descriptor.
    """
    path = Path(path)
    directory = path.parent
    tmp = directory / f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    handed_over = False
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
        if before_rename is not None:
            before_rename(fd)
            handed_over = True
        os.replace(tmp, path)
    except BaseException:
        if not handed_over:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if not handed_over:
        os.close(fd)
    fsync_dir(directory)
