"""Taking a run up again from its ledger: ``engine resume``, ``engine dlq retry``.

What is refused first (read-only, without the lock): a completed run with
nothing to retry, a workflow that changed (without ``allow_changed``).
Then, under the lock: the variables recorded (secrets never from the
ledger), the setup steps done as they are written now (a changed one runs
again, and the steps after it: said on stderr and in ``run.resumed``), the
workspace compared with the run's, and ``run.resumed``.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path

import msgspec

from engine.errors import ResumeRefused
from engine.run.context import RunContext
from engine.run.create import create_run
from engine.run.driver import drive
from engine.run.loading import in_thread
from engine.run.options import RunOptions, RunResult
from engine.run.steps import restore_captures, setup_plan
from engine.store.workspace import Snapshot, compare, take_snapshot
from engine.workflow.load import LoadedWorkflow, describe_changes, load_workflow
from ledger.atomic import atomic_write
from ledger.events import Event, RunResumed, RunUnpaused
from projections.replay import Projections, replay

__all__ = ["resume_run"]


async def resume_run(
    run_dir: Path, options: RunOptions, *, workflow: LoadedWorkflow | None = None
) -> RunResult:
    """Continue a run from its ledger: what was pending, interrupted or retrying.

    ``workflow``: the workflow file as given now (by default the file the run
    was created from, if it is still there, else the run's frozen copy); one
    whose bytes differ from the frozen copy is refused without
    ``allow_changed``.
    """
    before = replay(run_dir / "ledger.ndjson")  # read-only, no lock: only to refuse early
    run_id = before.run.run_id or run_dir.name
    _refuse_if_completed(before, options, run_id)
    if before.run.created_at is None:
        # Stopped between taking the lock and recording run.created: create it now.
        if workflow is None:
            # Its frozen copy does not say where the workflow (and its workspace) is.
            raise ResumeRefused(
                f"run {run_id!r} was stopped before it was created: nothing to resume",
                run_id=run_id,
                hint=f"start it again: engine run WORKFLOW --run-id {run_id}",
            )
        return await create_run(workflow, run_dir, run_id, options, create=False)
    frozen = _frozen_workflow(run_dir, before)
    if workflow is None:
        workflow = frozen
        if frozen.path.is_file():
            workflow = load_workflow(frozen.path)
    changes = _changes(before, frozen, workflow, options, run_id)
    # A secret given with --var was recorded as ***: a resume takes it from the
    # environment (or a new --var), never from the ledger.
    recorded = {
        k: v for k, v in before.run.vars.items() if not (v == "***" and k in workflow.spec.secrets)
    }
    given = dict(options.variables)
    options = dataclasses.replace(options, variables={**recorded, **given})
    run = RunContext(workflow, run_dir, run_id, options)
    run.open(create=False)  # under the lock: what the ledger says now
    try:
        opening = await _opening(run, changes, given)
    except BaseException:
        assert run.writer is not None
        run.writer.close()
        raise
    return await drive(run, opening, resuming=True)


def _refuse_if_completed(before: Projections, options: RunOptions, run_id: str) -> None:
    """A completed run is resumed only for its dead items (``include_dlq``, ``requeue``)."""
    dlq_wanted = options.requeue is not None or (options.include_dlq and bool(before.dlq.dead))
    if before.run.status != "completed" or dlq_wanted:
        return
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


def _changes(
    before: Projections,
    frozen: LoadedWorkflow,
    workflow: LoadedWorkflow,
    options: RunOptions,
    run_id: str,
) -> list[str]:
    """What changed in the workflow since the run started; refused without ``allow_changed``."""
    if workflow.hash == (before.run.workflow_hash or frozen.hash):
        return []
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
    return changes


async def _opening(run: RunContext, changes: list[str], given: dict[str, str]) -> list[Event]:
    """The setup steps done, the workspace compared: ``run.resumed`` (and ``run.unpaused``)."""
    options, spec = run.options, run.spec
    changed = bool(changes)  # the workflow did (allowed)
    plan = setup_plan(run)
    run.setup_done = len(plan.done)
    restore_captures(run, plan.done)
    if plan.changed is not None and plan.warning is not None:
        options.warn(plan.warning)
        changes = [*changes, plan.changed]
    home = run.run_dir.parent.parent
    snapshot = await in_thread(lambda: take_snapshot(run.loaded.directory, home=home))
    snapshot.files = run.redactor.keys(snapshot.files)
    _warn_if_workspace_changed(run, snapshot)
    opening: list[Event] = [
        RunResumed(
            pid=os.getpid(),
            host=socket.gethostname(),
            include_dlq=options.include_dlq,
            allow_changed=changed,
            workflow_hash=run.loaded.hash,
            changes=changes,
            snapshot_id=snapshot.id,
            max_parallel=options.max_parallel or (spec.map.max_parallel if spec.map else None),
            cache=options.cache_mode(run.p.run.cache_mode),
            vars={k: "***" if k in spec.secrets else v for k, v in given.items()},
        )
    ]
    if changed:
        atomic_write(run.run_dir / "workflow.yml", run.loaded.text.encode())
    if run.p.run.paused:
        opening.append(RunUnpaused(by="resume"))
    return opening


def _warn_if_workspace_changed(run: RunContext, snapshot: Snapshot) -> None:
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
    run.options.warn(
        f"warning: the workspace changed since run {run.run_id} started ({started} -> "
        f"{snapshot.id}: {len(changed)} changed, {len(added)} added, {len(removed)} removed"
        + (f"; e.g. {examples}" if examples else "")
        + "); going on"
    )
