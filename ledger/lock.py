"""The run's writer lock: an OS ``flock`` on ``<run-dir>/lock``.

The lock file holds the holder's pid, host, command and start time (JSON), so
a refused second writer can say who holds the run. An OS lock dies with its
process, so a crashed holder never leaves a stale lock behind.

The holder's details are written through :func:`ledger.atomic.atomic_write`,
which replaces the file (a new inode). That is safe because of one
invariant: *the inode at the path is locked by whoever holds the run*.

1. To acquire, open the path, ``flock`` it without blocking, and check the
   locked descriptor still is the inode at the path (it may have been
   replaced in between); if not, try again.
2. Holding that inode, write the new details to a temporary file, lock the
   temporary file, and only then rename it over the path. The old inode is
   released after the rename.

A contender either finds the current inode locked, or locks a replaced one
and sees the mismatch in step 1.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from ledger.atomic import FILE_MODE, atomic_write
from ledger.errors import LedgerLocked

__all__ = ["LOCK_NAME", "RunLock", "read_holder"]

LOCK_NAME = "lock"


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def read_holder(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The details in the lock file, or None when absent or unreadable."""
    try:
        text = (Path(run_dir) / LOCK_NAME).read_text(encoding="utf-8")
        holder = json.loads(text)
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _held_per_proc_locks(path: Path) -> bool | None:
    """Whether an flock is held on ``path``'s inode per /proc/locks; None if unknown."""
    try:
        st = os.stat(path)
        with open("/proc/locks", encoding="ascii") as f:
            table = f.read()
    except OSError:
        return None
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in table.splitlines():
        parts = line.split()
        # "1: FLOCK  ADVISORY  WRITE 2273 fe:00:2164373 0 EOF" (blocked waiters have "->")
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5] == key:
            return True
    return False


class RunLock:
    """An exclusive, non-blocking lock on a run directory.

    Use :meth:`acquire` (raises :class:`LedgerLocked` when held elsewhere)
    and :meth:`release`, or :meth:`probe` to ask whether a live process holds
    it without taking it for long.
    """

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None
        self.holder: dict[str, Any] = {}

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _lock_current(self) -> int:
        """Lock the inode now at the path; raise LedgerLocked if held."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise LedgerLocked(str(self.run_dir), holder=read_holder(self.run_dir)) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)

    def acquire(self, *, command: str | None = None) -> dict[str, Any]:
        """Take the lock and record who holds it; returns the holder details."""
        if self._fd is not None:
            return self.holder
        old_fd = self._lock_current()
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": command if command is not None else " ".join(sys.argv),
            "started_at": _now(),
        }
        new_fd: list[int] = []

        def lock_new(fd: int) -> None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            new_fd.append(fd)

        try:
            atomic_write(
                self.path,
                (json.dumps(holder, sort_keys=True) + "\n").encode(),
                before_rename=lock_new,
            )
        except BaseException:
            for fd in new_fd:
                os.close(fd)
            os.close(old_fd)
            raise
        os.close(old_fd)
        self._fd = new_fd[0]
        self.holder = holder
        return holder

    def release(self) -> None:
        """Release the lock. The lock file stays; its details are stale then."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def probe(self) -> dict[str, Any] | None:
        """The live holder's details, or None when nobody holds the lock.

        Reads ``/proc/locks`` where there is one, so that asking never takes
        the lock (a writer starting at that instant is not refused because
        of a probe); elsewhere it tries the lock and lets go at once.
        """
        if self._fd is not None:
            return self.holder
        if not self.path.exists():
            return None
        held = _held_per_proc_locks(self.path)
        if held is not None:
            return (read_holder(self.run_dir) or {"pid": None}) if held else None
        try:
            fd = self._lock_current()
        except LedgerLocked as exc:
            return exc.holder or {"pid": None}
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        return None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
