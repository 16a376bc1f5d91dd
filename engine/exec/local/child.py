"""A running step process, driven by the event loop: its exit, its pipes, its reaping."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from engine.exec.local.orphans import OWN
from engine.exec.local.spawn import PIDFD, spawn

__all__ = ["WATCH_AFTER", "Child", "Sink"]

WATCH_AFTER = 0.05
"""Seconds after which a child's exit is watched by itself, not through its pipes."""


class Sink(Protocol):
    """Where a pipe's output goes (a log)."""

    def write(self, data: bytes) -> None: ...


class Child:
    """A child in a session (and process group) of its own, driven by the event loop.

    Cheaper than asyncio's subprocess transports: the exit is seen through a
    pidfd (or a waiting thread where pidfds are not allowed), and the pipes
    are read by plain readers on the loop. ``exited`` is done once it has
    been reaped (its ``returncode`` known), ``drained`` once both pipes are
    closed.

    Raises OSError when the program cannot be started, ValueError when its
    environment cannot be given to it.
    """

    def __init__(
        self,
        argv: list[str],
        *,
        base_env: Mapping[str, str],
        env: dict[str, str],
        cwd: str,
        sinks: tuple[Sink, Sink],
        on_output: Callable[[], None],
    ) -> None:
        loop = asyncio.get_running_loop()
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        try:
            self.pid, self.popen = spawn(
                argv, base_env=base_env, env=env, cwd=cwd, stdout=out_w, stderr=err_w
            )
        except BaseException:
            for fd in (out_r, err_r):
                os.close(fd)
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
        OWN.add(self.pid)
        self.returncode: int | None = None
        self.exited: asyncio.Future[Any] = loop.create_future()
        self.drained: asyncio.Future[None] = loop.create_future()
        self._open = 2
        self._loop = loop
        self._on_output = on_output
        self._pidfd = -1
        self._watching = False
        self._fds = {out_r, err_r}
        for fd, sink in ((out_r, sinks[0]), (err_r, sinks[1])):
            loop.add_reader(fd, self._read, fd, sink)
        # Most children close their pipes by exiting, soon: that is seen without
        # watching the process at all. One still running a moment later (or one
        # whose pipes outlive it in a grandchild) is watched through a pidfd.
        self._watch_timer = loop.call_later(WATCH_AFTER, self._watch_exit)

    def _watch_exit(self) -> None:
        if self._watching or self.exited.done():
            return
        self._watching = True
        self._watch_timer.cancel()
        if PIDFD:
            self._pidfd = os.pidfd_open(self.pid)
            self._loop.add_reader(self._pidfd, self._reap)
        else:
            waiter = self._loop.run_in_executor(None, self._wait, 0)
            waiter.add_done_callback(lambda _f: self._settle_exit())

    def _read(self, fd: int, sink: Sink) -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            sink.write(data)
            self._on_output()
            return
        self._loop.remove_reader(fd)
        os.close(fd)
        self._fds.discard(fd)
        self._open -= 1
        if self._open == 0 and not self.drained.done():
            self.drained.set_result(None)
            if not self._watching:
                if self._wait(os.WNOHANG) is None:
                    self._watch_exit()  # pipes closed, process not gone yet
                else:
                    self._watch_timer.cancel()
                    self._settle_exit()

    def stop_reading(self) -> None:
        """Close the pipes that are still open: their output ends here.

        For pipes held by a process that left the step's process group
        (``setsid``), which stopping the group cannot reach.
        """
        for fd in self._fds:
            self._loop.remove_reader(fd)
            os.close(fd)
        self._fds.clear()
        self._open = 0
        if not self.drained.done():
            self.drained.set_result(None)

    def _reap(self) -> None:
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._wait(0)
        self._settle_exit()

    def _wait(self, flags: int) -> int | None:
        """Reap the child (``flags``: 0 blocks, WNOHANG does not); its return code."""
        if self.returncode is not None:
            return self.returncode
        if self.popen is not None:
            self.returncode = self.popen.wait() if flags == 0 else self.popen.poll()
            if self.returncode is not None:
                OWN.discard(self.pid)
            return self.returncode
        try:
            pid, status = os.waitpid(self.pid, flags)
        except ChildProcessError:
            # Reaped elsewhere (nothing in the engine does): its status is lost,
            # and an attempt whose status is unknown did not succeed.
            self.returncode = 255
            OWN.discard(self.pid)
            return self.returncode
        if pid == 0:
            return None
        self.returncode = os.waitstatus_to_exitcode(status)
        OWN.discard(self.pid)
        return self.returncode

    def _settle_exit(self) -> None:
        if not self.exited.done():
            self.exited.set_result(self._wait(os.WNOHANG))
