"""One engine's hold on a run: what every phase of it shares.

:class:`RunContext` holds the workflow and the options, the projections
(kept current by :meth:`RunContext.append`, the one way the engine records
anything), the ledger writer, the redactor and the content store; the
environment every command of the run shares and the attempt requests built
from it; and what a signal or a cancel must reach to stop the run in any
phase (:meth:`RunContext.halt`).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec

from engine.errors import IncompleteMap, IsolationError, StoreMissing
from engine.exec.agent_output import agent_command
from engine.exec.executor import Attempt, AttemptRequest, Executor
from engine.exec.local.executor import LocalExecutor
from engine.exec.program import agent_argv
from engine.git.isolation import Isolation
from engine.git.repo import GIT_CONTEXT
from engine.items.selection import LoadStop
from engine.map.scheduler import MapScheduler
from engine.redact import Redactor
from engine.run.options import RunOptions
from engine.store.content import ContentStore
from engine.store.receipts import ReceiptWriter, write_missing
from engine.store.snapshots import Checkpoints
from engine.workflow.environment import Environment, resolve
from engine.workflow.load import LoadedWorkflow
from engine.workflow.spec import Step, Workflow
from engine.workflow.variables import item_context, run_context
from ledger.events import Event, RunAborted, RunCompleted, RunFailed
from ledger.times import reading
from ledger.writer import LedgerWriter
from projections.receipts import ReceiptsProjection
from projections.replay import Projections, replay
from projections.stats import SessionsProjection
from projections.values import ValuesProjection

__all__ = ["RunContext", "unfinished"]


def _executor(options: RunOptions, spec: Workflow) -> Executor:
    """The executor ``--executor`` names, else the workflow's ``executor:``, else local.

    The Dask executor (imported only then) is refused with ``map.isolation: worktree``:
    a worktree per attempt is made on this machine.
    """
    name, workers = options.executor_name, options.workers
    if name is None and spec.executor is not None:
        name, workers = spec.executor.address, workers or spec.executor.workers
    if name is None or name == "local":
        return LocalExecutor()
    if spec.map is not None and spec.map.isolation == "worktree":
        raise IsolationError(
            f"executor {name}: map.isolation: worktree runs only on the local executor",
            path=name,
            hint="run with --executor local, or drop map.isolation",
        )
    from engine.exec.dask.executor import DaskExecutor  # noqa: PLC0415 - the dask extra

    # A local cluster's slots: the run's parallelism, spread over its workers.
    workers = workers or 2
    parallel = options.max_parallel or (spec.map.max_parallel if spec.map else 1)
    threads = -(-parallel // workers)
    return DaskExecutor(None if name == "dask" else name, workers=workers, threads=threads)


class RunContext:
    def __init__(
        self,
        loaded: LoadedWorkflow,
        run_dir: Path,
        run_id: str,
        options: RunOptions,
        *,
        environment: Environment | None = None,
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
        self.executor = options.executor or _executor(options, self.spec)
        self.owns_executor = options.executor is None
        """The executor was made for the run: closed at its end."""
        self.local = LocalExecutor()
        circuit = self.spec.circuit_breaker
        self.values = ValuesProjection()
        """Item values, results and done steps, as recorded (:mod:`projections.values`)."""
        self.receipts = ReceiptsProjection(keep=False)
        """The receipts of items that succeeded since the last append (written by
        :attr:`receipt_writer`)."""
        self.p = Projections(
            circuit_on=circuit.on if circuit else (),
            extra=(self.values, self.receipts, SessionsProjection()),
        )
        self.checkpoints = Checkpoints(self.run_dir / "ledger.ndjson")
        self.receipt_writer = ReceiptWriter(self.run_dir, warn=options.warn)
        # env_files, env, the profile, the secrets, --var (engine.workflow.environment).
        if environment is None:
            environment = resolve(self.spec, profile=options.profile, variables=options.variables)
        self.env: dict[str, str] = environment.values
        self.secret_values = environment.secrets
        self.redactor = Redactor(self.secret_values)
        # What is recorded never holds a secret, even one given with --var: each
        # word is redacted before the line is joined (quoting would hide it after).
        if options.argv is not None:
            options.command = self.redactor.command(options.argv)
        else:
            options.command = self.redactor.command_line(options.command)
        self.context: dict[str, Any] = run_context(self.run_id, self.env, os.environ)
        self.writer: LedgerWriter | None = None
        self.output: list[str] = []
        """What the reduce steps printed."""
        self._base_env: dict[str, str] | None = None
        self.agent_command = agent_command(
            agent_argv(self.spec.agent.command), self.spec.agent.output
        )
        self.store = ContentStore(self.run_dir.parent.parent)
        self.began = time.time()
        """When this engine took up the run (before it took the lock)."""
        self.setup_done = 0
        """Setup steps done before this engine took the run up (skipped: see ``steps``)."""
        self.current_step: Attempt | None = None
        """The setup or reduce step running now (a signal or a cancel stops it)."""
        self.loading: LoadStop | None = None
        """The map's items being loaded now (a signal or a cancel stops that too)."""
        self.scheduler: MapScheduler | None = None
        """The map, while it runs (a signal or a cancel stops it)."""
        self.stopping = False
        """A signal or a cancel has stopped the run: a step started now is stopped at once."""
        self.signal: int | None = None
        """The signal (SIGINT, SIGTERM) that stopped the run."""
        self.budget_stop = False
        """A ``claude:`` step was not started, the run's budget being spent: the run
        ends as a map stopped by its budget does."""
        self._halting: set[asyncio.Future[None]] = set()
        self.hold: Callable[[], Awaitable[None]] | None = None
        """Awaited before a step starts while the run is paused (the control watcher's)."""
        self.isolation: Isolation | None = None
        """The run's worktrees and merge queue (``map.isolation: worktree``), once opened."""

    @property
    def workdir(self) -> Path:
        """Where the run's steps work: the workflow's directory, or its place in the run's
        worktree (``map.isolation: worktree``)."""
        if self.isolation is None:
            return self.loaded.directory
        return self.isolation.workdir(self.isolation.path)

    # --- the ledger ----------------------------------------------------------------------

    def open(self, *, create: bool) -> None:
        """Take the run's lock and open its ledger; the projections say what it holds.

        ``create``: a new ledger (its opening records applied); else the
        ledger is replayed, under the lock, into the projections.
        """
        self.writer = LedgerWriter.open(
            self.run_dir,
            self.run_id,
            create=create,
            command=self.options.command,
            clock=reading(self.options.clock),
            redact=self.redactor.recorded if self.redactor else None,  # none: nothing to check
        )
        if create:
            self.p.apply_all(self.writer.opening)
        else:
            try:
                replay(self.run_dir / "ledger.ndjson", into=self.p)
            except BaseException:
                self.writer.close()
                raise
        # The receipts an engine killed after a success's append left unwritten.
        write_missing(self.run_dir, self.receipts.drain(), warn=self.options.warn)
        self.p.enable_scheduling()

    async def append(self, events: list[Event]) -> None:
        """Record ``events`` (durable when this returns) and fold them into the projections."""
        assert self.writer is not None
        if any(isinstance(e, RunCompleted) for e in events) and (left := unfinished(self.p)):
            raise IncompleteMap(left)  # the one rule: never completed with work left
        records = await self.writer.append_async(events)
        self.p.apply_all(records)
        self.changed()
        self.checkpoints.after_append(self.p, final=any(isinstance(e, _ENDS) for e in events))

    def changed(self) -> None:
        """After each append (applied): the receipts of the items that just succeeded are
        written (their success is durable), then the caller is told."""
        self.receipt_writer.submit(self.receipts.drain())
        self.options.on_change(self.p)

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

    # --- commands ------------------------------------------------------------------------

    def process_env(self) -> dict[str, str]:
        """The environment every command of the run shares (one object: do not change it)."""
        if self._base_env is None:
            env = dict(os.environ)
            # Commands can call `engine` (e.g. `engine mock-agent`) from this installation.
            bin_dir = str(Path(sys.executable).parent)
            path = env.get("PATH", "")
            if bin_dir not in path.split(os.pathsep):
                env["PATH"] = bin_dir + (os.pathsep + path if path else "")
            if self.spec.map is not None and self.spec.map.isolation == "worktree":
                # Steps work in worktrees: a GIT_DIR of the caller's (a git hook's) would
                # send their git commands to the user's checkout.
                for name in GIT_CONTEXT:
                    env.pop(name, None)
            env.update(self.env)
            env["ENGINE_RUN_ID"] = self.run_id
            env["ENGINE_RUN_DIR"] = str(self.run_dir)
            self._base_env = env
        return self._base_env

    def request(
        self,
        item: str,
        attempt: int,
        key: str,
        value: Any,
        *,
        steps: list[Step] | None = None,
        phase: str = "map",
        context: dict[str, Any] | None = None,
    ) -> AttemptRequest:
        """An attempt of a map item (``steps`` None) or of one setup or reduce step
        (``context``: its variables, by default the run's)."""
        spec = self.spec
        assert spec.map is not None or steps is not None
        env = {
            "ENGINE_ITEM_ID": item,
            "ENGINE_ATTEMPT": str(attempt),
            "ENGINE_IDEMPOTENCY_KEY": key,
        }
        context = dict(self.context if context is None else context)
        if steps is None:
            assert spec.map is not None
            state = self.p.items.items.get(item)
            context = item_context(
                self.context,
                item=value,
                item_id=item,
                index=state.index if state is not None else 0,
                total=len(self.p.items.items),
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
            cwd=self.workdir,
            run_dir=self.run_dir,
            timeout=spec.map.timeout if (steps is None and spec.map) else None,
            heartbeat_interval=spec.map.heartbeat.interval if spec.map else 10.0,
            hung_after=spec.map.heartbeat.hung_after if (steps is None and spec.map) else None,
            agent_command=self.agent_command,
            redact=list(self.secret_values),
            allow_background=spec.map.allow_background if spec.map else False,
            phase=phase,
            classify=spec.map.classify if spec.map else (),
            agent_output=spec.agent.output,
            max_budget_usd=self._item_budget(item) if steps is None else None,
            max_item_cost_usd=spec.budget.max_item_cost_usd if steps is None else None,
        )

    def _item_budget(self, item: str) -> float | None:
        """What an item's next attempt may spend (``--max-budget-usd``): the item's budget
        less its recorded spend; None without one, or for an agent not read as Claude's, or
        whose command sets its own."""
        limit = self.spec.budget.max_item_cost_usd
        given = any(w.partition("=")[0] == "--max-budget-usd" for w in self.agent_command)
        if limit is None or self.spec.agent.output == "text" or given:
            return None
        return max(0.0, round(limit - self.p.budget.by_item.get(item, 0.0), 10))

    # --- stopping ------------------------------------------------------------------------

    def halt(self, reason: str, *, force: bool = False) -> None:
        """Stop what runs now, in whatever phase: the map, the current step, the loading."""
        self.stopping = True
        if self.scheduler is not None:
            self.scheduler.stop(reason)
            self._halting.add(asyncio.ensure_future(self.scheduler.cancel_running(force=force)))
        if self.current_step is not None:
            self._halting.add(asyncio.ensure_future(self.current_step.cancel(force=force)))
        if self.loading is not None:
            self.loading.cancel()

    @property
    def interrupted(self) -> bool:
        """A signal stopped the run."""
        return self.signal is not None

    @property
    def cancelled(self) -> bool:
        """``engine cancel`` stopped the run (``run.cancel_requested`` is recorded)."""
        return self.p.run.cancel_requested


_ENDS = (RunCompleted, RunFailed, RunAborted)
"""A session that appends one of these ends with a snapshot."""


def unfinished(p: Projections) -> dict[str, list[str]]:
    """Items still running or pending, by status: a run with any is not complete."""
    counts = p.items.counts
    if not (counts["running"] or counts["pending"]):
        return {}
    out: dict[str, list[str]] = {}
    for state in p.items.items.values():
        if state.status in ("running", "pending"):
            out.setdefault(state.status, []).append(state.item)
    return out
