"""What a caller asks of a run (:class:`RunOptions`) and what it gets back (:class:`RunResult`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from engine.exec.executor import Executor
from projections.replay import Projections

__all__ = ["RunOptions", "RunResult"]


@dataclass
class RunOptions:
    run_id: str | None = None
    max_parallel: int | None = None
    variables: dict[str, str] = field(default_factory=dict)
    """``--var``: over ``env_files``, ``env`` and the profile."""
    profile: str | None = None
    """``--profile``: the workflow's profile laid over ``env``. A resume keeps the
    run's own (the one recorded in ``run.created``); naming another is refused."""
    executor: Executor | None = None
    """The executor itself (a library caller's); else one made from ``executor_name``."""
    executor_name: str | None = None
    """``--executor``: ``local``, ``dask`` (a local cluster) or ``dask://HOST:PORT``; over
    the workflow's ``executor:``, local when neither says."""
    workers: int | None = None
    """``--workers``: the worker processes of the local Dask cluster (``dask``)."""
    command: str = ""
    """The command line to record (redacted here); ``argv`` wins when given."""
    argv: list[str] | None = None
    """The command line as its words: each is redacted before they are joined."""
    on_change: Callable[[Projections], None] = lambda _p: None
    include_dlq: bool = False
    """Resume: dead items run again too (after everything else)."""
    requeue: list[str] | None = None
    """Resume for ``engine dlq retry``: these dead items run again."""
    budget: float | None = None
    """Resume (``engine resume --budget``): the run's budget in USD from now on, over
    ``budget.max_cost_usd`` (recorded as ``run.resumed``'s ``max_cost_usd``)."""
    allow_changed: bool = False
    """Resume with a workflow whose file differs from the run's frozen copy."""
    no_cache: bool = False
    refresh_cache: bool = False
    allow_missing: bool = False
    """A new run starts even when a step's program is not found on ``PATH``."""
    warn: Callable[[str], None] = lambda _message: None
    """Where warnings go (a resume in a workspace that changed)."""
    clock: Callable[[], float] = time.time
    """The run's one clock (epoch seconds): the scheduler decides by it (ready items, a
    retry's ``not_before``, when an open circuit half-opens, recovery) and every record's
    ``ts`` is its reading, so a circuit opened at a record's time half-opens on this clock.
    Its seconds are real seconds: the scheduler waits them."""
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
    """completed, failed, aborted (cancelled, or stopped by its budget) or interrupted
    (a signal)."""
    exit_code: int
    """0 ok; 1 failures; 4 stopped by its budget (resumable); 130 interrupted or cancelled."""
    projections: Projections
    reason: str | None = None
    output: list[str] = field(default_factory=list)
    """What the reduce steps printed (stdout), for the user to see."""
