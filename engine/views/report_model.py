"""The audit report's content, one struct for every format (``engine audit report``).

:func:`engine.views.report.build_report` fills a :class:`Report` from the run's
ledger; the Markdown and HTML renderings show it, the JSON form *is* it (its
schema is ``schemas/report.schema.json``). Every rendering embeds the
report's integrity line (the head seq and hash it was made at), so that
``engine audit verify RUN --report FILE`` can tell whether a report belongs to
the ledger as it stands.
"""

from __future__ import annotations

from typing import Any

import msgspec

from engine.views.stats import RunStats
from engine.views.status import DLQItemView
from ledger.events import LogRef
from projections.receipts import Receipt
from projections.signatures import SignatureStat

__all__ = [
    "REPORT_VERSION",
    "AttemptRow",
    "Control",
    "FailedAttempt",
    "Failures",
    "Identity",
    "Integrity",
    "ItemRow",
    "Outcome",
    "Pattern",
    "Recovery",
    "Report",
    "Session",
    "SnapshotInfo",
    "WorkflowInfo",
]

REPORT_VERSION = 1


class Recovery(msgspec.Struct, kw_only=True):
    """A torn tail the engine moved aside when it opened the ledger (``ledger.recovered``)."""

    seq: int
    ts: str
    offset: int
    length: int
    moved_to: str
    reason: str


class Integrity(msgspec.Struct, kw_only=True):
    """Whether the hash chain verified when the report was made, and where its head was."""

    verified: bool
    problem: str | None = None
    """What failed verification (a corrupt record: its seq, offset and why); None when
    ``verified``."""
    records: int
    head_seq: int
    """The seq of the last record the report covers (-1: an empty ledger)."""
    head_hash: str
    """That record's hash: a report names the ledger it was made of."""
    head_ts: str | None = None
    """That record's time."""
    ledger_bytes: int
    torn_tail: bool = False
    """A torn tail (a record cut by a crash) is at the ledger's end now (a writer will
    move it aside when it opens the ledger)."""
    recoveries: list[Recovery] = []


class Session(msgspec.Struct, kw_only=True):
    """One engine session that wrote the ledger (one ``lock.acquired`` to the next)."""

    seq: int
    kind: str
    """What it did: ``run``, ``resume``, ``pause``, ``cancel``, ``dlq``, or ``other``."""
    user: str | None = None
    host: str
    pid: int
    command: str
    engine_version: str | None = None
    started_at: str
    ended_at: str
    """The time of its last record."""
    records: int
    """How many records it appended."""


class Control(msgspec.Struct, kw_only=True):
    """A request a person made of the run: a pause, an unpause, a cancel, a DLQ requeue or
    purge, a resume."""

    seq: int
    ts: str
    type: str
    """The record's type (``run.paused``, ``run.cancel_requested``, ...)."""
    by: str | None = None
    """Who asked (``user@host pid N``), where recorded."""
    detail: str = ""


class WorkflowInfo(msgspec.Struct, kw_only=True):
    name: str | None = None
    path: str | None = None
    hash: str | None = None
    text: str = ""
    """The frozen workflow, as recorded when the run was created."""
    changes: list[str] = []
    """What resumes with ``--allow-changed`` changed, one line each (``hash: change``)."""


class SnapshotInfo(msgspec.Struct, kw_only=True):
    id: str | None = None
    method: str | None = None
    files: int | None = None
    later: list[str] = []
    """The snapshot ids of the resumes, in order."""


class Identity(msgspec.Struct, kw_only=True):
    """What ran, who ran it, and what they asked of it."""

    run_id: str
    workflow: WorkflowInfo
    snapshot: SnapshotInfo
    engine_version: str | None = None
    """The engine that created the run."""
    created_by: str | None = None
    """``user@host``."""
    sessions: list[Session] = []
    controls: list[Control] = []
    variables: dict[str, str] = {}
    """``env``, then ``--var`` (resumes' included); secrets as ``***``."""
    secrets: list[str] = []
    env_files: list[str] = []


class Outcome(msgspec.Struct, kw_only=True):
    status: str
    reason: str | None = None
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    counts: dict[str, int] = {}
    """Items by status (``succeeded``, ``failed``, ``dead_lettered``, ``skipped``, ...)."""
    stats: RunStats
    """``engine stats``' figures: durations p50/p95/p99, parallel efficiency, retries and
    their time, spend and tokens."""
    cost: dict[str, Any] | None = None
    """The cost section (``engine/views/report_cost.py``); None without agent usage."""


class FailedAttempt(msgspec.Struct, kw_only=True):
    item: str
    attempt: int
    seq: int
    ts: str
    error_type: str
    signature: str
    message: str = ""
    exit_code: int | None = None
    signal: int | None = None
    duration: float = 0.0
    stderr_tail: str = ""
    stdout: LogRef | None = None
    stderr: LogRef | None = None
    """The logs, relative to the run directory."""
    worker: str | None = None


class Pattern(msgspec.Struct, kw_only=True):
    """A failure signature of this run seen across the home's runs."""

    signature: str
    error_type: str
    runs: int
    count: int
    first_seen: str
    last_seen: str
    remedy: str
    state: str
    """``open``, ``acknowledged`` or ``regression``."""
    note: str | None = None
    """The acknowledgement's note, if acknowledged."""


class Failures(msgspec.Struct, kw_only=True):
    attempts: list[FailedAttempt] = []
    """Every failed attempt, in ledger order."""
    by_type: dict[str, int] = {}
    dlq: list[DLQItemView] = []
    """The dead-letter queue, as ``engine dlq list --json`` has it (with each triage's rule)."""
    signatures: list[SignatureStat] = []
    patterns: list[Pattern] = []


class AttemptRow(msgspec.Struct, kw_only=True):
    attempt: int
    seq: int
    """The seq of its ``item.dispatched``."""
    dispatched_at: str
    finished_at: str | None = None
    outcome: str
    """``succeeded``, the failure's error type, or ``no outcome``."""
    duration: float | None = None
    message: str | None = None
    idempotency_key: str
    worker: str | None = None


class ItemRow(msgspec.Struct, kw_only=True):
    item: str
    index: int
    status: str
    """As ``engine status`` has it (a skipped one's with its reason)."""
    error_type: str | None = None
    """The last failure's type, if it failed at all."""
    duration: float = 0.0
    """All its attempts' durations together."""
    attempts: list[AttemptRow] = []
    receipt: Receipt | None = None


class Report(msgspec.Struct, kw_only=True):
    version: int = REPORT_VERSION
    generated_at: str
    """When the report was made (also: when its integrity was checked)."""
    generated_by: str
    """The engine version that made it."""
    integrity: Integrity
    identity: Identity
    outcome: Outcome
    failures: Failures
    items: list[ItemRow]
    """Every item, in enqueue order."""
