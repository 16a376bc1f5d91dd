"""Run state: the run's status, workflow, lock holders, resumes and recoveries."""

from __future__ import annotations

from typing import Literal

import msgspec

from ledger.events import (
    LedgerRecovered,
    LockAcquired,
    MapEnqueued,
    Record,
    RunAborted,
    RunCancelRequested,
    RunCompleted,
    RunCreated,
    RunFailed,
    RunPaused,
    RunResumed,
    RunStarted,
    RunUnpaused,
)
from projections.base import Projection, handles

__all__ = ["RUN_STATUSES", "LockHolder", "Recovery", "RunProjection", "RunStatus", "RunView"]

RunStatus = Literal["created", "running", "completed", "failed", "aborted"]
"""A run's status as the ledger records it. ``interrupted`` (running with no
live lock holder) is not in the ledger: whoever shows a status probes the
lock and reports it."""

RUN_STATUSES: tuple[RunStatus, ...] = ("created", "running", "completed", "failed", "aborted")


class LockHolder(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    seq: int
    pid: int
    host: str
    command: str
    started_at: str


class Recovery(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    seq: int
    ts: str
    offset: int
    length: int
    moved_to: str
    reason: str


class RunView(msgspec.Struct, kw_only=True):
    """The run projection's JSON form."""

    run_id: str | None
    status: RunStatus
    workflow: str | None
    workflow_path: str | None
    workflow_hash: str | None
    snapshot_id: str | None
    engine_version: str | None
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    reason: str | None
    resumes: int
    paused: bool
    cancel_requested: bool
    lock_holders: list[LockHolder]
    recoveries: list[Recovery]
    events: int
    last_seq: int
    last_ts: str | None


class RunProjection(Projection):
    def __init__(self) -> None:
        self.run_id: str | None = None
        self.status: RunStatus = "created"
        self.workflow: str | None = None
        self.workflow_path: str | None = None
        self.workflow_hash: str | None = None
        self.snapshot_id: str | None = None
        self.engine_version: str | None = None
        self.vars: dict[str, str] = {}
        self.created: RunCreated | None = None
        """The ``run.created`` payload (who ran it, the workflow's copy, the first vars)."""
        self.created_at: str | None = None
        self.started_at: str | None = None
        self.finished_at: str | None = None
        self.reason: str | None = None
        self.resumes = 0
        self.resumed: list[Record] = []
        """Every ``run.resumed`` record."""
        self.paused = False
        """Dispatching is paused (``engine pause``) until ``run.unpaused``."""
        self.cancel_requested = False
        self.cancel_force = False
        self.cancel_by: str | None = None
        self.cache_mode = "use"
        """How the run uses the cache (the last ``run.started`` or ``run.resumed``)."""
        self.executors: list[str] = []
        """Every executor a session of the run ran attempts on, in order of first use
        (``local``, ``dask://HOST:PORT``, ``dask-local``)."""
        self.map_enqueued = False
        """The map's item list is complete in the ledger (``map.enqueued``)."""
        self.lock_holders: list[LockHolder] = []
        self.recoveries: list[Recovery] = []
        self.events = 0
        self.last_seq = -1
        self.last_ts: str | None = None

    def observe(self, record: Record) -> None:
        """Note the newest record (called once per record by ``Projections``)."""
        self.last_seq = record.seq
        self.last_ts = record.ts
        self.events = record.seq + 1

    @handles(RunCreated)
    def _created(self, record: Record, e: RunCreated) -> None:
        self.run_id = record.run
        self.workflow = e.workflow_name
        self.workflow_path = e.workflow_path
        self.workflow_hash = e.workflow_hash
        self.snapshot_id = e.snapshot_id
        self.engine_version = e.engine_version
        self.vars = dict(e.vars)
        self.created = e
        self.created_at = record.ts

    @handles(RunStarted)
    def _started(self, record: Record, e: RunStarted) -> None:
        self.status = "running"
        self.cache_mode = e.cache
        self._ran_on(e.executor)
        self.finished_at = None
        self.reason = None
        if self.started_at is None:
            self.started_at = record.ts

    @handles(RunResumed)
    def _resumed(self, record: Record, e: RunResumed) -> None:
        self.status = "running"
        self.resumes += 1
        self.resumed.append(record)
        self.cancel_requested = self.cancel_force = False
        self.cancel_by = None
        self.cache_mode = e.cache
        self._ran_on(e.executor)
        self.vars.update(e.vars)
        if e.allow_changed and e.workflow_hash:
            self.workflow_hash = e.workflow_hash  # the changed workflow is the run's now
        self.finished_at = None
        self.reason = None
        if self.started_at is None:
            self.started_at = record.ts

    def _ran_on(self, executor: str) -> None:
        if executor not in self.executors:
            self.executors.append(executor)

    @handles(MapEnqueued)
    def _enqueued(self, record: Record, e: MapEnqueued) -> None:
        self.map_enqueued = True

    @handles(RunPaused)
    def _paused(self, record: Record, e: RunPaused) -> None:
        self.paused = True

    @handles(RunUnpaused)
    def _unpaused(self, record: Record, e: RunUnpaused) -> None:
        self.paused = False

    @handles(RunCancelRequested)
    def _cancel(self, record: Record, e: RunCancelRequested) -> None:
        self.cancel_requested = True
        self.cancel_force = self.cancel_force or e.force
        self.cancel_by = self.cancel_by or e.by

    @handles(RunCompleted)
    def _completed(self, record: Record, e: RunCompleted) -> None:
        self.status = "completed"
        self.finished_at = record.ts

    @handles(RunFailed)
    def _failed(self, record: Record, e: RunFailed) -> None:
        self.status = "failed"
        self.finished_at = record.ts
        self.reason = e.reason

    @handles(RunAborted)
    def _aborted(self, record: Record, e: RunAborted) -> None:
        self.status = "aborted"
        self.finished_at = record.ts
        self.reason = e.reason

    @handles(LockAcquired)
    def _lock(self, record: Record, e: LockAcquired) -> None:
        self.run_id = record.run
        self.lock_holders.append(
            LockHolder(
                seq=record.seq, pid=e.pid, host=e.host, command=e.command, started_at=e.started_at
            )
        )

    @handles(LedgerRecovered)
    def _recovered(self, record: Record, e: LedgerRecovered) -> None:
        self.recoveries.append(
            Recovery(
                seq=record.seq,
                ts=record.ts,
                offset=e.offset,
                length=e.length,
                moved_to=e.moved_to,
                reason=e.reason,
            )
        )

    def to_json(self) -> RunView:
        return RunView(
            run_id=self.run_id,
            status=self.status,
            workflow=self.workflow,
            workflow_path=self.workflow_path,
            workflow_hash=self.workflow_hash,
            snapshot_id=self.snapshot_id,
            engine_version=self.engine_version,
            created_at=self.created_at,
            started_at=self.started_at,
            finished_at=self.finished_at,
            reason=self.reason,
            resumes=self.resumes,
            paused=self.paused,
            cancel_requested=self.cancel_requested,
            lock_holders=list(self.lock_holders),
            recoveries=list(self.recoveries),
            events=self.events,
            last_seq=self.last_seq,
            last_ts=self.last_ts,
        )
