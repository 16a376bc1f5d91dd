"""Every event payload of the ledger, as frozen msgspec Structs, by family.

An event's payload (a record's ``data``) is a small frozen Struct whose class
names its ``TYPE``. Adding an event type is one class here and its entry in
:data:`ledger.events.EVENT_TYPES`, which derives its record class; the rest of
the code imports every name of this module from :mod:`ledger.events`.

Schema evolution: a field, once written, never changes type or meaning. A new
field always gets a default, so older ledgers decode unchanged. A change that
cannot follow these rules bumps :data:`~ledger.events.FORMAT_VERSION` and
registers an upcaster (:mod:`ledger.upcast`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec

from ledger.payloads_steps import AgentActivity, AgentUsage, StepRecovery

__all__ = [
    "ArtifactWritten",
    "CacheHit",
    "CacheMiss",
    "DLQPurged",
    "Event",
    "Heartbeat",
    "ItemDeadLettered",
    "ItemDispatched",
    "ItemDuplicate",
    "ItemEnqueued",
    "ItemFailed",
    "ItemRequeued",
    "ItemRetryScheduled",
    "ItemSkipped",
    "ItemSucceeded",
    "LedgerRecovered",
    "LeftoverProcess",
    "LockAcquired",
    "LogRef",
    "MapEnqueued",
    "PatternAcknowledged",
    "RunAborted",
    "RunCancelRequested",
    "RunCompleted",
    "RunCreated",
    "RunFailed",
    "RunLeftovers",
    "RunPaused",
    "RunResumed",
    "RunStarted",
    "RunUnpaused",
    "StepFailed",
    "StepSkipped",
    "StepStarted",
    "StepSucceeded",
    "ValidationRound",
]


class Event(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Base of every event payload. ``TYPE`` is the record's ``type``."""

    TYPE: ClassVar[str] = ""


class LogRef(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A file under the run directory, named by its path and content hash."""

    path: str
    """Path relative to the run directory."""
    sha256: str
    """``sha256:<hex>`` of the file's bytes."""
    size: int
    """Size in bytes."""


# --- run lifecycle ---------------------------------------------------------


class RunCreated(Event, frozen=True):
    TYPE: ClassVar[str] = "run.created"
    workflow_name: str
    """The workflow's ``name``."""
    workflow_path: str
    """Where the workflow was loaded from (as given by the user)."""
    workflow_hash: str
    """``sha256:<hex>`` of the workflow as the run keeps it (``workflow``, the run's
    ``workflow.yml``): the file's bytes, with each secret entry's value as ``***``."""
    workflow: str = ""
    """A copy of the workflow file's text, frozen at creation (secret entries' values
    as ``***``)."""
    workflow_ref: str | None = None
    """``sha256:<hex>`` of the workflow file's bytes in the content store
    (``<home>/store/sha256/<first 2 hex>/<hex>``) when the file is too large
    to copy into the record; ``workflow`` is then empty."""
    snapshot_id: str | None = None
    """The workspace snapshot (``snap-<12 hex>``), when one was taken."""
    vars: dict[str, str] = {}
    """Variables given with ``--var`` (secrets are never recorded)."""
    profile: str | None = None
    """The workflow's profile the run uses (``--profile``); a resume keeps it."""
    env_files: dict[str, str] = {}
    """The variables read from the workflow's ``env_files`` when the run was created
    (secrets as ``***``): a resume uses these, not the files as they are then."""
    engine_version: str = ""
    user: str = ""
    host: str = ""


class RunStarted(Event, frozen=True):
    TYPE: ClassVar[str] = "run.started"
    pid: int
    host: str
    max_parallel: int | None = None
    executor: str = "local"
    cache: str = "use"
    """``use``, ``refresh`` (run everything, store results) or ``off`` (--no-cache)."""


class RunResumed(Event, frozen=True):
    TYPE: ClassVar[str] = "run.resumed"
    pid: int
    host: str
    include_dlq: bool = False
    allow_changed: bool = False
    workflow_hash: str = ""
    """The workflow this resume runs (differs from ``run.created``'s only with
    ``allow_changed``)."""
    changes: list[str] = []
    """What changed in the workflow, one line per field (with ``allow_changed``)."""
    snapshot_id: str | None = None
    """The workspace snapshot at this resume."""
    engine_version: str = ""
    """The engine that resumes it (``run.created`` names the first)."""
    executor: str = "local"
    """Where this session runs attempts, as ``run.started`` says it."""
    max_parallel: int | None = None
    cache: str = "use"
    """As ``run.started``: a resume keeps the run's cache mode unless told otherwise."""
    vars: dict[str, str] = {}
    """Variables given anew for this resume (``engine run --run-id ID --var K=V``;
    secrets as ``***``)."""
    max_cost_usd: float | None = None
    """The run's budget from this resume on (``engine resume --budget``), in USD."""


class RunPaused(Event, frozen=True):
    TYPE: ClassVar[str] = "run.paused"
    by: str = ""
    """Who asked (``user@host pid``)."""


class RunUnpaused(Event, frozen=True):
    TYPE: ClassVar[str] = "run.unpaused"
    by: str = ""


class RunCancelRequested(Event, frozen=True):
    TYPE: ClassVar[str] = "run.cancel_requested"
    by: str = ""
    force: bool = False
    """Kill running attempts at once (SIGKILL), with no grace period."""


class RunCompleted(Event, frozen=True):
    TYPE: ClassVar[str] = "run.completed"
    succeeded: int = 0
    failed: int = 0
    dead: int = 0
    skipped: int = 0


class RunFailed(Event, frozen=True):
    TYPE: ClassVar[str] = "run.failed"
    reason: str


class RunAborted(Event, frozen=True):
    TYPE: ClassVar[str] = "run.aborted"
    reason: str
    signal: int | None = None


class LeftoverProcess(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A process of the run still alive after the step that started it ended."""

    pid: int
    pgid: int
    item: str = ""
    """The item (or ``setup-N``/``reduce-N``) of the attempt it came from."""
    command: str = ""
    """Its command line (at most 300 characters)."""


class RunLeftovers(Event, frozen=True):
    TYPE: ClassVar[str] = "run.leftovers"
    processes: list[LeftoverProcess] = []
    """Processes carrying the run's ``ENGINE_RUN_ID`` still alive as the run
    ends: they left their step's process group (``setsid``), or were kept
    (``map.allow_background``)."""
    stopped: bool = True
    """Whether the engine stopped them (not with ``map.allow_background``)."""


class LockAcquired(Event, frozen=True):
    TYPE: ClassVar[str] = "lock.acquired"
    pid: int
    host: str
    command: str
    started_at: str
    user: str | None = None
    """Who the session runs as."""


class LedgerRecovered(Event, frozen=True):
    TYPE: ClassVar[str] = "ledger.recovered"
    offset: int
    """Byte offset at which the torn tail started (the new end of file)."""
    length: int
    """How many bytes were moved aside."""
    moved_to: str
    """File name (in the run directory) that keeps the torn bytes."""
    reason: str


# --- setup / reduce steps --------------------------------------------------


class ValidationRound(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One round of a step's ``validate``: its validation steps run and their result read."""

    step: int
    """The validated step's index among its sequence's steps (0, 1, ...)."""
    round: int
    """1, 2, ...: the first validation, then one more after each run of ``on_incomplete``."""
    completion: float
    """The percentage the result reported (0 when it could not be read)."""
    threshold: float
    """The percentage the step needs (``validate.threshold``)."""
    complete: bool
    """``completion >= threshold``."""
    reason: str | None = None
    """Why the result could not be read (missing, not JSON, a validation step's failure)."""


class StepStarted(Event, frozen=True):
    TYPE: ClassVar[str] = "step.started"
    phase: str
    """``setup``, ``reduce``, ``merge``, or ``on_conflict`` (an item's merge conflict)."""
    index: int
    name: str = ""
    command: str = ""
    item: str | None = None
    """The item an ``on_conflict`` step is for."""


class StepSucceeded(Event, frozen=True):
    TYPE: ClassVar[str] = "step.succeeded"
    phase: str
    index: int
    duration: float = 0.0
    exit_code: int = 0
    captured: str | None = None
    """Name of the capture this step set, if any."""
    captured_value: Any = None
    """The captured value (secrets redacted), so a resume can restore it; a
    large one is stored in the content store and referenced as
    ``{"$blob": "sha256:<hex>"}``."""
    stdout: LogRef | None = None
    stderr: LogRef | None = None
    validations: list[ValidationRound] = []
    recovered: list[StepRecovery] = []
    usage: AgentUsage | None = None


class StepFailed(Event, frozen=True):
    TYPE: ClassVar[str] = "step.failed"
    phase: str
    index: int
    error_type: str
    message: str = ""
    duration: float = 0.0
    exit_code: int | None = None
    signal: int | None = None
    stderr_tail: str = ""
    stdout: LogRef | None = None
    stderr: LogRef | None = None
    validations: list[ValidationRound] = []
    recovered: list[StepRecovery] = []
    usage: AgentUsage | None = None


class StepSkipped(Event, frozen=True):
    TYPE: ClassVar[str] = "step.skipped"
    phase: str
    index: int
    reason: str = ""


# --- items -----------------------------------------------------------------


class ItemEnqueued(Event, frozen=True):
    TYPE: ClassVar[str] = "item.enqueued"
    item: str
    """The item's id."""
    index: int
    """Position among the map's items, after filter, sort and offset."""
    value: Any = None
    """The item itself, as loaded."""
    value_ref: str | None = None
    """``sha256:<hex>`` of the item's JSON in the content store
    (``<home>/store/sha256/<first 2 hex>/<hex>``) when it is too large to keep
    in the record; ``value`` is then null."""


class MapEnqueued(Event, frozen=True):
    TYPE: ClassVar[str] = "map.enqueued"
    total: int
    """Items enqueued (duplicates not counted): the map's item list is complete."""
    duplicates: int = 0
    source: str = ""
    """Where the items came from: ``input`` (a file), ``command``, ``items`` (inline), or
    ``input_command`` (``map.input`` run as a command: no such file, ``input_missing:
    command``); empty in ledgers written before it was recorded."""


class ItemDuplicate(Event, frozen=True):
    TYPE: ClassVar[str] = "item.duplicate"
    item: str
    index: int
    first_index: int
    """Index of the first item that had this id."""


class ItemDispatched(Event, frozen=True):
    TYPE: ClassVar[str] = "item.dispatched"
    item: str
    attempt: int
    idempotency_key: str
    worker: str = "local"
    pgid: int | None = None
    resumes_session: str | None = None
    """The agent session this attempt continues (``retry.resume_session``): the failed
    attempt's, passed to its ``claude:`` step as ``--resume``."""


class Heartbeat(Event, frozen=True):
    TYPE: ClassVar[str] = "heartbeat"
    item: str
    attempt: int
    pid: int | None = None
    rss: int | None = None
    """Resident memory of the attempt's process group, bytes."""
    cpu: float | None = None
    """CPU seconds used by the attempt's process group so far."""
    output_bytes: int = 0
    touched_at: str | None = None
    """Last modification of ``ENGINE_HEARTBEAT_FILE``, RFC 3339."""
    agent: AgentActivity | None = None
    """What the running agent said so far (``agent.output: claude-stream-json``)."""


class ItemSucceeded(Event, frozen=True):
    TYPE: ClassVar[str] = "item.succeeded"
    item: str
    attempt: int
    duration: float = 0.0
    exit_code: int = 0
    result: Any = None
    stdout: LogRef | None = None
    stderr: LogRef | None = None
    result_ref: str | None = None
    """``sha256:<hex>`` of the result's JSON in the content store
    (``<home>/store/sha256/<first 2 hex>/<hex>``) when it is too large to keep
    in the record; ``result`` is then null."""
    validations: list[ValidationRound] = []
    """Each round of the step's ``validate`` (of every validated step), in order."""
    recovered: list[StepRecovery] = []
    """The steps that failed and did not end it (retried, re-run or recovered), in order."""
    usage: AgentUsage | None = None
    """What the agent's steps reported spending (``agent.output`` of a Claude format)."""
    worker: str | None = None
    """The Dask worker it ran on (its address); None: on the engine's machine."""


class ItemFailed(Event, frozen=True):
    TYPE: ClassVar[str] = "item.failed"
    item: str
    attempt: int
    error_type: str
    signature: str
    message: str = ""
    duration: float = 0.0
    exit_code: int | None = None
    signal: int | None = None
    stderr_tail: str = ""
    resources: dict[str, float] = {}
    stdout: LogRef | None = None
    stderr: LogRef | None = None
    validations: list[ValidationRound] = []
    recovered: list[StepRecovery] = []
    usage: AgentUsage | None = None
    resets_at: str | None = None
    """When the limit it hit resets (RFC 3339): a usage limit's reset, as the agent said."""
    worker: str | None = None
    """The Dask worker it ran on, or was lost with (its address)."""


class ItemRetryScheduled(Event, frozen=True):
    TYPE: ClassVar[str] = "item.retry_scheduled"
    item: str
    attempt: int
    """The attempt that failed; the retry will be ``attempt + 1``."""
    delay: float
    """Seconds to wait before the next attempt."""
    not_before: str
    """RFC 3339 time before which the next attempt must not start."""
    counted: bool = True
    """False: the failed attempt does not count against ``retry.max_attempts`` (it
    waits for a usage limit's reset)."""


class ItemDeadLettered(Event, frozen=True):
    TYPE: ClassVar[str] = "item.dead_lettered"
    item: str
    attempt: int
    error_type: str
    signature: str
    reason: str = ""


class ItemRequeued(Event, frozen=True):
    TYPE: ClassVar[str] = "item.requeued"
    item: str
    reason: str = "dlq retry"


class DLQPurged(Event, frozen=True):
    TYPE: ClassVar[str] = "dlq.purged"
    items: list[str]
    """Dead items hidden from the DLQ (their records stay in the ledger)."""
    by: str = ""


class ItemSkipped(Event, frozen=True):
    TYPE: ClassVar[str] = "item.skipped"
    item: str
    reason: str
    """``cache`` (a cache hit) or ``done`` (already succeeded)."""
    cache_key: str | None = None
    result: Any = None
    result_ref: str | None = None
    """``sha256:<hex>`` of the result's JSON in the content store
    (``<home>/store/sha256/<first 2 hex>/<hex>``) when it is too large to keep
    in the record; ``result`` is then null."""


class CacheHit(Event, frozen=True):
    TYPE: ClassVar[str] = "cache.hit"
    item: str
    key: str


class CacheMiss(Event, frozen=True):
    TYPE: ClassVar[str] = "cache.miss"
    item: str
    key: str
    reason: str = ""
    """Why a cached entry could not be used (empty: there was none)."""


class ArtifactWritten(Event, frozen=True):
    TYPE: ClassVar[str] = "artifact.written"
    item: str
    attempt: int
    path: str
    sha256: str
    size: int
    status: str = "stored"
    """``stored``, ``restored`` or ``nochange``."""


# --- remediation (the patterns ledger under the home directory) ------------------


class PatternAcknowledged(Event, frozen=True):
    TYPE: ClassVar[str] = "pattern.acknowledged"
    signature: str
    """The failure signature that was addressed."""
    note: str
    ref: str | None = None
    """A commit, ticket or link for the fix."""
    by: str = ""
