"""An attempt of the local executor: its steps as process groups on this machine.

Every step runs in its own process group (a new session), so a timeout, a
hang or a cancel stops the whole tree: SIGTERM to the group, a grace period,
then SIGKILL. stdout and stderr stream to log files under the run directory
(made durable and referenced by path and sha256 before the outcome is
returned); the outcome carries the last 100 lines of stderr. What the steps
mean (their commands, captures, result, which one failed) is
:mod:`engine.exec.program`'s; heartbeats and hang detection are here. With
``agent.output: claude-stream-json`` a ``claude:`` step's stdout is also read as
the agent's events (:mod:`engine.exec.agent_stream`): a heartbeat carries its
activity, published when it changed at most every :data:`AGENT_EVERY` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

from engine.exec.agent_stream import AgentStream
from engine.exec.executor import Attempt, AttemptOutcome, AttemptRequest, HeartbeatSample
from engine.exec.limits import usage_limit_note
from engine.exec.local.child import Child
from engine.exec.local.guardian_client import GUARDIAN, Guardian
from engine.exec.local.logs import Log
from engine.exec.local.procfs import group_usage, stop_group_leftovers, terminate_group
from engine.exec.program import (
    CANCELLED,
    STDERR_LIMIT,
    AgentFlags,
    OutputRedactor,
    StepResult,
    ValueFiles,
    check_passable,
    output_secrets,
    start_failure_note,
    step_command,
    step_cwd,
    step_limit,
)
from engine.exec.sequence import StepSequence
from engine.exec.write_file import perform as write_file
from engine.store.logs import LOGS_DIR, attempt_base, log_name
from engine.workflow.spec import Step
from ledger.atomic import DIR_MODE, fsync_dir, make_private_dir
from ledger.events import AgentActivity, LogRef
from ledger.times import rfc3339

__all__ = ["LocalAttempt"]

_MADE: set[str] = set()
"""Directories this process has made (or found) already."""

AGENT_EVERY = 1.0
"""Seconds at least between two heartbeats published because the agent's activity changed."""


def _redactor(secrets: tuple[bytes, ...]) -> OutputRedactor | None:
    """A redactor of its own for each stream (it keeps back what may be the start of a secret)."""
    return OutputRedactor(secrets) if secrets else None


class _AgentSink:
    """A ``claude:`` step's stdout: its log, and the agent's stream of events read as it
    comes (``agent.output: claude-stream-json``); ``changed`` called when events arrived."""

    def __init__(self, log: Log, stream: AgentStream, changed: Callable[[], None]) -> None:
        self.log = log
        self.stream = stream
        self.changed = changed

    def write(self, data: bytes) -> None:
        self.log.write(data)
        if self.stream.feed(data):
            self.changed()


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
        self._backoff: asyncio.Future[None] | None = None
        """Done when a retry's wait is cut short (a cancel); set while one waits."""
        self.on_usage_limit: Callable[[float], None] | None = None
        """Told when a step waits for a usage limit to reset (when, epoch seconds)."""
        self._ended = False
        self._waiter: asyncio.Future[None] | None = None
        self.base = attempt_base(request.item_id, request.attempt, request.phase)
        run_dir = str(request.run_dir)
        self.files = ValueFiles(f"{run_dir}/values", self.base)
        """Values too large for the environment, in files."""
        logs = f"{run_dir}/{LOGS_DIR}"
        if logs not in _MADE:
            make_private_dir(Path(logs))
            _MADE.add(logs)
        secrets = output_secrets(request.redact)
        item, attempt, phase = request.item_id, request.attempt, request.phase
        self.out = Log(logs, log_name(item, attempt, "stdout", phase), _redactor(secrets))
        self.err = Log(logs, log_name(item, attempt, "stderr", phase), _redactor(secrets))
        # Only the attempt touches (creates) this file; it needs no durability.
        hb_dir = f"{run_dir}/heartbeat"
        if hb_dir not in _MADE:
            os.makedirs(hb_dir, mode=DIR_MODE, exist_ok=True)
            _MADE.add(hb_dir)
        self.heartbeat_file = f"{hb_dir}/{self.base}"
        self.started_wall = time.time()
        self.touched: float | None = None
        self.stream = (
            AgentStream(request.redact) if request.agent_output == "claude-stream-json" else None
        )
        """The agent's events so far, read from its ``claude:`` steps' stdout."""
        self._agent_sent = -AGENT_EVERY
        self._agent_timer: asyncio.TimerHandle | None = None
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

    def cancel(self, *, force: bool = False) -> Coroutine[Any, Any, None]:
        """Stop the attempt. Cancelled from this call on, not from when it is awaited:
        a step whose process has not started by then never starts it."""
        self.cancelled = True
        if self._backoff is not None and not self._backoff.done():
            self._backoff.set_result(None)  # a retry's wait ends at once
        return self._stop(force)

    async def _stop(self, force: bool) -> None:
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
                and self._backoff is None  # waiting to retry is not hanging
                and now - self.last_activity > request.hung_after
            ):
                self.hung = True
                exited = self.child.exited if self.child is not None else None
                await terminate_group(self.pgid, exited, request.kill_grace)
                continue
            if now >= next_beat:
                next_beat = now + interval
                self._publish(self._sample())
            await asyncio.sleep(max(0.01, min(check, next_beat - time.monotonic())))

    def _sample(self) -> HeartbeatSample:
        rss, cpu, _ = group_usage(self.pgid) if self.pgid is not None else (None, None, 0)
        touched = self._touched_at()
        return HeartbeatSample(
            pid=self.child.pid if self.child else None,
            rss=rss,
            cpu=cpu,
            output_bytes=self.out.size + self.err.size,
            touched_at=rfc3339(touched) if touched else None,
            agent=self._agent(),
        )

    def _agent(self) -> AgentActivity | None:
        """The agent's activity for a heartbeat (None: not read as a stream)."""
        if self.stream is None:
            return None
        self._agent_sent = time.monotonic()
        return self.stream.taken()

    def _agent_changed(self) -> None:
        """The agent printed events: a heartbeat says so, at most every AGENT_EVERY."""
        if self._agent_timer is not None or self._ended:
            return
        wait = self._agent_sent + AGENT_EVERY - time.monotonic()
        if wait <= 0:
            self._publish_agent()
        else:
            self._agent_timer = asyncio.get_running_loop().call_later(wait, self._publish_agent)

    def _publish_agent(self) -> None:
        self._agent_timer = None
        if not self._ended and self.stream is not None and self.stream.changed:
            self._publish(self._sample())

    # --- running -----------------------------------------------------------------

    def _active(self) -> None:
        self.last_activity = time.monotonic()

    async def _run(self) -> AttemptOutcome:
        request = self.request
        steps = StepSequence(
            request.steps,
            request.context,
            tails=self._tails,
            cwd=request.cwd,
            worktree=request.worktree,
            rules=request.classify,
            agent_output=request.agent_output,
            resume_session=request.resume_session,
            max_budget_usd=request.max_budget_usd,
            max_item_cost_usd=request.max_item_cost_usd,
            phase=request.phase,
        )
        deadline = None if request.timeout is None else self.started + request.timeout
        try:
            while (planned := steps.next(cancelled=self.cancelled)) is not None:
                step, timed = planned
                limit = deadline if timed else None
                result = await self._wait_backoff(steps.backoff(), limit, steps.waiting_until)
                if result is None and (result := steps.refused()) is not None:
                    self.err.write(f"engine: {result.error}\n".encode())
                if result is None:
                    result = await self._step(step, steps.context, limit, steps.agent_flags())
                expired = limit is not None and time.monotonic() >= limit
                steps.record(result, stopped=self.cancelled or self.hung, expired=expired)
        finally:
            stdout_ref, stderr_ref = self._end()
        lost = self.out.error or self.err.error
        if lost is not None:  # the logs are not what the command printed: not a success
            self.err.note(f"\nengine: cannot write the attempt's log: {lost}\n")
        stderr_tail, stdout_tail = self._tails()
        return steps.outcome(
            duration=time.monotonic() - self.started,
            cancelled=self.cancelled,
            hung=self.hung,
            logs_lost=lost is not None,
            stderr_tail=stderr_tail,
            stdout_tail=stdout_tail,
            stdout=stdout_ref,
            stderr=stderr_ref,
            redact=request.redact,
            pgid=self.pgid,
        )

    async def _wait_backoff(
        self, delay: float, deadline: float | None, resets: float | None = None
    ) -> StepResult | None:
        """Wait a retry's ``delay`` (or till a usage limit ``resets``: said in the log and
        to :attr:`on_usage_limit`) on the event loop, heartbeats going on; None once it
        has passed, else what ended the wait: a cancel, or the attempt's deadline."""
        if resets is not None and not self.cancelled:
            self.err.write(f"engine: {usage_limit_note('the step', resets)}\n".encode())
            if self.on_usage_limit is not None:
                self.on_usage_limit(resets)
        if delay <= 0 or self.cancelled:
            return None
        if deadline is not None:
            delay = min(delay, max(0.0, deadline - time.monotonic()))
        cut = self._backoff = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait([cut], timeout=delay)
        finally:
            self._backoff = None
            self.last_activity = time.monotonic()
        if cut.done():  # cancelled meanwhile
            return CANCELLED
        if deadline is not None and time.monotonic() >= deadline:
            return self._expired()
        return None

    def _expired(self) -> StepResult:
        """A step whose attempt's deadline passed before it could start: a timeout."""
        self.err.write(b"engine: the attempt's timeout passed before the step could start\n")
        return StepResult(timed_out=True)

    def _tails(self) -> tuple[str, str]:
        """What stderr and stdout end with now (what a failure's message is read from)."""
        return self.err.tail_text(), self.out.tail_text(20)

    def _end(self) -> tuple[LogRef | None, LogRef | None]:
        """Stop watching, make the logs durable, remove the value files; the logs' references."""
        if self._stop_watch is not None:
            self._stop_watch.set()
        self._beat_timer.cancel()
        if self._agent_timer is not None:
            self._agent_timer.cancel()
        if self.beat_task is not None:
            self.beat_task.cancel()
        stdout_ref = self.out.finish()
        stderr_ref = self.err.finish()
        if stdout_ref is not None or stderr_ref is not None:
            try:
                fsync_dir(self.request.run_dir / LOGS_DIR)
            except OSError as exc:
                self.err.error = self.err.error or exc
        self._publish(None)
        self.files.remove()
        return stdout_ref, stderr_ref

    async def _step(
        self, step: Step, context: dict[str, Any], deadline: float | None, flags: AgentFlags
    ) -> StepResult:
        """Run one step; what happened to it."""
        request = self.request
        if step.write_file is not None:  # written by the engine: no process
            return await self._write_file(step, context)
        try:
            argv, env = step_command(
                step,
                context,
                env=request.env,
                agent_command=request.agent_command,
                heartbeat_file=self.heartbeat_file,
                files=self.files,
                agent_flags=flags,
            )
            check_passable(argv, env)
        except ValueError as exc:  # a template error, or a value no process can be given
            return self._not_started(str(exc))
        cwd = step_cwd(step, request.cwd)
        limit = step_limit(step, deadline, time.monotonic())
        out_start, err_start = self.out.size, self.err.size
        if self.cancelled:  # cancelled before its process started: it never starts
            return CANCELLED
        if deadline is not None and time.monotonic() >= deadline:
            return self._expired()  # a re-run after the handlers, past the deadline
        stream = self.stream if step.kind == "claude" else None
        out = self.out if stream is None else _AgentSink(self.out, stream, self._agent_changed)
        try:
            child = Child(
                argv,
                base_env=request.base_env,
                env=env,
                cwd=cwd,
                sinks=(out, self.err),
                on_output=self._active,
            )
        except OSError as exc:
            self.err.write(start_failure_note(argv[0], cwd, exc))
            return StepResult.cannot_start(argv[0])
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
        await self._drain(child)
        if stream is not None and stream.end():
            self._agent_changed()
        self.out.flush()
        self.err.flush()
        stdout = self.out.read_from(out_start)
        stderr = self.err.read_from(max(err_start, self.err.size - STDERR_LIMIT))
        if not request.allow_background:
            await self._stop_leftovers(child.pid)
            self.err.flush()
        self.guardian.unregister(child.pid)
        return StepResult.exited(
            child.returncode, timed_out=timed_out, stdout=stdout, stderr=stderr
        )

    async def _write_file(self, step: Step, context: dict[str, Any]) -> StepResult:
        """A ``write_file`` step (beside the loop: it fsyncs), unless the attempt is
        cancelled; a failure said in its log."""
        if self.cancelled:
            return CANCELLED
        request = self.request
        root = request.worktree or request.cwd
        result = await asyncio.to_thread(write_file, step, context, cwd=request.cwd, root=root)
        if result.error is not None:
            self.err.write(f"engine: {result.error}\n".encode())
        return result

    def _not_started(self, message: str) -> StepResult:
        """A step that could not be started: a ``validation_failed`` failure, said in its log."""
        self.err.write(f"engine: {message}\n".encode())
        return StepResult.not_started(message)

    async def _drain(self, child: Child) -> None:
        """The rest of the output, once the leader has exited: children that outlive it
        must not keep the pipes open."""
        if child.drained.done():
            return
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

    async def _stop_leftovers(self, pgid: int) -> None:
        """Stop what the step left running in its process group, said in its log."""
        stopped = await stop_group_leftovers(pgid, self.request.kill_grace)
        if stopped:
            plural = "es" if stopped > 1 else ""
            note = (
                f"engine: stopped {stopped} process{plural} the step left running in the "
                "background (map.allow_background: true keeps them)\n"
            )
            self.err.write(note.encode())
