"""The local executor: each attempt's steps as subprocesses on this machine.

Every step runs in its own process group (a new session), so a timeout, a
hang or a cancel stops the whole tree: SIGTERM to the group, a grace period,
then SIGKILL. stdout and stderr stream to log files under the run directory
(made durable and referenced by path and sha256 before the outcome is
returned); the outcome carries the last 100 lines of stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from engine.exec.executor import Attempt, AttemptOutcome, AttemptRequest, Executor, HeartbeatSample
from engine.exec.local.guardian import alive_groups, processes
from engine.exec.local.orphans import OWN, adopting
from engine.redact import redact_value, secret_forms
from engine.workflow.spec import Step
from engine.workflow.template import render_argv, render_shell, render_text, value_text
from ledger.atomic import DIR_MODE, FILE_MODE, fsync_dir, make_private_dir
from ledger.events import LogRef
from ledger.times import rfc3339

__all__ = [
    "LocalExecutor",
    "group_members",
    "group_usage",
    "process_command",
    "stop_group_leftovers",
    "terminate_group",
]

TAIL_LINES = 100
TAIL_BYTES = 64 * 1024
_PAGE = os.sysconf("SC_PAGE_SIZE")
_TICKS = os.sysconf("SC_CLK_TCK")


def group_usage(pgid: int) -> tuple[int, float, int]:
    """(rss bytes, cpu seconds, processes) of a process group, from /proc."""
    rss = 0
    cpu = 0.0
    count = 0
    for _pid, fields in processes():
        if int(fields[2]) == pgid:
            count += 1
            cpu += (int(fields[11]) + int(fields[12])) / _TICKS
            rss += int(fields[21]) * _PAGE
    return rss, cpu, count


async def terminate_group(pgid: int, exited: asyncio.Future[Any] | None, grace: float) -> None:
    """SIGTERM the group, wait up to ``grace`` for the leader to exit, then SIGKILL the group."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    if exited is not None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(exited), grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


async def stop_group_leftovers(pgid: int, grace: float) -> int:
    """Stop what is left in a step's process group once its leader has exited.

    SIGTERM, up to ``grace`` seconds for them to go, then SIGKILL; returns how
    many processes were left. One signal-0 probe when nothing is (the usual case).
    """
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return 0
    left = await asyncio.to_thread(group_members, pgid)
    if not left:
        return 0  # zombies only, waiting for their parent (init) to reap them
    await stop_groups({pgid}, grace)
    return len(left)


async def stop_groups(groups: set[int], grace: float) -> None:
    """SIGTERM each process group, up to ``grace`` seconds for them to go, then SIGKILL."""
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while groups and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
        groups = await asyncio.to_thread(alive_groups, groups)
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of a process group."""
    return [pid for pid, fields in processes() if fields[0] != b"Z" and int(fields[2]) == pgid]


@functools.lru_cache(maxsize=256)
def _resolve(program: str, path: str) -> str:
    """The program's path as the child's PATH finds it (looked up once, not per spawn)."""
    if "/" in program:
        return program
    return shutil.which(program, path=path) or program


def _pidfds_work() -> bool:
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError):
        return False
    return True


_PIDFD = _pidfds_work()


ARG_LIMIT = 32 * _PAGE
"""Bytes one argument, or one ``NAME=value`` environment entry, can hold
(Linux's MAX_ARG_STRLEN, the terminating NUL included): 128 KiB."""


VARIABLES_BUDGET = 512 * 1024
"""Bytes of a shell command's variables kept in its environment: the kernel
allows about 2 MiB for all arguments and the environment together."""


class Unpassable(ValueError):
    """A value that cannot reach a process (a NUL byte, a bad name, too long)."""


def _encoded_size(text: str, what: str) -> int:
    """Bytes of ``text`` as the process gets it; :class:`Unpassable` if it cannot."""
    if "\0" in text:
        raise Unpassable(f"{what} contains a NUL byte, which no process can be given")
    if text.isascii():
        return len(text)  # known without encoding anything (CPython keeps the flag)
    try:
        return len(os.fsencode(text))
    except UnicodeEncodeError:
        raise Unpassable(f"{what} is not valid text (a lone surrogate)") from None


def check_passable(argv: Sequence[str], env: Mapping[str, str]) -> None:
    """Raise :class:`Unpassable` for what ``exec`` would refuse, saying what and how to fix it."""
    for index, arg in enumerate(argv):
        if arg.isascii() and len(arg) < ARG_LIMIT and "\0" not in arg:
            continue  # the usual case, decided at once
        what = f"argument {index} of the command"
        size = _encoded_size(arg, what)
        if size + 1 > ARG_LIMIT:
            raise Unpassable(f"{what} is {size} bytes, over the {ARG_LIMIT} one can hold{_HINT}")
    for key, value in env.items():
        if (
            key.isascii()
            and value.isascii()
            and len(key) + len(value) + 2 <= ARG_LIMIT
            and key
            and "=" not in key
            and "\0" not in key
            and "\0" not in value
        ):
            continue
        if not key or "=" in key or "\0" in key:
            raise Unpassable(f"illegal environment variable name {key!r}")
        what = f"environment variable {key}"
        _encoded_size(key, f"the name of {what}")
        size = len(key) + 1 + _encoded_size(value, f"the value of {what}")
        if size + 1 > ARG_LIMIT:
            raise Unpassable(f"{what} is {size} bytes, over the {ARG_LIMIT} one can hold{_HINT}")


_HINT = "; read a large item from the file $ENGINE_ITEM_FILE names instead"


_WATCH_AFTER = 0.05
"""Seconds after which a child's exit is watched by itself, not through its pipes."""


class _Environment:
    """An environment as ``KEY=value`` bytes: a shared base, encoded once, plus extras."""

    def __init__(self, base: Mapping[str, str]) -> None:
        self.base = base  # held, so its id is not reused while this is cached
        self.entries = [_entry(k, v) for k, v in base.items()]
        self.index = {k: i for i, k in enumerate(base)}

    def encode(self, extra: Mapping[str, str]) -> list[bytes]:
        entries = self.entries.copy()
        overridden = [self.index[k] for k in extra if k in self.index]
        for i in sorted(overridden, reverse=True):
            del entries[i]
        entries.extend(_entry(k, v) for k, v in extra.items())
        return entries


def _entry(key: str, value: str) -> bytes:
    raw = os.fsencode(key)
    if not raw or b"=" in raw or b"\0" in raw:
        raise ValueError(f"illegal environment variable name {key!r}")
    return raw + b"=" + os.fsencode(value)


_ENVIRONMENTS: dict[int, _Environment] = {}


def _environment(base: Mapping[str, str]) -> _Environment:
    env = _ENVIRONMENTS.get(id(base))
    if env is None or env.base is not base:
        if len(_ENVIRONMENTS) > 8:
            _ENVIRONMENTS.clear()
        env = _ENVIRONMENTS[id(base)] = _Environment(base)
    return env


_fork_exec: Callable[..., int] | None
try:  # CPython's own spawning primitive, as subprocess.Popen calls it
    from _posixsubprocess import fork_exec as _fork_exec
except ImportError:  # pragma: no cover - not CPython on a POSIX system
    _fork_exec = None

_FORK_EXEC = _fork_exec is not None and (3, 11) <= sys.version_info[:2] <= (3, 13)
"""Spawn through ``fork_exec`` directly where its signature is known.

``subprocess.Popen`` costs about 0.1 ms of Python per spawn on top of it
(its object, the environment encoded entry by entry, the handles): a tenth
of the engine's whole cost per item when the commands are short. Elsewhere,
``Popen``.
"""


def _spawn(
    argv: list[str],
    *,
    base_env: Mapping[str, str],
    env: dict[str, str],
    cwd: str,
    stdout: int,
    stderr: int,
) -> tuple[int, subprocess.Popen[bytes] | None]:
    """Start ``argv`` in a new session; its pid (and the Popen, where one was used).

    Its environment is ``env`` laid over ``base_env`` (a mapping shared by many
    spawns, encoded once).

    Raises OSError when the program cannot be started (not found, not
    executable, a bad working directory), as Popen does.
    """
    path = env["PATH"] if "PATH" in env else base_env.get("PATH", "")
    executable = _resolve(argv[0], path)
    if not _FORK_EXEC or _fork_exec is None:
        popen = subprocess.Popen(
            [executable, *argv[1:]],
            stdin=_devnull(),
            stdout=stdout,
            stderr=stderr,
            cwd=cwd,
            env={**base_env, **env},
            start_new_session=True,
        )
        return popen.pid, popen
    args = [os.fsencode(executable), *map(os.fsencode, argv[1:])]
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    try:
        try:
            pid = _fork_exec(
                args,
                [args[0]],
                True,  # close every other descriptor
                (err_w,),
                cwd,
                _environment(base_env).encode(env),
                _devnull(), -1,  # stdin
                -1, stdout,
                -1, stderr,
                err_r, err_w,
                True,  # restore signals
                True,  # setsid: a session and process group of its own
                -1, None, None, None, -1, None,
                True,  # vfork where it is safe
            )  # fmt: skip
        finally:
            os.close(err_w)
        failure = b""
        while chunk := os.read(err_r, 50000):
            failure += chunk
    finally:
        os.close(err_r)
    if failure:
        # "OSError:<hex errno>:<where>" from the child that could not exec.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        _name, hex_errno, where = failure.split(b":", 2)
        number = int(hex_errno, 16) if hex_errno else 0
        # "noexec": it failed before exec, where entering the working directory is what fails.
        filename = cwd if where.startswith(b"noexec") else executable
        raise OSError(number, os.strerror(number), filename)
    return pid, None


class _Guardian:
    """The engine's side of :mod:`engine.exec.local.guardian` (one per engine process).

    Started at the first attempt; every attempt's process group is registered
    while it runs. If the engine dies, even by SIGKILL, the guardian sees its
    pipe close and terminates the groups still registered.
    """

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
        script = str(Path(__file__).with_name("guardian.py"))
        argv = [sys.executable, "-I", "-S", script, str(GUARDIAN_GRACE)]
        try:
            # No Popen: the guardian outlives every object here, by design.
            self.pid = os.posix_spawn(
                sys.executable,
                argv,
                os.environ,
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, read_end, 0),
                    (os.POSIX_SPAWN_DUP2, _devnull(), 1),
                    (os.POSIX_SPAWN_DUP2, _devnull(), 2),
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


GUARDIAN_BATCH = 0.02
"""Seconds registrations wait to be sent to the guardian together."""

GUARDIAN_GRACE = 5.0
"""Seconds the guardian waits after SIGTERM before it sends SIGKILL."""

_GUARDIAN = _Guardian()


def _forget_guardian_in_child() -> None:
    # A forked child (a background verifier) must not keep the engine's end
    # of the pipe open: the guardian would not see the engine die.
    if _GUARDIAN.fd >= 0:
        with contextlib.suppress(OSError):
            os.close(_GUARDIAN.fd)
        _GUARDIAN.fd = -1
    _GUARDIAN._pending = {}
    _GUARDIAN._timer = None


os.register_at_fork(after_in_child=_forget_guardian_in_child)


class _Child:
    """A child in a session (and process group) of its own, driven by the event loop.

    Cheaper than asyncio's subprocess transports: the exit is seen through a
    pidfd (or a waiting thread where pidfds are not allowed), and the pipes
    are read by plain readers on the loop.
    """

    def __init__(
        self,
        argv: list[str],
        *,
        base_env: Mapping[str, str],
        env: dict[str, str],
        cwd: str,
        sinks: tuple[_Log, _Log],
        on_output: Callable[[], None],
    ) -> None:
        loop = asyncio.get_running_loop()
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        try:
            self.pid, self.popen = _spawn(
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
        self._watch_timer = loop.call_later(_WATCH_AFTER, self._watch_exit)

    def _watch_exit(self) -> None:
        if self._watching or self.exited.done():
            return
        self._watching = True
        self._watch_timer.cancel()
        if _PIDFD:
            self._pidfd = os.pidfd_open(self.pid)
            self._loop.add_reader(self._pidfd, self._reap)
        else:
            waiter = self._loop.run_in_executor(None, self._wait, 0)
            waiter.add_done_callback(lambda _f: self._settle_exit())

    def _read(self, fd: int, sink: _Log) -> None:
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


_MADE: set[str] = set()
"""Directories this process has made (or found) already."""

_DEVNULL: list[int] = []


def _devnull() -> int:
    """One /dev/null descriptor for every child's stdin (not one open per spawn)."""
    if not _DEVNULL:
        _DEVNULL.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
    return _DEVNULL[0]


class _Log:
    """One stream's log file: written as it comes, made durable at the end.

    Paths are plain strings: an attempt builds two of these, and most never
    see a byte (no output, no file).

    A write that fails (a full disk) is never raised to the pipe's reader
    callback, which would fail again at every chunk: the log stops there,
    keeps draining into its in-memory tail only, drops its file at the end,
    and ``error`` makes the attempt fail (``resource_exhausted``).
    """

    def __init__(self, directory: str, name: str, secrets: tuple[bytes, ...]) -> None:
        self.directory = directory
        self.name = name
        self.fd = -1  # opened at the first byte: no output, no file
        self.size = 0
        self.tail: deque[bytes] = deque()
        self.tail_size = 0
        self.digest: Any = None
        self.secret_bytes = secrets
        self.hold = max((len(x) for x in secrets), default=1) - 1
        """Bytes kept back until more come: a secret may arrive in two writes."""
        self.carry = b""
        self.error: OSError | None = None
        """The first failed write, open or sync; the file is abandoned after it."""

    @property
    def path(self) -> str:
        return f"{self.directory}/{self.name}"

    @property
    def tmp(self) -> str:
        return f"{self.directory}/.{self.name}.tmp"

    def write(self, data: bytes) -> None:
        if self.secret_bytes:
            data = self.carry + data
            for secret in self.secret_bytes:
                data = data.replace(secret, b"***")
            if self.hold:
                data, self.carry = data[: -self.hold], data[-self.hold :]
        self._write(data)

    def flush(self) -> None:
        """Write what was kept back (the stream has ended)."""
        if self.carry:
            data, self.carry = self.carry, b""
            self._write(data)

    def _write(self, data: bytes) -> None:
        if not data:
            return
        if self.error is None:
            try:
                if self.fd < 0:
                    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
                    self.fd = os.open(self.tmp, flags, FILE_MODE)
                    self.digest = hashlib.sha256()
                view = memoryview(data)
                while view:
                    view = view[os.write(self.fd, view) :]
            except OSError as exc:
                self.error = exc
            else:
                self.size += len(data)
                self.digest.update(data)
        self.tail.append(data)
        self.tail_size += len(data)
        while self.tail_size > TAIL_BYTES and len(self.tail) > 1:
            self.tail_size -= len(self.tail.popleft())

    def read_from(self, offset: int) -> bytes:
        if self.fd < 0 or offset >= self.size or self.error is not None:
            return b""
        with open(self.tmp, "rb") as f:
            f.seek(offset)
            return f.read()

    def tail_text(self, lines: int = TAIL_LINES) -> str:
        if not self.tail:
            return ""
        text = b"".join(self.tail).decode("utf-8", "replace")
        return "\n".join(text.splitlines()[-lines:])

    def finish(self) -> LogRef | None:
        """Make the log durable under its name; an empty log leaves no file.

        A log whose write or sync failed leaves no file either (what it
        holds is not what the command printed) and no reference.
        """
        self.flush()
        if self.fd < 0:
            return None
        fd, self.fd = self.fd, -2  # finished: nothing more is written
        try:
            if self.error is None:
                os.fsync(fd)
        except OSError as exc:
            self.error = exc
        finally:
            os.close(fd)
        try:
            if self.error is None:
                os.replace(self.tmp, self.path)
        except OSError as exc:
            self.error = exc
        if self.error is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.tmp)
            return None
        return LogRef(
            path=f"logs/{self.name}",
            sha256="sha256:" + self.digest.hexdigest(),
            size=self.size,
        )


class LocalAttempt(Attempt):
    def __init__(self, request: AttemptRequest) -> None:
        self.request = request
        self.child: _Child | None = None
        self.pgid: int | None = None
        self.started = time.monotonic()
        self.last_activity = time.monotonic()
        self.cancelled = False
        self.hung = False
        self._samples: deque[HeartbeatSample] = deque()
        self._ended = False
        self._waiter: asyncio.Future[None] | None = None
        self._files: dict[str, str] = {}
        """Values too large for the environment, in files: text -> path."""
        name = hashlib.sha256(request.item_id.encode()).hexdigest()[:16]
        self.base = f"{name}-{request.attempt}"
        run_dir = str(request.run_dir)
        logs = f"{run_dir}/logs"
        if logs not in _MADE:
            make_private_dir(Path(logs))
            _MADE.add(logs)
        secrets = tuple(s.encode() for s in secret_forms(request.redact))
        self.out = _Log(logs, f"{self.base}.stdout", secrets)
        self.err = _Log(logs, f"{self.base}.stderr", secrets)
        # Only the attempt touches (creates) this file; it needs no durability.
        hb_dir = f"{run_dir}/heartbeat"
        if hb_dir not in _MADE:
            os.makedirs(hb_dir, mode=DIR_MODE, exist_ok=True)
            _MADE.add(hb_dir)
        self.heartbeat_file = f"{hb_dir}/{self.base}"
        self.started_wall = time.time()
        self.touched: float | None = None
        self.task = asyncio.ensure_future(self._run())
        # The heartbeat task starts at the first check: a short attempt never needs one.
        self.beat_task: asyncio.Future[None] | None = None
        interval = request.heartbeat_interval
        first = interval if request.hung_after is None else min(interval, request.hung_after / 4)
        self._beat_timer = asyncio.get_running_loop().call_later(first, self._start_beat)
        self._stop_watch: asyncio.Event | None = None
        self.watch_task: asyncio.Future[None] | None = None
        if request.hung_after is not None:
            self._stop_watch = asyncio.Event()
            self.watch_task = asyncio.ensure_future(self._watch(hb_dir))

    # --- observation -------------------------------------------------------------

    async def heartbeats(self) -> AsyncIterator[HeartbeatSample]:
        while True:
            while self._samples:
                yield self._samples.popleft()
            if self._ended:
                return
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter

    def _publish(self, sample: HeartbeatSample | None) -> None:
        """A new sample, or (None) the end of the attempt."""
        if sample is None:
            self._ended = True
        else:
            self._samples.append(sample)
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> AttemptOutcome:
        return await asyncio.shield(self.task)

    async def cancel(self, *, force: bool = False) -> None:
        self.cancelled = True
        if self.pgid is not None:
            exited = self.child.exited if self.child is not None else None
            await terminate_group(self.pgid, exited, 0.0 if force else self.request.kill_grace)
        with contextlib.suppress(Exception):
            await asyncio.shield(self.task)

    def _touched_at(self) -> float | None:
        try:
            mtime = os.stat(self.heartbeat_file).st_mtime
        except OSError:
            return self.touched
        if mtime < self.started_wall - 1:
            return self.touched  # left by an earlier engine, not touched by this attempt
        self.touched = mtime if self.touched is None else max(self.touched, mtime)
        return self.touched

    async def _watch(self, directory: str) -> None:
        import watchfiles  # noqa: PLC0415 - only attempts with hung detection need it

        target = self.heartbeat_file

        def only_ours(_change: object, path: str) -> bool:
            return path == target

        async for _changes in watchfiles.awatch(
            directory,
            watch_filter=only_ours,
            stop_event=self._stop_watch,
            debounce=50,
            step=20,
            recursive=False,
        ):
            self.last_activity = time.monotonic()
            self._touched_at()

    def _start_beat(self) -> None:
        if not self.task.done():
            self.beat_task = asyncio.ensure_future(self._beat())

    async def _beat(self) -> None:
        request = self.request
        interval = request.heartbeat_interval
        check = interval if request.hung_after is None else min(interval, request.hung_after / 4)
        next_beat = self.started + interval
        while not self.task.done():
            now = time.monotonic()
            if (
                request.hung_after is not None
                and not self.hung
                and self.pgid is not None
                and now - self.last_activity > request.hung_after
            ):
                self.hung = True
                exited = self.child.exited if self.child is not None else None
                await terminate_group(self.pgid, exited, request.kill_grace)
                continue
            if now >= next_beat:
                next_beat = now + interval
                rss, cpu, _ = group_usage(self.pgid) if self.pgid is not None else (None, None, 0)
                touched = self._touched_at()
                self._publish(
                    HeartbeatSample(
                        pid=self.child.pid if self.child else None,
                        rss=rss,
                        cpu=cpu,
                        output_bytes=self.out.size + self.err.size,
                        touched_at=rfc3339(touched) if touched else None,
                    )
                )
            await asyncio.sleep(max(0.01, min(check, next_beat - time.monotonic())))

    # --- running -----------------------------------------------------------------

    def _active(self) -> None:
        self.last_activity = time.monotonic()

    def _argv(self, step: Step, context: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
        request = self.request
        env = dict(request.env)
        env["ENGINE_HEARTBEAT_FILE"] = self.heartbeat_file
        if "item" in context and (item_file := self._item_file(context["item"])) is not None:
            env["ENGINE_ITEM_FILE"] = item_file
        for key, value in step.env.items():
            env[key] = render_text(value, context)
        if step.kind != "shell":
            agent = list(request.agent_command) if step.kind == "claude" else []
            words = [*agent, step.claude or ""] if step.kind == "claude" else [*(step.argv or [])]
            argv, variables = render_argv(words, context, literal=len(agent))
            return argv, {**env, **variables}
        in_children: set[str] = set()
        command, variables = render_shell(step.text, context, in_children=in_children)
        command = self._large_values_from_files(command, variables, env, in_children)
        env.update(variables)
        return ["/bin/sh", "-c", command], env

    # --- values too large for the environment -----------------------------------------

    def _value_file(self, name: str, text: str) -> str:
        """A private file holding ``text`` for this attempt (removed when it ends)."""
        path = self._files.get(text)
        if path is None:
            directory = f"{self.request.run_dir}/values"
            if directory not in _MADE:
                make_private_dir(Path(directory))
                _MADE.add(directory)
            path = f"{directory}/{self.base}.{name}"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
            try:
                view = memoryview(os.fsencode(text))
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            self._files[text] = path
        return path

    def _remove_value_files(self) -> None:
        for path in self._files.values():
            with contextlib.suppress(OSError):
                os.unlink(path)
        self._files.clear()

    def _item_file(self, item: Any) -> str | None:
        """``ENGINE_ITEM_FILE``: the item's text in a file, when it is too large for an argument."""
        if isinstance(item, str) and len(item) * 4 < ARG_LIMIT:
            return None  # the common case, decided without encoding anything
        text = value_text(item)
        if _encoded_size(text, "the item") + 1 < ARG_LIMIT:
            return None
        return self._value_file("item", text)

    def _large_values_from_files(
        self,
        command: str,
        variables: dict[str, str],
        env: dict[str, str],
        in_children: set[str],
    ) -> str:
        """Variables too large for the environment reach the shell through files.

        Each such ``NAME`` is left out of the environment; ``NAME_FILE`` names
        a file holding its value, and the command starts by reading it into
        the (unexported) shell variable ``NAME``, so ``${NAME}`` references
        expand to the value as before (in builtins, pipes, redirections: an
        argument of a program cannot hold it anyway). Each value over
        :data:`ARG_LIMIT` goes that way, then the largest others while they
        come to more than :data:`VARIABLES_BUDGET` together. A shell the
        command starts (``bash -c``) would not see such a variable: a value it
        expands that must go through a file fails the attempt (:class:`Unpassable`).
        """
        sizes = {
            name: len(name) + 2 + _encoded_size(text, f"${{{name}}}")
            for name, text in variables.items()
        }
        total = sum(sizes.values())
        prefix = []
        for name in sorted(sizes, key=sizes.__getitem__, reverse=True):
            if sizes[name] <= ARG_LIMIT and total <= VARIABLES_BUDGET:
                break
            if name in in_children:
                raise Unpassable(
                    f"a value of {sizes[name]:,} bytes is expanded by a shell the command "
                    "starts, whose environment cannot hold it; read it there from a file "
                    "(bash -c 'v=$(cat \"$ENGINE_ITEM_FILE\"); …' for the item)"
                )
            total -= sizes[name]
            text = variables.pop(name)
            env[f"{name}_FILE"] = self._value_file(name, text)
            prefix.append(
                f'{name}=$(cat "${name}_FILE"; printf x) || exit 125; {name}=${{{name}%x}}; '
            )
        return "".join(prefix) + command

    async def _step(
        self, step: Step, context: dict[str, Any], deadline: float | None
    ) -> dict[str, Any]:
        """Run one step; returns what happened to it."""
        request = self.request
        try:
            argv, env = self._argv(step, context)
            check_passable(argv, env)
        except ValueError as exc:  # a template error, or a value no process can be given
            return self._not_started(str(exc))
        cwd = str(request.cwd / step.cwd) if step.cwd else str(request.cwd)
        limit = step.timeout
        if deadline is not None:
            remaining = max(0.0, deadline - time.monotonic())
            limit = remaining if limit is None else min(limit, remaining)
        out_start = self.out.size
        if self.cancelled:  # cancelled before its process started: it never starts
            return {"exit_code": None, "error": "cancelled before it started", "stdout": b""}
        try:
            child = _Child(
                argv,
                base_env=request.base_env,
                env=env,
                cwd=cwd,
                sinks=(self.out, self.err),
                on_output=self._active,
            )
        except OSError as exc:
            where = f" in {cwd}" if exc.filename == cwd else ""
            self.err.write(f"engine: cannot start {argv[0]!r}{where}: {exc.strerror}\n".encode())
            return {"exit_code": 127, "error": f"cannot start {argv[0]!r}", "stdout": b""}
        except ValueError as exc:  # refused by the spawn itself (the shared environment)
            return self._not_started(f"cannot start {argv[0]!r}: {exc}")
        self.child = child
        self.pgid = child.pid
        _GUARDIAN.register(child.pid)
        timed_out = False
        try:
            if limit is None:
                await asyncio.shield(child.exited)
            else:
                await asyncio.wait_for(asyncio.shield(child.exited), limit)
        except TimeoutError:
            timed_out = True
            await terminate_group(child.pid, child.exited, request.kill_grace)
            await child.exited
        # Children that outlive the leader must not keep the pipes open.
        if not child.drained.done():
            try:
                await asyncio.wait_for(asyncio.shield(child.drained), 1.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.pid, signal.SIGKILL)
                try:
                    await asyncio.wait_for(asyncio.shield(child.drained), 1.0)
                except TimeoutError:  # held by a process outside the group
                    child.stop_reading()
                    self.err.write(
                        b"engine: stopped reading the step's output, held open by a process "
                        b"that left its process group\n"
                    )
        if not request.allow_background:
            stopped = await stop_group_leftovers(child.pid, request.kill_grace)
            if stopped:
                plural = "es" if stopped > 1 else ""
                note = (
                    f"engine: stopped {stopped} process{plural} the step left running in the "
                    "background (map.allow_background: true keeps them)\n"
                )
                self.err.write(note.encode())
        _GUARDIAN.unregister(child.pid)
        self.out.flush()
        self.err.flush()
        code = child.returncode
        return {
            "exit_code": code if code is not None and code >= 0 else None,
            "signal": -code if code is not None and code < 0 else None,
            "timed_out": timed_out,
            "stdout": self.out.read_from(out_start),
        }

    def _not_started(self, message: str) -> dict[str, Any]:
        """A step that could not be started: a ``validation_failed`` failure, said in its log."""
        self.err.write(f"engine: {message}\n".encode())
        return {
            "exit_code": None,
            "error": message,
            "error_type": "validation_failed",
            "stdout": b"",
        }

    async def _run(self) -> AttemptOutcome:
        request = self.request
        context: dict[str, Any] = dict(request.context)
        deadline = None if request.timeout is None else self.started + request.timeout
        outcome: dict[str, Any] = {}
        result: Any = None
        invalid: str | None = None
        captures: dict[str, Any] = {}
        failed = False
        try:
            for index, step in enumerate(request.steps):
                outcome = await self._step(step, context, deadline)
                stdout = outcome["stdout"].decode("utf-8", "replace")
                context["last"] = context["shell"] = {
                    "output": stdout.strip(),
                    "exit_code": outcome.get("exit_code"),
                }
                failed = bool(
                    self.cancelled
                    or self.hung
                    or outcome.get("timed_out")
                    or outcome.get("exit_code") != 0
                )
                if failed:
                    for handler in step.on_failure:
                        if self.cancelled:
                            break
                        await self._step(handler, context, None)
                    break
                if step.capture_output:
                    captures[step.capture_output] = _capture(stdout, step.capture_format)
                    context[step.capture_output] = captures[step.capture_output]
                if index == len(request.steps) - 1 and step.output is not None:
                    if step.output == "json":
                        try:
                            result = json.loads(stdout, parse_constant=_not_json)
                        except ValueError as exc:
                            invalid = f"output is not JSON: {exc}"
                    else:
                        result = stdout.strip()
        finally:
            if self._stop_watch is not None:
                self._stop_watch.set()
            self._beat_timer.cancel()
            if self.beat_task is not None:
                self.beat_task.cancel()
            stdout_ref = self.out.finish()
            stderr_ref = self.err.finish()
            if stdout_ref is not None or stderr_ref is not None:
                try:
                    fsync_dir(request.run_dir / "logs")
                except OSError as exc:
                    self.err.error = self.err.error or exc
            self._publish(None)
            self._remove_value_files()
        lost = self.out.error or self.err.error
        if lost is not None:  # the logs are not what the command printed: not a success
            failed = True
            note = f"\nengine: cannot write the attempt's log: {lost}\n".encode()
            self.err.tail.append(note)
            self.err.tail_size += len(note)
        secrets = secret_forms(request.redact)
        result = redact_value(result, secrets)
        captures = redact_value(captures, secrets)
        return AttemptOutcome(
            ok=not failed and invalid is None,
            duration=time.monotonic() - self.started,
            exit_code=outcome.get("exit_code"),
            signal=outcome.get("signal"),
            timed_out=bool(outcome.get("timed_out")) and not self.hung and not self.cancelled,
            hung=self.hung and not self.cancelled,
            interrupted=self.cancelled,
            invalid_output=invalid,
            error_type=outcome.get("error_type"),
            error=outcome.get("error"),
            stderr_tail=self.err.tail_text(),
            stdout_tail=self.out.tail_text(20),
            result=result,
            stdout=stdout_ref,
            stderr=stderr_ref,
            captures=captures,
            pgid=self.pgid,
        )


def _not_json(name: str) -> Any:
    """``NaN``, ``Infinity``: Python's json reads them, JSON (and the ledger) has none."""
    raise ValueError(f"{name} is not a JSON value")


def _capture(stdout: str, fmt: str) -> Any:
    if fmt == "json":
        try:
            return json.loads(stdout, parse_constant=_not_json)
        except ValueError:
            return stdout.strip()
    if fmt == "lines":
        return [line for line in stdout.splitlines() if line.strip()]
    return stdout.strip()


class LocalExecutor(Executor):
    """Runs attempts as local subprocesses."""

    name = "local"

    async def start(self, request: AttemptRequest) -> Attempt:
        return LocalAttempt(request)

    async def reclaim(
        self, run_id: str, run_dir: Path, grace: float = GUARDIAN_GRACE
    ) -> dict[str, int]:
        """Stop every process an earlier engine left running for ``run_id``.

        Attempts carry ``ENGINE_RUN_ID`` and ``ENGINE_RUN_DIR`` in their
        environment, and so do the processes they start: those still alive are
        found in ``/proc``, their groups sent SIGTERM, and after ``grace``
        seconds SIGKILL.
        """
        found = await asyncio.to_thread(run_processes, run_id, run_dir)
        groups = {pgid for pgid, _item in found.values()}
        if not groups:
            return {}
        await stop_groups(groups, grace)
        per_item: dict[str, int] = {}
        for _pgid, item in found.values():
            per_item[item] = per_item.get(item, 0) + 1
        return per_item


def run_processes(run_id: str, run_dir: Path) -> dict[int, tuple[int, str]]:
    """Live processes of attempts of ``run_id`` (by their environment): pid -> (pgid, item).

    Only those of the run in ``run_dir``: another home (another checkout, another
    user's test) may hold a run with the same id at the same time. While this
    engine adopts orphans (:mod:`engine.exec.local.orphans`), its adopted children count
    too when their environment was cleared (``env -i``): no other run's.
    """
    marker = b"ENGINE_RUN_ID=" + os.fsencode(run_id)
    # Attempts carry the run directory resolved (absolute, no symlinks).
    place = b"ENGINE_RUN_DIR=" + os.fsencode(str(run_dir.resolve()))
    me = os.getpid()
    parent = str(me).encode() if adopting() else None
    found: dict[int, tuple[int, str]] = {}
    for pid, fields in processes():
        if pid == me or fields[0] == b"Z":
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except OSError:
            continue  # gone, or not ours to read
        orphan = fields[1] == parent and pid not in OWN
        if orphan and not any(v.startswith(b"ENGINE_RUN_ID=") for v in environ):
            pass  # adopted, its environment cleared: of this run
        elif marker not in environ or place not in environ:
            continue
        item = next(
            (v[len(b"ENGINE_ITEM_ID=") :] for v in environ if v.startswith(b"ENGINE_ITEM_ID=")),
            b"",
        )
        found[pid] = (int(fields[2]), os.fsdecode(item))
    return found


def process_command(pid: int) -> str:
    """A process's command line, for a report ('' when it is gone; at most 64 KiB read)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read(65536)
    except OSError:
        return ""
    return " ".join(part.decode("utf-8", "replace") for part in raw.split(b"\0") if part)


def agent_argv(command: str) -> list[str]:
    """The agent command line as argv (``claude -p`` -> ["claude", "-p"])."""
    return shlex.split(command)
