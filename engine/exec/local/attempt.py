"""An attempt of the local executor: its steps as process groups on this machine.

Every step runs in its own process group (a new session), so a timeout, a
hang or a cancel stops the whole tree: SIGTERM to the group, a grace period,
then SIGKILL. stdout and stderr stream to log files under the run directory
(made durable and referenced by path and sha256 before the outcome is
returned); the outcome carries the last 100 lines of stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shlex
import signal
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from engine.exec.executor import Attempt, AttemptOutcome, AttemptRequest, HeartbeatSample
from engine.exec.local.child import Child
from engine.exec.local.guardian_client import GUARDIAN, Guardian
from engine.exec.local.logs import Log
from engine.exec.local.procfs import group_usage, stop_group_leftovers, terminate_group
from engine.redact import redact_value, secret_forms
from engine.workflow.spec import Step
from engine.workflow.template import render_argv, render_shell, render_text, value_text
from ledger.atomic import DIR_MODE, FILE_MODE, fsync_dir, make_private_dir
from ledger.times import rfc3339

__all__ = ["LocalAttempt", "agent_argv", "check_passable"]

_PAGE = os.sysconf("SC_PAGE_SIZE")

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

_MADE: set[str] = set()
"""Directories this process has made (or found) already."""


class LocalAttempt(Attempt):
    """One attempt's steps, one process group at a time, with heartbeats and hang detection.

    ``guardian``: where each step's process group is registered while it runs
    (this process's guardian unless told otherwise).
    """

    def __init__(self, request: AttemptRequest, *, guardian: Guardian = GUARDIAN) -> None:
        self.request = request
        self.guardian = guardian
        self.child: Child | None = None
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
        self.out = Log(logs, f"{self.base}.stdout", secrets)
        self.err = Log(logs, f"{self.base}.stderr", secrets)
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
            child = Child(
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
        self.guardian.register(child.pid)
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
        self.guardian.unregister(child.pid)
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


def agent_argv(command: str) -> list[str]:
    """The agent command line as argv (``claude -p`` -> ["claude", "-p"])."""
    return shlex.split(command)
