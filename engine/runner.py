"""A run from start to end: create, setup, enqueue, map, reduce, finish.

The run directory holds the ledger, the lock, a frozen copy of the workflow
(``workflow.yml``), attempt logs and ``results.json``. Every step of the run
is recorded in the ledger before and after it happens.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import getpass
import os
import secrets as _secrets
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from engine import engine_version
from engine.executor import AttemptRequest, Executor
from engine.items import ItemsError, load_items
from engine.local import LocalExecutor, agent_argv
from engine.scheduler import MapScheduler
from engine.spec import Step
from engine.workflow import LoadedWorkflow
from ledger.atomic import atomic_write
from ledger.errors import EngineError
from ledger.events import (
    Event,
    ItemDuplicate,
    ItemEnqueued,
    ItemSkipped,
    ItemSucceeded,
    RunCompleted,
    RunCreated,
    RunFailed,
    RunStarted,
    StepFailed,
    StepStarted,
    StepSucceeded,
)
from ledger.reader import LedgerReader
from ledger.writer import LedgerWriter
from projections.replay import Projections

__all__ = ["RunOptions", "RunResult", "execute_run", "new_run_id"]

ENQUEUE_BATCH = 1000
RESULTS_INLINE_LIMIT = 64 * 1024


@dataclass
class RunOptions:
    run_id: str | None = None
    max_parallel: int | None = None
    variables: dict[str, str] = field(default_factory=dict)
    executor: Executor | None = None
    command: str = ""
    on_change: Callable[[Projections], None] = lambda _p: None


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
    slug = "".join(c if c.isalnum() or c in "-_" else "-" for c in name)[:40].strip("-") or "run"
    return f"{slug}-{stamp}-{_secrets.token_hex(2)}"


class RunExists(EngineError):
    exit_code = 2


class _Run:
    def __init__(self, loaded: LoadedWorkflow, home: Path, options: RunOptions) -> None:
        self.loaded = loaded
        self.spec = loaded.spec
        self.options = options
        self.run_id = options.run_id or new_run_id(self.spec.name)
        self.run_dir = home / "runs" / self.run_id
        self.executor = options.executor or LocalExecutor()
        self.local = LocalExecutor()
        circuit = self.spec.circuit_breaker
        self.p = Projections(circuit_on=circuit.on if circuit else ())
        self.p.enable_scheduling()
        self.env: dict[str, str] = {**self.spec.env, **options.variables}
        self.secret_values = [os.environ.get(name, "") for name in self.spec.secrets]
        self.context: dict[str, Any] = {"env": self.env, "run": {"id": self.run_id}}
        self.writer: LedgerWriter | None = None
        self.output: list[str] = []
        self._base_env: dict[str, str] | None = None
        self.agent_command = agent_argv(self.spec.agent.command)

    # --- plumbing ----------------------------------------------------------------------

    async def append(self, events: list[Event]) -> None:
        assert self.writer is not None
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
            redact=[s for s in self.secret_values if s],
        )

    # --- phases -----------------------------------------------------------------------------

    async def steps(self, phase: str, steps: list[Step]) -> str | None:
        """Run setup or reduce steps in order; the failure reason, if one failed."""
        for index, step in enumerate(steps):
            await self.append(
                [StepStarted(phase=phase, index=index, name=step.name or "", command=step.text)]
            )
            request = self.request(f"{phase}-{index}", 1, "", None, steps=[step])
            attempt = await self.local.start(request)
            outcome = await attempt.wait()
            if not outcome.ok:
                reason = (outcome.stderr_tail.strip().splitlines() or [""])[-1]
                if outcome.timed_out:
                    kind = "timeout"
                    reason = f"timed out after {step.timeout}s"
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
                        stdout=outcome.stdout,
                        stderr=outcome.stderr,
                    )
                ]
            )
        return None

    async def enqueue(self) -> dict[str, Any]:
        spec = self.spec.map
        assert spec is not None
        loaded = await asyncio.to_thread(
            load_items, spec, self.loaded.directory, self.process_env(), dict(self.context)
        )
        values = {w.id: w.value for w in loaded.items}
        batch: list[Event] = [
            ItemEnqueued(item=w.id, index=w.index, value=w.value) for w in loaded.items
        ]
        batch += [
            ItemDuplicate(item=w.id, index=w.index, first_index=first)
            for w, first in loaded.duplicates
        ]
        for start in range(0, len(batch), ENQUEUE_BATCH):
            await self.append(batch[start : start + ENQUEUE_BATCH])
        return values

    def results(self) -> dict[str, Any]:
        """Each item's result, read back from the ledger (the one source of truth)."""
        assert self.writer is not None
        out: dict[str, Any] = {}
        for record in LedgerReader(self.writer.path).records():
            data = record.data
            if isinstance(data, ItemSucceeded | ItemSkipped):
                out[data.item] = data.result
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

    async def finish_failed(self, reason: str) -> RunResult:
        await self.append([RunFailed(reason=reason)])
        return RunResult(self.run_id, self.run_dir, "failed", 1, self.p, reason)

    def finish_interrupted(self) -> RunResult:
        """Stopped by a signal: nothing more is recorded; the run is resumable."""
        return RunResult(self.run_id, self.run_dir, "interrupted", 130, self.p, "interrupted")


@dataclass
class _Stop:
    """What a SIGINT or SIGTERM handler needs to reach."""

    signal: int | None = None
    scheduler: MapScheduler | None = None
    tasks: set[asyncio.Future[None]] = field(default_factory=set)

    def interrupted(self) -> bool:
        return self.signal is not None


async def execute_run(loaded: LoadedWorkflow, home: Path, options: RunOptions) -> RunResult:
    """Run a workflow to the end (or until interrupted)."""
    run = _Run(loaded, home, options)
    if (run.run_dir / "ledger.ndjson").exists():
        raise RunExists(
            f"run {run.run_id!r} already exists in {run.run_dir.parent}",
            hint="pick another --run-id, or leave it out for a new one",
        )
    spec = loaded.spec
    run.writer = LedgerWriter.open(run.run_dir, run.run_id, create=True, command=options.command)
    run.p.apply_all(run.writer.opening)
    loop = asyncio.get_running_loop()
    stop = _Stop()

    def on_signal(signum: int) -> None:
        stop.signal = signum
        if stop.scheduler is not None:
            stop.scheduler.stop("interrupted")
            stop.tasks.add(asyncio.ensure_future(stop.scheduler.cancel_running()))

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        atomic_write(run.run_dir / "workflow.yml", loaded.text.encode())
        await run.append(
            [
                RunCreated(
                    workflow_name=spec.name,
                    workflow_path=str(loaded.path),
                    workflow_hash=loaded.hash,
                    workflow=loaded.text,
                    vars=dict(options.variables),
                    engine_version=engine_version(),
                    user=getpass.getuser(),
                    host=socket.gethostname(),
                ),
                RunStarted(
                    pid=os.getpid(),
                    host=socket.gethostname(),
                    max_parallel=options.max_parallel
                    or (spec.map.max_parallel if spec.map else None),
                    executor=run.executor.name,
                ),
            ]
        )
        failure = await run.steps("setup", list(spec.setup))
        if failure is not None:
            return await run.finish_failed(failure)
        if stop.interrupted():
            return run.finish_interrupted()
        if spec.map is not None:
            try:
                values = await run.enqueue()
            except ItemsError as exc:
                await run.append([RunFailed(reason=str(exc))])
                raise
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
            )
            stop.scheduler = scheduler
            if stop.interrupted():
                scheduler.stop("interrupted")
            outcome = await scheduler.run()
            if outcome.stopped == "interrupted":
                return run.finish_interrupted()
            if outcome.stopped is not None:
                reason = (
                    "an item failed and on_item_failure is 'fail'"
                    if outcome.stopped == "item_failed"
                    else "too many failed items (max_failures / failure_threshold)"
                )
                return await run.finish_failed(reason)
        run.context["map"] = run.map_context()
        failure = await run.steps("reduce", list(spec.reduce))
        if failure is not None:
            return await run.finish_failed(failure)
        counts = run.p.items.counts
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
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        run.writer.close()
