"""The engine's side of the guardian (:mod:`engine.exec.local.guardian`).

One guardian per engine process, started at the first attempt; every
attempt's process group is registered with it while it runs. If the engine
dies, even by SIGKILL, the guardian sees its pipe close and terminates the
groups still registered.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from pathlib import Path

from engine.exec.local.orphans import OWN
from engine.exec.local.spawn import devnull

__all__ = ["GUARDIAN", "GUARDIAN_BATCH", "GUARDIAN_GRACE", "Guardian"]

GUARDIAN_BATCH = 0.02
"""Seconds registrations wait to be sent to the guardian together."""

GUARDIAN_GRACE = 5.0
"""Seconds the guardian waits after SIGTERM before it sends SIGKILL."""

_SCRIPT = str(Path(__file__).with_name("guardian.py"))


class Guardian:
    """The pipe to the guardian, and the registrations still to send on it."""

    def __init__(self) -> None:
        self.fd = -1
        self.pid = -1
        self._owner = -1
        """The process that started it (a forked child must start its own)."""
        self._pending: dict[int, bool] = {}
        """Process groups to register (True) or unregister (False) with the next batch."""
        self._timer: asyncio.TimerHandle | None = None

    def _start(self) -> None:
        self._owner = os.getpid()
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        argv = [sys.executable, "-I", "-S", _SCRIPT, str(GUARDIAN_GRACE)]
        try:
            # No Popen: the guardian outlives every object here, by design.
            self.pid = os.posix_spawn(
                sys.executable,
                argv,
                os.environ,
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, read_end, 0),
                    (os.POSIX_SPAWN_DUP2, devnull(), 1),
                    (os.POSIX_SPAWN_DUP2, devnull(), 2),
                ],
                setsid=True,
            )
        except OSError:
            os.close(write_end)
            return
        finally:
            os.close(read_end)
        OWN.add(self.pid)
        self.fd = write_end

    def _send(self, data: bytes) -> None:
        if self._owner != os.getpid():
            self._start()
        if self.fd < 0:
            return
        try:
            os.write(self.fd, data)
        except OSError:  # the guardian is gone; resume still finds what it left running
            os.close(self.fd)
            self.fd = -1

    # Registrations are sent in batches, a few milliseconds late: a write wakes
    # the guardian (tens of microseconds a time), and most attempts of a busy
    # run end before their batch goes, so theirs never needs sending. What a
    # dead engine left unregistered, the next resume stops before anything runs.

    def register(self, pgid: int) -> None:
        self._pending[pgid] = True
        self._schedule()

    def unregister(self, pgid: int) -> None:
        if self._pending.pop(pgid, None):
            return  # never sent: nothing to take back
        self._pending[pgid] = False
        self._schedule()

    def told(self) -> bool:
        """Whether the guardian runs and has been sent every registration so far."""
        return self.fd >= 0 and not self._pending

    def _schedule(self) -> None:
        if self._timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._timer = loop.call_later(GUARDIAN_BATCH, self.flush)

    def flush(self) -> None:
        self._timer = None
        pending, self._pending = self._pending, {}
        if pending:
            lines = (b"%s%d\n" % (b"+" if on else b"-", pgid) for pgid, on in pending.items())
            self._send(b"".join(lines))

    def forget(self) -> None:
        """In a forked child: let go of the parent's pipe, so the guardian sees the parent die."""
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1
        self._pending = {}
        self._timer = None


GUARDIAN = Guardian()
"""This process's guardian."""

# A forked child (a background verifier) must not keep the engine's end of
# the pipe open: the guardian would not see the engine die.
os.register_at_fork(after_in_child=GUARDIAN.forget)
