"""The run's writer lock: an OS ``flock`` on the run directory itself.

The lock is taken on the directory ``<run-dir>/`` (opened read-only), not on
a file in it: a directory cannot be unlinked from under its holder while it
holds anything, and deleting or replacing any file in it (the ``lock`` file
included) changes nothing about who holds the run. Two writers can only
both hold "the lock of a run directory" if they hold two different
directories, and the writer also locks the ledger file's own inode (see
:mod:`ledger.writer`), so two writers never append to one ledger.

``<run-dir>/lock`` is only the holder's business card: its pid, host,
command and start time (JSON), written atomically after the lock is taken,
so that a refused second writer can say who holds the run. When that file
is gone or stale, the holder is read from ``/proc/locks`` instead. An OS
lock dies with its process, so a crashed holder never leaves a stale lock
behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from ledger.atomic import atomic_write
from ledger.errors import LedgerError, LedgerLocked
from ledger.times import utc_now

__all__ = ["LOCK_NAME", "RunLock", "lock_fd", "read_holder", "who_holds"]

LOCK_NAME = "lock"


def _user() -> str | None:
    """Who this process runs as (None where the system cannot name the uid)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None


def read_holder(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The details in the lock file, or None when absent or unreadable."""
    try:
        text = (Path(run_dir) / LOCK_NAME).read_text(encoding="utf-8")
        holder = json.loads(text)
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _flock_holders(path: str | os.PathLike[str]) -> list[int] | None:
    """Pids holding an flock on ``path``'s inode per /proc/locks; None if unknown."""
    try:
        st = os.stat(path)
        with open("/proc/locks", encoding="ascii") as f:
            table = f.read()
    except OSError:
        return None
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids: list[int] = []
    for line in table.splitlines():
        parts = line.split()
        # "1: FLOCK  ADVISORY  WRITE 2273 fe:00:2164373 0 EOF" (blocked waiters have "->")
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5] == key:
            pids.append(int(parts[4]) if parts[4].lstrip("-").isdigit() else -1)
    return pids


def _describe_pid(pid: int) -> dict[str, Any]:
    """What this host knows of a live process: its pid, host and command line."""
    holder: dict[str, Any] = {"pid": pid, "host": socket.gethostname()}
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().rstrip(b"\0").split(b"\0")
        holder["command"] = " ".join(a.decode("utf-8", "replace") for a in argv)
    return holder


def who_holds(path: str | os.PathLike[str], run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The holder of the lock on ``path``: the lock file's details if they are the
    live holder's, else what ``/proc/locks`` and ``/proc/<pid>`` say."""
    details = read_holder(run_dir)
    pids = [p for p in (_flock_holders(path) or []) if p > 0]
    if not pids or (details is not None and details.get("pid") in pids):
        return details or {}
    return _describe_pid(pids[0])


def lock_fd(fd: int, *, path: str | os.PathLike[str], run_dir: str | os.PathLike[str]) -> None:
    """Take an exclusive flock on ``fd`` without waiting; LedgerLocked when held."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise LedgerLocked(os.fspath(run_dir), holder=who_holds(path, run_dir)) from None
    except OSError as exc:
        raise LedgerError(
            f"{path}: cannot lock ({exc.strerror})",
            hint="keep runs on a local file system that supports flock",
        ) from None


class RunLock:
    """An exclusive, non-blocking lock on a run directory.

    Use :meth:`acquire` (raises :class:`LedgerLocked` when held elsewhere)
    and :meth:`release`, or :meth:`probe` to ask whether a live process holds
    it without taking it for long.
    """

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        """The holder's details (informational: the lock is on the directory)."""
        self._fd: int | None = None
        self.holder: dict[str, Any] = {}

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _lock_dir(self) -> int:
        """Lock the run directory; raise LedgerLocked if held."""
        try:
            fd = os.open(self.run_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise LedgerError(
                f"{self.run_dir}: no such run directory", hint="check the run id"
            ) from None
        try:
            lock_fd(fd, path=self.run_dir, run_dir=self.run_dir)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def acquire(self, *, command: str | None = None) -> dict[str, Any]:
        """Take the lock and record who holds it; returns the holder details."""
        if self._fd is not None:
            return self.holder
        fd = self._lock_dir()
        holder = {
            "pid": os.getpid(),
            "user": _user(),
            "host": socket.gethostname(),
            "command": command if command is not None else " ".join(sys.argv),
            "started_at": utc_now(),
        }
        try:
            atomic_write(self.path, (json.dumps(holder, sort_keys=True) + "\n").encode())
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
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
        if not self.run_dir.is_dir():
            return None
        pids = _flock_holders(self.run_dir)
        if pids is not None:
            return (who_holds(self.run_dir, self.run_dir) or {"pid": None}) if pids else None
        try:
            fd = self._lock_dir()
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
