"""A run from start to end: create, resume, recovery, the phases, control.

The entry points are here: :func:`execute_run` (``engine run``),
:func:`resume_run` (``engine resume``, ``engine dlq retry``), with
:class:`RunOptions` and :class:`RunResult`; :mod:`engine.run.control` is the
control protocol (pause, cancel, purge, ack) for other processes.
"""

from __future__ import annotations

from pathlib import Path

from engine.errors import ResumeRefused
from engine.home import check_run_id
from engine.run.create import create_run, new_run_id
from engine.run.options import RunOptions, RunResult
from engine.run.resume import resume_run
from engine.workflow.load import LoadedWorkflow

__all__ = ["ResumeRefused", "RunOptions", "RunResult", "execute_run", "new_run_id", "resume_run"]


async def execute_run(loaded: LoadedWorkflow, home: Path, options: RunOptions) -> RunResult:
    """Run a workflow to the end (or until interrupted).

    A run id that exists already is resumed (``engine run`` on it is
    ``engine resume``).
    """
    run_id = check_run_id(options.run_id) if options.run_id else new_run_id(loaded.spec.name)
    run_dir = home / "runs" / run_id
    if (run_dir / "ledger.ndjson").exists():
        return await resume_run(run_dir, options, workflow=loaded)
    return await create_run(loaded, run_dir, run_id, options, create=True)
