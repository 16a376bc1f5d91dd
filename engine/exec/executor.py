"""Executors: what runs an attempt. The scheduler sees only this interface.

An :class:`Executor` starts an :class:`Attempt` from an
:class:`AttemptRequest`; the scheduler then observes its heartbeats, waits
for its :class:`AttemptOutcome`, or cancels it. Nothing about processes,
pipes or signals leaks past this interface, so other executors (Dask for
many machines) implement the same three calls and pass the same contract
tests.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.workflow.spec import ClassifyRule, Step
from ledger.errors import EngineError
from ledger.events import AgentActivity, AgentUsage, LogRef, StepRecovery, ValidationRound

__all__ = [
    "Attempt",
    "AttemptOutcome",
    "AttemptRequest",
    "Executor",
    "ExecutorLost",
    "HeartbeatSample",
]


@dataclass(frozen=True)
class AttemptRequest:
    """Everything an executor needs to run one attempt of one item."""

    run_id: str
    item_id: str
    attempt: int
    idempotency_key: str
    steps: Sequence[Step]
    context: Mapping[str, Any]
    """Template variables: item, item_id, item_index, env, captures, ..."""
    env: Mapping[str, str]
    """This attempt's environment variables, laid over ``base_env`` (secrets
    included, never logged)."""
    cwd: Path
    run_dir: Path
    """Logs and heartbeat files go under it."""
    timeout: float | None = None
    """All steps together."""
    heartbeat_interval: float = 10.0
    hung_after: float | None = None
    agent_command: Sequence[str] = ("claude", "-p")
    kill_grace: float = 5.0
    """Seconds between SIGTERM and SIGKILL when an attempt is stopped."""
    base_env: Mapping[str, str] = field(default_factory=dict)
    """The environment every attempt of the run shares (the engine's own, its
    ``PATH`` extended): the same object for all of them, so an executor can
    prepare it once."""
    redact: Sequence[str] = ()
    """Values (secrets) replaced by ``***`` in logs, tails and results."""
    phase: str = "map"
    """``map`` for an item's attempt; ``setup`` or ``reduce`` for one step of
    those phases (its files are named apart from any item's)."""
    allow_background: bool = False
    """Keep what a step leaves running in its process group when it ends
    (``map.allow_background``); by default it is stopped."""
    worktree: Path | None = None
    """The attempt's own git worktree (``map.isolation: worktree``): where a step's
    ``commit_required`` looks for its commit. None: the repository of the step's
    working directory."""
    classify: Sequence[ClassifyRule] = ()
    """The workflow's ``map.classify`` rules: how a step's failure is typed, for its
    ``retry.retry_on``."""
    agent_output: str = "text"
    """``agent.output``: how a ``claude:`` step's run is read."""
    resume_session: str | None = None
    """The agent session the attempt's ``claude:`` step continues (``--resume``): the
    failed attempt's, with ``map.retry.resume_session``."""
    max_budget_usd: float | None = None
    """What the attempt's agent may spend (``--max-budget-usd``): ``budget.max_item_cost_usd``
    less what the item's attempts spent before it."""
    max_item_cost_usd: float | None = None
    """``budget.max_item_cost_usd`` itself (what a step refused for it says)."""


@dataclass(frozen=True)
class HeartbeatSample:
    pid: int | None
    rss: int | None
    cpu: float | None
    output_bytes: int
    touched_at: str | None
    agent: AgentActivity | None = None
    """What the running agent printed so far (``agent.output: claude-stream-json``)."""


@dataclass(frozen=True)
class AttemptOutcome:
    ok: bool
    duration: float
    exit_code: int | None = None
    signal: int | None = None
    timed_out: bool = False
    hung: bool = False
    interrupted: bool = False
    invalid_output: str | None = None
    """Why the result could not be read (``output: json`` that is not JSON)."""
    error_type: str | None = None
    """A failure the engine itself found, typed (``validation_failed``: a value
    that cannot reach a process; ``unknown``: an error in the engine's own
    code). ``error`` says what it was."""
    error: str | None = None
    stderr_tail: str = ""
    stdout_tail: str = ""
    result: Any = None
    result_ref: str | None = None
    """The result's digest in the content store, when it is too large for a record
    (``result`` is then None)."""
    stdout: LogRef | None = None
    stderr: LogRef | None = None
    captures: dict[str, Any] = field(default_factory=dict)
    pgid: int | None = None
    validations: tuple[ValidationRound, ...] = ()
    """Each round of the steps' ``validate``, in order (the outcome events record them)."""
    recovered: tuple[StepRecovery, ...] = ()
    """The steps that failed without ending the attempt: retried or re-run until one
    run succeeded, or recovered by their ``on_failure`` handlers (in the order they ran)."""
    usage: AgentUsage | None = None
    """What its ``claude:`` steps reported spending (``agent.output`` of a Claude format)."""
    worker: str | None = None
    """Where it ran, when that is not this engine's machine (a Dask worker's address)."""


class ExecutorLost(EngineError):
    """The executor can no longer run nor watch attempts (its cluster is gone).

    The run stops (failed, resumable), its running attempts left without an
    outcome: they may still run where they were, so a resume stops them first
    (its reclaim) and then records them interrupted.
    """

    exit_code = 1


class Attempt(abc.ABC):
    """A running attempt."""

    pgid: int | None = None
    """The attempt's process group, where the executor has one."""

    @abc.abstractmethod
    def heartbeats(self) -> AsyncIterator[HeartbeatSample]:
        """Samples every heartbeat interval until the attempt ends."""

    @abc.abstractmethod
    async def wait(self) -> AttemptOutcome:
        """The outcome, once the attempt has ended (its logs are durable)."""

    @abc.abstractmethod
    async def cancel(self, *, force: bool = False) -> None:
        """Stop the attempt; its outcome says ``interrupted``.

        The attempt is cancelled from the call on, not from when the call is
        awaited (a signal handler schedules it for later): a step whose
        process has not started by then never starts one.

        ``force``: no grace period (SIGKILL at once, where there are signals).
        """


class Executor(abc.ABC):
    name: str = ""

    @abc.abstractmethod
    async def start(self, request: AttemptRequest) -> Attempt:
        """Start an attempt; return once it is running."""

    async def connect(self, run_id: str) -> None:  # noqa: B027 - optional hook
        """Reach what runs the attempts, before a new run is created (one that cannot be
        reached is refused then, with no run kept)."""

    async def reclaim(self, run_id: str, run_dir: Path) -> dict[str, int]:
        """Stop whatever an earlier engine left running for ``run_id`` (before a resume).

        ``run_dir`` tells the run apart from one with the same id under another home:
        only processes of this run directory are stopped.

        Returns, per item, how many leftovers were stopped.
        """
        return {}

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release the executor's resources."""
