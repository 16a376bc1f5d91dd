"""A run from start to end: create, setup, enqueue, map, reduce, finish.

The run directory holds the ledger, the lock, a frozen copy of the workflow
(``workflow.yml``), attempt logs and ``results.json``. Every step of the run
is recorded in the ledger before and after it happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import getpass
import os
import secrets as _secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from engine import engine_version
from engine.errors import IncompleteMap, ItemsError, ResumeRefused, StoreMissing
from engine.exec.executor import Attempt, AttemptOutcome, AttemptRequest, Executor
from engine.exec.local import orphans
from engine.exec.local.attempt import LocalExecutor, agent_argv, process_command, run_processes
from engine.home import check_run_id
from engine.items.selection import LoadCancelled, LoadStop, load_items
from engine.map.scheduler import MapScheduler, abandon_events
from engine.redact import Redactor, secret_values
from engine.run.loading import in_thread, stoppable
from engine.store.cache import ItemHooks
from engine.store.content import INLINE_LIMIT, ContentStore
from engine.store.workspace import Snapshot, compare, save_snapshot, take_snapshot
from engine.workflow.load import LoadedWorkflow, describe_changes, load_workflow
from engine.workflow.spec import Step
from ledger.atomic import atomic_write, make_private_dir
from ledger.errors import EngineError
from ledger.events import (
    Event,
    ItemDuplicate,
    ItemEnqueued,
    ItemRequeued,
    ItemSkipped,
    ItemSucceeded,
    LeftoverProcess,
    MapEnqueued,
    RunAborted,
    RunCancelRequested,
    RunCompleted,
    RunCreated,
    RunFailed,
    RunLeftovers,
    RunPaused,
    RunResumed,
    RunStarted,
    RunUnpaused,
    StepFailed,
    StepStarted,
    StepSucceeded,
)
from ledger.reader import LedgerReader
from ledger.writer import LedgerWriter
from projections.replay import Projections, replay

__all__ = ["ResumeRefused", "RunOptions", "RunResult", "execute_run", "new_run_id", "resume_run"]

ENQUEUE_BATCH = 1000
CAPTURE_INLINE_LIMIT = 64 * 1024
RESULTS_INLINE_LIMIT = 64 * 1024


@dataclass
class RunOptions:
    run_id: str | None = None
    max_parallel: int | None = None
    variables: dict[str, str] = field(default_factory=dict)
    executor: Executor | None = None
    command: str = ""
    """The command line to record (redacted here); ``argv`` wins when given."""
    argv: list[str] | None = None
    """The command line as its words: each is redacted before they are joined."""
    on_change: Callable[[Projections], None] = lambda _p: None
    include_dlq: bool = False
    """Resume: dead items run again too (after everything else)."""
    requeue: list[str] | None = None
    """Resume for ``engine dlq retry``: these dead items run again."""
    allow_changed: bool = False
    """Resume with a workflow whose file differs from the run's frozen copy."""
    no_cache: bool = False
    refresh_cache: bool = False
    warn: Callable[[str], None] = lambda _message: None
    """Where warnings go (a resume in a workspace that changed)."""
    adopt_orphans: bool = False
    """Adopt the orphans of the run's processes (:mod:`engine.exec.local.orphans`), so that one that
    left its session and cleared its environment is still stopped at the run's end. For
    the engine's own process (the CLI): a library caller's other children are not ours."""

    def cache_mode(self, recorded: str = "use") -> str:
        """``off`` with --no-cache, ``refresh`` with --refresh-cache, else ``recorded``."""
        if self.no_cache:
            return "off"
        if self.refresh_cache:
            return "refresh"
        return recorded


@dataclass
class RunResult:
    run_id: str
    run_dir: Path
    status: str
    """completed, failed, or interrupted."""
    exit_code: int
    projections: Projections
    reason: str | None = None
    output: list[str] = field(default_factory=list)
    """What the reduce steps printed (stdout), for the user to see."""


def new_run_id(name: str) -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    slug = "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "-" for c in name)
    slug = slug[:40].strip("-_") or "run"
    return f"{slug}-{stamp}-{_secrets.token_hex(2)}"


class _Run:
    def __init__(
        self, loaded: LoadedWorkflow, run_dir: Path, run_id: str, options: RunOptions
    ) -> None:
        self.loaded = loaded
        self.spec = loaded.spec
        self.options = options
        self.run_id = run_id
        # Absolute, symlinks resolved: it is exported to every command
        # (ENGINE_RUN_DIR, heartbeat files) and matched against what a dead
        # engine's leftovers carry, whatever the working directory or the
        # spelling of --home.
        self.run_dir = run_dir.resolve()
        self.executor = options.executor or LocalExecutor()
        self.local = LocalExecutor()
        circuit = self.spec.circuit_breaker
        self.p = Projections(circuit_on=circuit.on if circuit else ())
        self.env: dict[str, str] = {**self.spec.env, **options.variables}
        self.secret_values = secret_values(self.spec.secrets, options.variables)
        self.redactor = Redactor(self.secret_values)
        # What is recorded never holds a secret, even one given with --var: each
        # word is redacted before the line is joined (quoting would hide it after).
        if options.argv is not None:
            options.command = self.redactor.command(options.argv)
        else:
            options.command = self.redactor.command_line(options.command)
        self.context: dict[str, Any] = {"env": self.env, "run": {"id": self.run_id}}
        self.writer: LedgerWriter | None = None
        self.output: list[str] = []
        self._base_env: dict[str, str] | None = None
        self.agent_command = agent_argv(self.spec.agent.command)
        self.store = ContentStore(self.run_dir.parent.parent)
        self.began = time.time()
        """When this engine took up the run (before it took the lock)."""
        self.current_step: Attempt | None = None
        """The setup or reduce step running now (a signal or a cancel stops it)."""
        self.loading: LoadStop | None = None
        """The map's items being loaded now (a signal or a cancel stops that too)."""
        self.stopping = False
        """A signal or a cancel has stopped the run: a step started now is stopped at once."""

    # --- plumbing ----------------------------------------------------------------------

    async def append(self, events: list[Event]) -> None:
        assert self.writer is not None
        if any(isinstance(e, RunCompleted) for e in events) and (unfinished := _unfinished(self.p)):
            raise IncompleteMap(unfinished)  # the one rule: never completed with work left
        records = await self.writer.append_async(events)
        self.p.apply_all(records)
        self.options.on_change(self.p)

    def process_env(self) -> dict[str, str]:
        """The environment every command of the run shares (one object: do not change it)."""
        if self._base_env is None:
            env = dict(os.environ)
            # Commands can call `engine` (e.g. `engine mock-agent`) from this installation.
            bin_dir = str(Path(sys.executable).parent)
            path = env.get("PATH", "")
            if bin_dir not in path.split(os.pathsep):
                env["PATH"] = bin_dir + (os.pathsep + path if path else "")
            env.update(self.env)
            env["ENGINE_RUN_ID"] = self.run_id
            env["ENGINE_RUN_DIR"] = str(self.run_dir)
            self._base_env = env
        return self._base_env

    def request(
        self, item: str, attempt: int, key: str, value: Any, *, steps: list[Step] | None = None
    ) -> AttemptRequest:
        spec = self.spec
        assert spec.map is not None or steps is not None
        env = {
            "ENGINE_ITEM_ID": item,
            "ENGINE_ATTEMPT": str(attempt),
            "ENGINE_IDEMPOTENCY_KEY": key,
        }
        context = dict(self.context)
        if steps is None:
            assert spec.map is not None
            state = self.p.items.items.get(item)
            index = state.index if state is not None else 0
            context.update(
                item=value,
                item_id=item,
                item_index=index,
                item_total=len(self.p.items.items),
                attempt=attempt,
            )
        return AttemptRequest(
            run_id=self.run_id,
            item_id=item,
            attempt=attempt,
            idempotency_key=key,
            steps=steps if steps is not None else spec.map.agent_template,  # type: ignore[union-attr]
            context=context,
            env=env,
            base_env=self.process_env(),
            cwd=self.loaded.directory,
            run_dir=self.run_dir,
            timeout=spec.map.timeout if (steps is None and spec.map) else None,
            heartbeat_interval=spec.map.heartbeat.interval if spec.map else 10.0,
            hung_after=spec.map.heartbeat.hung_after if (steps is None and spec.map) else None,
            agent_command=self.agent_command,
            redact=list(self.secret_values),
            allow_background=spec.map.allow_background if spec.map else False,
        )

    # --- phases -----------------------------------------------------------------------------

    async def steps(self, phase: str, steps: list[Step]) -> str | None:
        """Run setup or reduce steps in order; the failure reason, if one failed."""
        for index, step in enumerate(steps):
            if phase == "setup" and (phase, index) in self.p.run.steps_done:
                continue  # done before this resume; its capture is restored
            await self.append(
                [StepStarted(phase=phase, index=index, name=step.name or "", command=step.text)]
            )
            request = self.request(f"{phase}-{index}", 1, "", None, steps=[step])
            attempt = await self.local.start(request)
            self.current_step = attempt
            if self.stopping:  # stopped while the step was being recorded or started
                await attempt.cancel()
            try:
                outcome = await attempt.wait()
            except Exception as exc:  # an error in the engine fails the step, typed
                self.options.warn(f"engine: error while running {phase} step {index + 1}: {exc}")
                outcome = AttemptOutcome(
                    ok=False,
                    duration=0.0,
                    error_type="unknown",
                    error=f"engine error: {type(exc).__name__}: {exc}"[:4096],
                )
            finally:
                self.current_step = None
            if not outcome.ok:
                reason = (outcome.stderr_tail.strip().splitlines() or [""])[-1]
                if outcome.interrupted:
                    kind = "interrupted"
                    reason = "stopped (the engine was interrupted or the run cancelled)"
                elif outcome.timed_out:
                    kind = "timeout"
                    reason = f"timed out after {step.timeout}s"
                elif outcome.error_type is not None:
                    kind, reason = outcome.error_type, outcome.error or outcome.error_type
                else:
                    kind = "command_failed"
                    reason = reason or f"exited with code {outcome.exit_code}"
                await self.append(
                    [
                        StepFailed(
                            phase=phase,
                            index=index,
                            error_type=kind,
                            message=reason,
                            duration=round(outcome.duration, 6),
                            exit_code=outcome.exit_code,
                            signal=outcome.signal,
                            stderr_tail=outcome.stderr_tail[-8192:],
                            stdout=outcome.stdout,
                            stderr=outcome.stderr,
                        )
                    ]
                )
                return f"{phase} step {index + 1} ({step.name or step.text[:60]}) failed: {reason}"
            self.context.update(outcome.captures)
            if phase == "reduce" and outcome.stdout is not None:
                text = (self.run_dir / outcome.stdout.path).read_text(errors="replace")
                self.output.append(text.rstrip("\n"))
            await self.append(
                [
                    StepSucceeded(
                        phase=phase,
                        index=index,
                        duration=round(outcome.duration, 6),
                        captured=step.capture_output,
                        captured_value=self.recordable(outcome.captures.get(step.capture_output))
                        if step.capture_output
                        else None,
                        stdout=outcome.stdout,
                        stderr=outcome.stderr,
                    )
                ]
            )
        return None

    def recordable(self, value: Any) -> Any:
        """A captured value as the ledger keeps it: inline, or in the store when large."""
        encoded = msgspec.json.encode(value)
        if len(encoded) <= CAPTURE_INLINE_LIMIT:
            return value
        return {"$blob": self.store.put_bytes(encoded)}

    def restore_captures(self) -> None:
        """Setup captures recorded before a resume, back in the variables."""
        for name, recorded in self.p.run.captures.items():
            value = recorded
            if isinstance(recorded, dict) and set(recorded) == {"$blob"}:
                value = msgspec.json.decode(self.store.get_bytes(recorded["$blob"]))
            self.context[name] = value

    def enqueued_values(self) -> dict[str, Any]:
        """Every enqueued item's value, read back from the ledger."""
        assert self.writer is not None
        values: dict[str, Any] = {}
        for record in LedgerReader(self.writer.path).records():
            data = record.data
            if isinstance(data, ItemEnqueued) and data.item not in values:
                values[data.item] = self.stored(data.value, data.value_ref)
        return values

    def stored(self, inline: Any, ref: str | None) -> Any:
        """A recorded value: inline, or (``ref``) read back from the content store."""
        if ref is None:
            return inline
        try:
            return self.store.get_json(ref)
        except (OSError, ValueError, msgspec.DecodeError) as exc:
            raise StoreMissing(
                f"{self.store.path(ref)}: the stored value {ref} the ledger references "
                f"cannot be read ({exc})",
                ref=ref,
                path=str(self.store.path(ref)),
                hint="restore the home's store/ directory from a backup of this run",
            ) from None

    def enqueue_event(self, item: str, index: int, value: Any) -> ItemEnqueued:
        """``item.enqueued``, its value in the content store when too large for the record."""
        try:
            inline, ref = self.store.inline_or_ref(value)
        except (UnicodeEncodeError, TypeError, ValueError) as exc:
            raise ItemsError(
                f"item {item!r} (index {index}): its value cannot be recorded as JSON ({exc})",
                hint="fix the item source: text must be valid Unicode (no lone surrogates)",
            ) from None
        return ItemEnqueued(item=item, index=index, value=inline, value_ref=ref)

    async def enqueue(self) -> dict[str, Any] | None:
        """The map's items, enqueued once: a resume finishes an enqueue a crash cut short.

        None when a signal or a cancel stopped the loading (nothing enqueued).
        """
        spec = self.spec.map
        assert spec is not None
        known = self.enqueued_values() if self.p.items.items else {}
        if self.p.run.map_enqueued:
            return known
        stop = self.loading = LoadStop()
        directory, env, context = self.loaded.directory, self.process_env(), dict(self.context)
        try:
            loaded = await stoppable(
                lambda: load_items(spec, directory, env, context, stop=stop), stop
            )
        except LoadCancelled:
            return None
        finally:
            self.loading = None
        # Ids and values as the ledger will hold them: what the items are from now on.
        loaded = self.redactor.items(loaded)
        values = {w.id: w.value for w in loaded.items}
        batch: list[Event] = [
            self.enqueue_event(w.id, w.index, w.value) for w in loaded.items if w.id not in known
        ]
        if not self.p.items.duplicates:
            batch += [
                ItemDuplicate(item=w.id, index=w.index, first_index=first)
                for w, first in loaded.duplicates
            ]
        batch.append(MapEnqueued(total=len(loaded.items), duplicates=len(loaded.duplicates)))
        for start in range(0, len(batch), ENQUEUE_BATCH):
            await self.append(batch[start : start + ENQUEUE_BATCH])
        return {**values, **known}

    def results(self) -> dict[str, Any]:
        """Each item's result, read back from the ledger (the one source of truth)."""
        assert self.writer is not None
        out: dict[str, Any] = {}
        for record in LedgerReader(self.writer.path).records():
            data = record.data
            if isinstance(data, ItemSucceeded | ItemSkipped):
                out[data.item] = self.stored(data.result, data.result_ref)
        return out

    def map_context(self) -> dict[str, Any]:
        counts = self.p.items.counts
        total = len(self.p.items.items)
        successful = counts["succeeded"] + counts["skipped"]
        failed = counts["failed"] + counts["dead"]
        path = self.run_dir / "results.json"
        encoded = msgspec.json.encode(self.results())
        atomic_write(path, encoded + b"\n")
        return {
            "total": total,
            "successful": successful,
            "failed": failed,
            "success_rate": round(successful / total, 4) if total else 0.0,
            "results_file": str(path),
            "results": encoded.decode() if len(encoded) <= RESULTS_INLINE_LIMIT else str(path),
        }

    async def end_leftovers(self) -> None:
        """Processes of the run that outlived their steps, as the run ends: stopped, and said.

        A step's own process group is stopped when the step ends; what is
        found here left it (``setsid``) or was kept (``map.allow_background``,
        then it is reported and left running). One line on stderr, and a
        ``run.leftovers`` record.
        """
        keep = self.spec.map.allow_background if self.spec.map else False
        found = await asyncio.to_thread(run_processes, self.run_id, self.run_dir)
        if not found:
            return
        processes = [
            LeftoverProcess(
                pid=pid,
                pgid=pgid,
                item=item,
                command=self.redactor.text(process_command(pid))[:300],
            )
            for pid, (pgid, item) in sorted(found.items())
        ]
        if not keep:
            await self.local.reclaim(self.run_id, self.run_dir)
            orphans.reap()
        shown = ", ".join(
            f"pid {p.pid} ({p.item + ': ' if p.item else ''}{p.command[:60]})"
            for p in processes[:3]
        )
        more = f" and {len(processes) - 3} more" if len(processes) > 3 else ""
        what = "left running (map.allow_background)" if keep else "stopped"
        self.options.warn(
            f"engine: {len(processes)} process{'es' if len(processes) > 1 else ''} of run "
            f"{self.run_id} outlived {'their steps' if len(processes) > 1 else 'its step'}, "
            f"{what}: {shown}{more}"
        )
        await self.append([RunLeftovers(processes=processes[:100], stopped=not keep)])

    async def finish_failed(self, reason: str) -> RunResult:
        await self.end_leftovers()
        await self.append([RunFailed(reason=reason)])
        return RunResult(self.run_id, self.run_dir, "failed", 1, self.p, reason)

    async def finish_engine_error(self, error: BaseException) -> RunResult:
        """An error in the engine stopped the run: failed (resumable), never completed.

        When even ``run.failed`` cannot be recorded (the writer stopped), the
        error goes up as it is; the run is then interrupted, and resumable.
        """
        reason = f"engine error: {type(error).__name__}: {error}"
        if isinstance(error, IncompleteMap):
            self.options.warn(f"engine: {reason}")  # said nowhere else
        else:
            reason += f"; resume the run to finish it: engine resume {self.run_id}"
        try:
            return await self.finish_failed(reason[:4096])
        except Exception:
            raise error from None

    def finish_interrupted(self) -> RunResult:
        """Stopped by a signal: nothing more is recorded; the run is resumable."""
        return RunResult(self.run_id, self.run_dir, "interrupted", 130, self.p, "interrupted")


def _unfinished(p: Projections) -> dict[str, list[str]]:
    """Items still running or pending, by status: a run with any is not complete."""
    counts = p.items.counts
    if not (counts["running"] or counts["pending"]):
        return {}
    out: dict[str, list[str]] = {}
    for state in p.items.items.values():
        if state.status in ("running", "pending"):
            out.setdefault(state.status, []).append(state.item)
    return out


class _Control:
    """``engine pause|unpause|cancel`` from another terminal, seen by the running engine.

    Those commands write ``control/control.json`` in the run directory
    (atomically; a directory of its own, so that the watch never wakes for
    the ledger's appends):
    the state the user wants (``paused``, ``cancel``). The engine watches the
    file (inotify, through watchfiles), records each change in the ledger
    (only the lock holder writes it), and acts on it: no new dispatches while
    paused; on cancel, no new dispatches, running attempts terminated (at
    once with ``force``), and ``run.aborted``.
    """

    FILE = "control/control.json"

    def __init__(self, run: _Run, stop: _Stop) -> None:
        self.run = run
        self.stop_ = stop
        self.path = run.run_dir / self.FILE
        self._thread: threading.Thread | None = None
        self._stop_event = threading.Event()
        self._tasks: set[asyncio.Future[None]] = set()
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        make_private_dir(self.path.parent)
        loop = asyncio.get_running_loop()
        # A thread of its own, stopped and joined when the run ends: nothing
        # lingers after it (a later fork must find the process single-threaded).
        self._thread = threading.Thread(
            target=self._watch, args=(loop,), name="engine-control", daemon=True
        )
        self._thread.start()
        # A request made while this engine was starting (after it took the lock)
        # is acted on now; one left for an engine that is gone is not.
        await self.apply()

    async def stop(self) -> None:
        self._stop_event.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5.0)
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def cancelled(self) -> bool:
        return self.run.p.run.cancel_requested

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        import watchfiles  # noqa: PLC0415 - imported when a run starts, not by every command

        target = str(self.path)

        def only_control(_change: object, path: str) -> bool:
            return path == target

        def schedule() -> None:
            task = asyncio.ensure_future(self.apply())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        for _changes in watchfiles.watch(
            self.path.parent,
            watch_filter=only_control,
            stop_event=self._stop_event,
            debounce=50,
            step=50,  # the watcher checks for the stop every step: not too often
            recursive=False,
            raise_interrupt=False,
        ):
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(schedule)

    async def apply(self) -> None:
        """Record and act on what ``control.json`` asks, where it differs from the ledger."""
        async with self._lock:
            try:
                wanted = msgspec.json.decode(self.path.read_bytes())
            except (OSError, msgspec.DecodeError):
                return
            if not isinstance(wanted, dict):
                return
            at = wanted.get("at")
            if not isinstance(at, int | float) or at < self.run.began:
                return  # asked of an earlier engine
            by = str(wanted.get("by", ""))[:200]
            state = self.run.p.run
            scheduler = self.stop_.scheduler
            paused = bool(wanted.get("paused", False))
            if paused != state.paused and not state.cancel_requested:
                await self.run.append([RunPaused(by=by) if paused else RunUnpaused(by=by)])
                if scheduler is not None:
                    scheduler.wake.set()
            cancel = wanted.get("cancel")
            if cancel in ("graceful", "force") and not state.cancel_requested:
                force = cancel == "force"
                await self.run.append([RunCancelRequested(by=by, force=force)])
                self.stop_.halt(self.run, "cancelled", force=force)

    async def finish_cancelled(self) -> RunResult:
        run = self.run
        by = run.p.run.cancel_by or "engine cancel"
        await run.end_leftovers()
        await run.append([RunAborted(reason=f"cancelled by {by}")])
        return RunResult(run.run_id, run.run_dir, "aborted", 130, run.p, f"cancelled by {by}")


@dataclass
class _Stop:
    """What a SIGINT or SIGTERM handler needs to reach."""

    signal: int | None = None
    scheduler: MapScheduler | None = None
    tasks: set[asyncio.Future[None]] = field(default_factory=set)

    def interrupted(self) -> bool:
        return self.signal is not None

    def halt(self, run: _Run, reason: str, *, force: bool = False) -> None:
        """Stop what runs now, in whatever phase: the map, the current step, the loading."""
        run.stopping = True
        if self.scheduler is not None:
            self.scheduler.stop(reason)
            self.tasks.add(asyncio.ensure_future(self.scheduler.cancel_running(force=force)))
        if run.current_step is not None:
            self.tasks.add(asyncio.ensure_future(run.current_step.cancel(force=force)))
        if run.loading is not None:
            run.loading.cancel()


async def execute_run(loaded: LoadedWorkflow, home: Path, options: RunOptions) -> RunResult:
    """Run a workflow to the end (or until interrupted).

    A run id that exists already is resumed (``engine run`` on it is
    ``engine resume``).
    """
    run_id = check_run_id(options.run_id) if options.run_id else new_run_id(loaded.spec.name)
    run_dir = home / "runs" / run_id
    if (run_dir / "ledger.ndjson").exists():
        return await resume_run(run_dir, options, workflow=loaded)
    return await _create(loaded, run_dir, run_id, options, create=True)


async def _create(
    loaded: LoadedWorkflow, run_dir: Path, run_id: str, options: RunOptions, *, create: bool
) -> RunResult:
    """Create the run (``create=False``: its ledger exists, without ``run.created``)."""
    run = _Run(loaded, run_dir, run_id, options)
    spec = loaded.spec
    home = run_dir.parent.parent
    run.writer = LedgerWriter.open(
        run.run_dir,
        run.run_id,
        create=create,
        command=options.command,
        redact=run.redactor.recorded if run.redactor else None,  # none: nothing to check
    )
    if create:
        run.p.apply_all(run.writer.opening)
    else:
        try:
            replay(run_dir / "ledger.ndjson", into=run.p)
        except BaseException:
            run.writer.close()
            raise
    run.p.enable_scheduling()
    atomic_write(run.run_dir / "workflow.yml", loaded.text.encode())
    snapshot = await in_thread(lambda: take_snapshot(loaded.directory, home=home))
    snapshot.files = run.redactor.keys(snapshot.files)
    save_snapshot(snapshot, run.run_dir / "snapshot.json")
    # A workflow too large to copy into run.created is kept in the store.
    large = len(loaded.text) * 4 > INLINE_LIMIT and len(loaded.text.encode()) > INLINE_LIMIT
    # Stored as recorded inline would be: redacted.
    workflow_ref = run.store.put_bytes(run.redactor.text(loaded.text).encode()) if large else None
    opening: list[Event] = [
        RunCreated(
            snapshot_id=snapshot.id,
            workflow_name=spec.name,
            workflow_path=str(loaded.path),
            workflow_hash=loaded.hash,
            workflow="" if large else loaded.text,
            workflow_ref=workflow_ref,
            vars={k: "***" if k in spec.secrets else v for k, v in options.variables.items()},
            engine_version=engine_version(),
            user=getpass.getuser(),
            host=socket.gethostname(),
        ),
        RunStarted(
            pid=os.getpid(),
            host=socket.gethostname(),
            max_parallel=options.max_parallel or (spec.map.max_parallel if spec.map else None),
            executor=run.executor.name,
            cache=options.cache_mode(),
        ),
    ]
    return await _drive(run, opening)


def _frozen_workflow(run_dir: Path, p: Projections) -> LoadedWorkflow:
    """The workflow a run was created with, loaded as if from its original place."""
    path = Path(p.run.workflow_path or run_dir / "workflow.yml")
    try:
        raw = (run_dir / "workflow.yml").read_bytes()
    except OSError as exc:
        raise ResumeRefused(
            f"{run_dir / 'workflow.yml'}: the run's frozen workflow is missing ({exc.strerror})",
            run_id=run_dir.name,
            hint="resume with the workflow file given explicitly: engine run WORKFLOW --run-id ID",
        ) from None
    return load_workflow(path, raw=raw)


async def resume_run(
    run_dir: Path, options: RunOptions, *, workflow: LoadedWorkflow | None = None
) -> RunResult:
    """Continue a run from its ledger: what was pending, interrupted or retrying.

    ``workflow``: the workflow file as given now (by default the file the run
    was created from, if it is still there, else the run's frozen copy); one
    whose bytes differ from the frozen copy is refused without
    ``allow_changed``.
    """
    ledger = run_dir / "ledger.ndjson"
    before = replay(ledger)  # read-only, no lock: only to refuse early
    run_id = before.run.run_id or run_dir.name
    requeue = options.requeue
    dlq_wanted = requeue is not None or (options.include_dlq and bool(before.dlq.dead))
    if before.run.status == "completed" and not dlq_wanted:
        counts = before.items.counts
        dead = len(before.dlq.dead)
        raise ResumeRefused(
            f"run {run_id!r} is completed ({counts['succeeded']} succeeded, {dead} in the "
            "dead-letter queue): there is nothing to resume",
            run_id=run_id,
            hint=(
                f"retry its dead items with: engine resume {run_id} --include-dlq "
                f"(or engine dlq retry {run_id} ITEM...); "
                if dead
                else ""
            )
            + "or start the workflow afresh: engine run WORKFLOW",
        )
    if before.run.created_at is None:
        # Stopped between taking the lock and recording run.created: create it now.
        if workflow is None:
            # Its frozen copy does not say where the workflow (and its workspace) is.
            raise ResumeRefused(
                f"run {run_id!r} was stopped before it was created: nothing to resume",
                run_id=run_id,
                hint=f"start it again: engine run WORKFLOW --run-id {run_id}",
            )
        return await _create(workflow, run_dir, run_id, options, create=False)
    frozen = _frozen_workflow(run_dir, before)
    if workflow is None:
        workflow = frozen
        if frozen.path.is_file():
            workflow = load_workflow(frozen.path)
    changes: list[str] = []
    if workflow.hash != (before.run.workflow_hash or frozen.hash):
        changes = describe_changes(frozen.spec, workflow.spec) or [
            "the file's text changed (comments or layout; no setting did)"
        ]
        if not options.allow_changed:
            shown = "; ".join(changes[:5]) + ("; ..." if len(changes) > 5 else "")
            raise ResumeRefused(
                f"{workflow.path}: the workflow changed since run {run_id!r} started: {shown}",
                run_id=run_id,
                hint="undo the change, or resume with --allow-changed to run the changed "
                "workflow (recorded in the ledger)",
            )
    # A secret given with --var was recorded as ***: a resume takes it from the
    # environment (or a new --var), never from the ledger.
    recorded = {
        k: v for k, v in before.run.vars.items() if not (v == "***" and k in workflow.spec.secrets)
    }
    given = dict(options.variables)
    variables = {**recorded, **given}
    options = dataclasses.replace(options, variables=variables)
    run = _Run(workflow, run_dir, run_id, options)
    run.writer = LedgerWriter.open(
        run_dir,
        run_id,
        create=False,
        command=options.command,
        redact=run.redactor.recorded if run.redactor else None,  # none: nothing to check
    )
    try:
        replay(ledger, into=run.p)  # under the lock: what the ledger says now
    except BaseException:
        run.writer.close()
        raise
    run.p.enable_scheduling()
    run.restore_captures()
    spec = workflow.spec
    home = run_dir.parent.parent
    snapshot = await in_thread(lambda: take_snapshot(workflow.directory, home=home))
    snapshot.files = run.redactor.keys(snapshot.files)
    _warn_if_workspace_changed(run, snapshot, options.warn)
    opening: list[Event] = [
        RunResumed(
            pid=os.getpid(),
            host=socket.gethostname(),
            include_dlq=options.include_dlq,
            allow_changed=bool(changes),
            workflow_hash=workflow.hash,
            changes=changes,
            snapshot_id=snapshot.id,
            max_parallel=options.max_parallel or (spec.map.max_parallel if spec.map else None),
            cache=options.cache_mode(run.p.run.cache_mode),
            vars={k: "***" if k in spec.secrets else v for k, v in given.items()},
        )
    ]
    if changes:
        atomic_write(run_dir / "workflow.yml", workflow.text.encode())
    if run.p.run.paused:
        opening.append(RunUnpaused(by="resume"))
    return await _drive(run, opening, resuming=True)


def _warn_if_workspace_changed(run: _Run, snapshot: Snapshot, warn: Callable[[str], None]) -> None:
    """A resume in a workspace that changed since the run started goes on, with a warning."""
    started = run.p.run.snapshot_id
    if started is None or started == snapshot.id:
        return
    try:
        old = msgspec.json.decode((run.run_dir / "snapshot.json").read_bytes())["files"]
    except (OSError, msgspec.DecodeError, KeyError, TypeError):
        old = {}
    changed, added, removed = compare(old, snapshot.files)
    examples = ", ".join((changed + added + removed)[:5])
    warn(
        f"warning: the workspace changed since run {run.run_id} started ({started} -> "
        f"{snapshot.id}: {len(changed)} changed, {len(added)} added, {len(removed)} removed"
        + (f"; e.g. {examples}" if examples else "")
        + "); going on"
    )


def _requeue_events(run: _Run) -> list[Event]:
    """``item.requeued`` for the dead items a resume brings back."""
    options = run.options
    wanted: list[str] = []
    if options.requeue is not None:
        wanted = [item for item in options.requeue if item in run.p.dlq.dead]
    elif options.include_dlq:
        wanted = sorted(run.p.dlq.dead, key=lambda item: run.p.items.items[item].index)
    reason = "dlq retry" if options.requeue is not None else "resume --include-dlq"
    return [ItemRequeued(item=item, reason=reason) for item in wanted]


async def _drive(run: _Run, opening: list[Event], *, resuming: bool = False) -> RunResult:
    """Record ``opening``, then setup, map and reduce, as far as the ledger says is left."""
    assert run.writer is not None
    options = run.options
    spec = run.spec
    loop = asyncio.get_running_loop()
    stop = _Stop()

    def on_signal(signum: int) -> None:
        stop.signal = signum
        stop.halt(run, "interrupted")

    # asyncio resets a removed handler to the default action (SIGTERM would then
    # kill the engine outright): the handlers in place before are put back.
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    for signum in before:
        loop.add_signal_handler(signum, on_signal, signum)
    control = _Control(run, stop)

    async def halted() -> RunResult | None:
        """The result, once a signal or a cancel has stopped the run."""
        if stop.interrupted():
            return run.finish_interrupted()
        if control.cancelled():
            return await control.finish_cancelled()
        return None

    if options.adopt_orphans:
        orphans.adopt(True)
    try:
        await run.append(opening)
        await control.start()
        if resuming:
            await _settle_interrupted(run)
        failure = await run.steps("setup", list(spec.setup))
        if (result := await halted()) is not None:
            return result
        if failure is not None:
            return await run.finish_failed(failure)
        if spec.map is not None:
            try:
                values = await run.enqueue()
            except ItemsError as exc:
                await run.append([RunFailed(reason=str(exc))])
                raise
            if values is None:  # the loading was stopped
                return await halted() or run.finish_interrupted()
            requeued = _requeue_events(run)
            if requeued:
                await run.append(requeued)
            scheduler = MapScheduler(
                writer=run.writer,
                projections=run.p,
                spec=spec.map,
                executor=run.executor,
                values=values,
                request=run.request,
                max_parallel=options.max_parallel or spec.map.max_parallel,
                circuit=spec.circuit_breaker,
                on_change=lambda: options.on_change(run.p),
                hooks=ItemHooks(
                    home=run.run_dir.parent.parent,
                    run_id=run.run_id,
                    workspace=run.loaded.directory,
                    spec=spec.map,
                    cache=spec.cache,
                    mode=run.p.run.cache_mode,
                    context=lambda item, value: dict(run.request(item, 0, "", value).context),
                    redactor=run.redactor,
                ),
                warn=options.warn,
                store=run.store,
            )
            stop.scheduler = scheduler
            if stop.interrupted():
                scheduler.stop("interrupted")
            if control.cancelled():
                scheduler.stop("cancelled")
            outcome = await scheduler.run()
            if outcome.stopped == "interrupted":
                return run.finish_interrupted()
            if outcome.stopped == "cancelled":
                return await control.finish_cancelled()
            if outcome.stopped == "engine_error":
                assert outcome.error is not None
                return await run.finish_engine_error(outcome.error)
            if outcome.stopped is not None:
                reason = (
                    "an item failed and on_item_failure is 'fail'"
                    if outcome.stopped == "item_failed"
                    else "too many failed items (max_failures / failure_threshold)"
                )
                return await run.finish_failed(reason)
        if (result := await halted()) is not None:
            return result
        if unfinished := _unfinished(run.p):
            return await run.finish_engine_error(IncompleteMap(unfinished))
        run.context["map"] = run.map_context()
        failure = await run.steps("reduce", list(spec.reduce))
        if (result := await halted()) is not None:
            return result
        if failure is not None:
            return await run.finish_failed(failure)
        counts = run.p.items.counts
        await run.end_leftovers()
        await run.append(
            [
                RunCompleted(
                    succeeded=counts["succeeded"],
                    failed=counts["failed"],
                    dead=counts["dead"],
                    skipped=counts["skipped"],
                )
            ]
        )
        failed = counts["failed"] + counts["dead"]
        return RunResult(
            run.run_id, run.run_dir, "completed", 1 if failed else 0, run.p, output=run.output
        )
    except EngineError as exc:
        run.redactor.error(exc)  # its message reaches the terminal
        raise
    finally:
        if options.adopt_orphans:
            orphans.adopt(False)
        await control.stop()
        for signum, handler in before.items():
            loop.remove_signal_handler(signum)
            if handler is not None:
                signal.signal(signum, handler)
        run.writer.close()


async def _settle_interrupted(run: _Run) -> None:
    """Attempts a dead engine left without an outcome: stop leftovers, record them interrupted."""
    assert run.spec.map is not None or not run.p.items.items
    leftovers = await run.executor.reclaim(run.run_id, run.run_dir)
    running = [s for s in run.p.items.items.values() if s.status == "running"]
    if not running or run.spec.map is None:
        return
    events: list[Event] = []
    for state in sorted(running, key=lambda s: s.index):
        stopped = leftovers.get(state.item, 0)
        message = "the engine stopped before this attempt's outcome was recorded"
        if stopped:
            message += f" ({stopped} leftover process{'es' if stopped > 1 else ''} stopped)"
        events += abandon_events(run.spec.map, state.item, state.attempts, message)
    await run.append(events)
