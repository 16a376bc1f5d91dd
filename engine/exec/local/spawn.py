"""Starting a step's process: the environment as bytes, fork/exec, pidfds.

Each process starts in a session (and process group) of its own, its stdin
on /dev/null, with every other descriptor closed.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping

__all__ = ["PIDFD", "devnull", "spawn"]


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


PIDFD = _pidfds_work()
"""Whether a child's exit can be watched through a pidfd (else: a waiting thread)."""


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


_DEVNULL: list[int] = []


def devnull() -> int:
    """One /dev/null descriptor for every child's stdin (not one open per spawn)."""
    if not _DEVNULL:
        _DEVNULL.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
    return _DEVNULL[0]


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


def spawn(
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
            stdin=devnull(),
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
                devnull(), -1,  # stdin
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
