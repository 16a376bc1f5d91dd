"""A new run: its id, its directory and ledger, the frozen workflow, ``run.created``."""

from __future__ import annotations

import datetime as dt
import getpass
import os
import secrets as _secrets
import socket
from pathlib import Path

from engine import engine_version
from engine.run.context import RunContext
from engine.run.driver import drive
from engine.run.loading import in_thread
from engine.run.options import RunOptions, RunResult
from engine.store.content import INLINE_LIMIT
from engine.store.workspace import save_snapshot, take_snapshot
from engine.workflow.load import LoadedWorkflow
from ledger.atomic import atomic_write
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
    run = RunContext(loaded, run_dir, run_id, options)
    home = run_dir.parent.parent
    run.open(create=create)
    try:
        opening = await _opening(run, home)
    except BaseException:
        assert run.writer is not None
        run.writer.close()
        raise
    return await drive(run, opening)


async def _opening(run: RunContext, home: Path) -> list[Event]:
    """The workflow frozen and the workspace's snapshot taken: ``run.created``, ``run.started``."""
    loaded, spec, options = run.loaded, run.spec, run.options
    atomic_write(run.run_dir / "workflow.yml", loaded.text.encode())
    snapshot = await in_thread(lambda: take_snapshot(loaded.directory, home=home))
    snapshot.files = run.redactor.keys(snapshot.files)
    save_snapshot(snapshot, run.run_dir / "snapshot.json")
    # A workflow too large to copy into run.created is kept in the store.
    large = len(loaded.text) * 4 > INLINE_LIMIT and len(loaded.text.encode()) > INLINE_LIMIT
    # Stored as recorded inline would be: redacted.
    workflow_ref = run.store.put_bytes(run.redactor.text(loaded.text).encode()) if large else None
    return [
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
