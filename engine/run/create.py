"""A new run: its id, its directory and ledger, the frozen workflow, ``run.created``.

Before anything is created, :func:`~engine.workflow.load.preflight` checks
what the run needs of the machine (the map's input file, the steps'
programs), so that a refusal leaves no run behind. A run whose items cannot
be read from its file or inline items (bad input, exit 2), before any setup
step ran, holds nothing but its opening and its failure: its directory is
removed, and ``latest`` stays the run before it. One whose ``map.command``
ran, or whose setup steps did, is kept, failed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import os
import secrets as _secrets
import shutil
import socket
from pathlib import Path

from engine import engine_version
from engine.errors import ItemsError
from engine.run.context import RunContext
from engine.run.driver import drive
from engine.run.isolated import check_workspace, isolated
from engine.run.loading import in_thread
from engine.run.options import RunOptions, RunResult
from engine.store.content import INLINE_LIMIT
from engine.store.workspace import save_snapshot, take_snapshot
from engine.workflow.environment import (
    Environment,
    profile_entries,
    read_env_files,
    recorded_copy,
    recorded_files,
    resolve,
)
from engine.workflow.load import LoadedWorkflow, preflight
from ledger import LedgerReader
from ledger.atomic import atomic_write
from ledger.errors import EngineError, LedgerError
from ledger.events import Event, RunCreated, RunStarted

__all__ = ["create_run", "new_run_id"]


def new_run_id(name: str) -> str:
    """``NAME-DATE-TIME-XXXX``: the workflow's name (made safe), when, and 4 random hex digits."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    slug = "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "-" for c in name)
    slug = slug[:40].strip("-_") or "run"
    return f"{slug}-{stamp}-{_secrets.token_hex(2)}"


async def create_run(
    loaded: LoadedWorkflow, run_dir: Path, run_id: str, options: RunOptions, *, create: bool
) -> RunResult:
    """Create the run and drive it (``create=False``: the ledger exists, not ``run.created``)."""
    files, environment = _environment(loaded, options)
    run = RunContext(loaded, run_dir, run_id, options, environment=environment)
    home = run_dir.parent.parent
    new = create and not run_dir.exists()
    if create:
        preflight(loaded, run.process_env(), allow_missing=options.allow_missing)
        if isolated(run):
            await check_workspace(run)
        if run.spec.map is not None:
            await run.executor.connect(run_id)  # an unreachable cluster: no run is kept
    run.open(create=create)
    try:
        opening = await _opening(run, home, files)
    except BaseException:
        assert run.writer is not None
        run.writer.close()
        raise
    try:
        return await drive(run, opening)
    except ItemsError as exc:
        if new and _nothing_ran(run):
            with contextlib.suppress(OSError):
                shutil.rmtree(run.run_dir)
            raise ItemsError(
                exc.message,
                hint=f"{exc.hint + '; ' if exc.hint else ''}nothing ran: no run was kept",
            ) from None
        raise


def _environment(loaded: LoadedWorkflow, options: RunOptions) -> tuple[dict[str, str], Environment]:
    """The ``env_files`` read (a missing one skipped, with a warning) and the run's variables."""
    profile_entries(loaded.spec, options.profile)  # an unknown profile first, alone
    files, missing = read_env_files(loaded.spec, loaded.directory)
    for name in missing:
        options.warn(f"warning: env_files: {name} not found in {loaded.directory}: skipped")
    environment = resolve(
        loaded.spec, profile=options.profile, files=files, variables=options.variables
    )
    for name in environment.missing:
        raise EngineError(
            f"{loaded.shown or loaded.path}: env.{name} is a secret written as *** (a run's "
            f"copy of a workflow), and {name} is not set in the environment",
            hint=f"export {name}=VALUE, or run the workflow file that holds the value",
        )
    return files, environment


_OPENING_ONLY = frozenset(
    {"lock.acquired", "ledger.recovered", "run.created", "run.started", "run.failed"}
)
"""Records of a run that failed before any step or item: nothing worth keeping."""


def _nothing_ran(run: RunContext) -> bool:
    """No command ran: the items came from a file or inline (not ``map.command``), and the
    ledger holds only the opening and the failure (no step started, no item)."""
    if run.spec.map is None or run.spec.map.command is not None:
        return False
    try:
        records = LedgerReader(run.run_dir / "ledger.ndjson").records()
        return all(r.type in _OPENING_ONLY for r in records)
    except (OSError, LedgerError):
        return False


async def _opening(run: RunContext, home: Path, files: dict[str, str]) -> list[Event]:
    """The workflow frozen and the workspace's snapshot taken: ``run.created``, ``run.started``.

    The frozen copy has the secret entries' values as ``***``; the hash is the copy's.
    """
    loaded, spec, options = run.loaded, run.spec, run.options
    text, digest = recorded_copy(loaded)
    atomic_write(run.run_dir / "workflow.yml", text.encode())
    snapshot = await in_thread(lambda: take_snapshot(loaded.directory, home=home))
    snapshot.files = run.redactor.keys(snapshot.files)
    save_snapshot(snapshot, run.run_dir / "snapshot.json")
    # A workflow too large to copy into run.created is kept in the store.
    large = len(text) * 4 > INLINE_LIMIT and len(text.encode()) > INLINE_LIMIT
    # Stored as recorded inline would be: redacted.
    workflow_ref = run.store.put_bytes(run.redactor.text(text).encode()) if large else None
    secret = spec.secret_names
    return [
        RunCreated(
            snapshot_id=snapshot.id,
            workflow_name=spec.name,
            workflow_path=str(loaded.path),
            workflow_hash=digest,
            workflow="" if large else text,
            workflow_ref=workflow_ref,
            vars={k: "***" if k in secret else v for k, v in options.variables.items()},
            profile=options.profile,
            env_files=recorded_files(files, secret),
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
