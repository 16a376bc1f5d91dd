"""Taking a run up again from its ledger: ``engine resume``, ``engine dlq retry``.

What is refused first (read-only, without the lock): a completed run with
nothing to retry, a workflow that changed (without ``allow_changed``).
Then, under the lock: the variables recorded (secrets never from the
ledger: :func:`_environment`), the setup steps done as they are written now (a changed one runs
again, and the steps after it: said on stderr and in ``run.resumed``), the
workspace compared with the run's, and ``run.resumed``.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path

import msgspec

from engine import engine_version
from engine.errors import ResumeRefused
from engine.run.context import RunContext
from engine.run.create import create_run
from engine.run.driver import drive
from engine.run.loading import in_thread
from engine.run.options import RunOptions, RunResult
from engine.run.steps import restore_captures, setup_plan
from engine.store.workspace import Snapshot, compare, take_snapshot
from engine.workflow.environment import (
    MASK,
    Environment,
    mask_spec,
    read_env_files,
    recorded_copy,
    resolve,
)
from engine.workflow.load import LoadedWorkflow, describe_changes, load_workflow
from ledger import LedgerReader
from ledger.atomic import atomic_write
from ledger.errors import LedgerError
from ledger.events import Event, RunCreated, RunResumed, RunUnpaused
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
    created = _created(run_dir)
    profile = _profile(created, options, run_id)
    given = dict(options.variables)
    # What a workflow resolves as it is read (a Prodigy one's max_parallel: $VAR)
    # sees the run's profile and variables again.
    known = {**{k: v for k, v in before.run.vars.items() if v != MASK}, **given}
    frozen = _frozen_workflow(run_dir, before, profile=profile, variables=known)
    if workflow is None:
        workflow = frozen
        if frozen.path.is_file():
            workflow = load_workflow(frozen.path, profile=profile, variables=known)
    changes = _changes(before, frozen, workflow, options, run_id)
    # A secret given with --var was recorded as ***: a resume takes it from the
    # environment (or a new --var), never from the ledger.
    secret = workflow.spec.secret_names
    recorded = {k: v for k, v in before.run.vars.items() if not (v == MASK and k in secret)}
    options = dataclasses.replace(options, variables={**recorded, **given}, profile=profile)
    if options.executor is None and options.executor_name is None and not workflow.spec.executor:
        # Where its last session ran, unless told otherwise.
        last = before.run.executors[-1] if before.run.executors else "local"
        options = dataclasses.replace(
            options, executor_name="dask" if last == "dask-local" else last
        )
    environment = _environment(workflow, created, options, run_id)
    run = RunContext(workflow, run_dir, run_id, options, environment=environment)
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


def _frozen_workflow(
    run_dir: Path, p: Projections, *, profile: str | None, variables: dict[str, str]
) -> LoadedWorkflow:
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
    return load_workflow(path, raw=raw, profile=profile, variables=variables)


def _created(run_dir: Path) -> RunCreated | None:
    """The run's ``run.created`` (near the ledger's start; what the projections do not keep)."""
    try:
        for record in LedgerReader(run_dir / "ledger.ndjson").records():
            if isinstance(record.data, RunCreated):
                return record.data
    except (OSError, LedgerError):
        return None
    return None


def _profile(created: RunCreated | None, options: RunOptions, run_id: str) -> str | None:
    """The run's profile; a resume asked for another one is refused."""
    profile = created.profile if created is not None else None
    if options.profile is not None and options.profile != profile:
        started = f"--profile {profile}" if profile else "no profile"
        raise ResumeRefused(
            f"run {run_id!r} was started with {started}: a resume keeps it "
            f"(--profile {options.profile} asked for another)",
            run_id=run_id,
            hint="resume without --profile, or start a new run with "
            f"engine run WORKFLOW --profile {options.profile}",
        )
    return profile


def _environment(
    workflow: LoadedWorkflow, created: RunCreated | None, options: RunOptions, run_id: str
) -> Environment:
    """The run's variables again: the env_files' values as recorded; each secret from the
    environment (else, from the workflow file or the env_files as they are now)."""
    secret = workflow.spec.secret_names
    files = dict(created.env_files) if created is not None else {}
    masked = [k for k, v in files.items() if v == MASK and k in secret]
    if masked:
        now, _ = read_env_files(workflow.spec, workflow.directory)
        for name in masked:
            value = os.environ.get(name, now.get(name))
            if value is None:
                del files[name]  # as a listed secret that is not set
            else:
                files[name] = value
    environment = resolve(
        workflow.spec,
        profile=options.profile,
        files=files,
        variables=options.variables,
        resuming=True,
    )
    if environment.missing:
        name = environment.missing[0]
        raise ResumeRefused(
            f"run {run_id!r}: the value of the secret {name} is never recorded, and neither "
            f"the environment nor the workflow file {workflow.path} holds it (the run's copy "
            "has ***)",
            run_id=run_id,
            hint=f"export {name}=VALUE and resume again",
        )
    return environment


def _changes(
    before: Projections,
    frozen: LoadedWorkflow,
    workflow: LoadedWorkflow,
    options: RunOptions,
    run_id: str,
) -> list[str]:
    """What changed in the workflow since the run started; refused without ``allow_changed``."""
    # Both as the run keeps them: secret entries ***, whatever their values.
    if recorded_copy(workflow)[1] == (before.run.workflow_hash or recorded_copy(frozen)[1]):
        return []
    changes = describe_changes(mask_spec(frozen.spec), mask_spec(workflow.spec)) or [
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
            workflow_hash=recorded_copy(run.loaded)[1],
            changes=changes,
            snapshot_id=snapshot.id,
            engine_version=engine_version(),
            executor=run.executor.name,
            max_parallel=options.max_parallel or (spec.map.max_parallel if spec.map else None),
            cache=options.cache_mode(run.p.run.cache_mode),
            vars={k: MASK if k in spec.secret_names else v for k, v in given.items()},
            max_cost_usd=options.budget,
        )
    ]
    if changed:
        atomic_write(run.run_dir / "workflow.yml", recorded_copy(run.loaded)[0].encode())
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
