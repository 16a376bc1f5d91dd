"""The ledger's records: the envelope around every event payload, and their decoder.

The ledger's envelope (:class:`Record`: ``v``, ``seq``, ``ts``, ``type``,
``run``, ``data``, ``hash``) is kept apart from the payloads
(:mod:`ledger.payloads`): for each payload class a record class is derived
whose tag is the event type, and the union of all of them is decoded by one
reused typed decoder. Every payload class is importable from here too, as
the rest of the code does.

Schema evolution: a field, once written, never changes type or meaning. A new
field always gets a default, so older ledgers decode unchanged. A breaking
change bumps :data:`FORMAT_VERSION` and registers an upcaster
(:mod:`ledger.upcast`) that the reader applies to older records.
"""

from __future__ import annotations

from typing import Union

import msgspec

from ledger.payloads import (
    ArtifactWritten,
    CacheHit,
    CacheMiss,
    DLQPurged,
    Event,
    Heartbeat,
    ItemDeadLettered,
    ItemDispatched,
    ItemDuplicate,
    ItemEnqueued,
    ItemFailed,
    ItemRequeued,
    ItemRetryScheduled,
    ItemSkipped,
    ItemSucceeded,
    LedgerRecovered,
    LeftoverProcess,
    LockAcquired,
    LogRef,
    MapEnqueued,
    PatternAcknowledged,
    RunAborted,
    RunCancelRequested,
    RunCompleted,
    RunCreated,
    RunFailed,
    RunLeftovers,
    RunPaused,
    RunResumed,
    RunStarted,
    RunUnpaused,
    StepFailed,
    StepSkipped,
    StepStarted,
    StepSucceeded,
    ValidationRound,
)
from ledger.payloads_limits import BudgetExhausted, CircuitClosed, CircuitHalfOpen, CircuitOpened
from ledger.payloads_steps import AgentActivity, AgentUsage, StepRecovery
from ledger.payloads_worktree import (
    WorktreeCommitted,
    WorktreeConflicted,
    WorktreeCreated,
    WorktreeMerged,
    WorktreeRemoved,
)

__all__ = [
    "EVENT_TYPES",
    "FORMAT_VERSION",
    "RECORD_TYPES",
    "AgentActivity",
    "AgentUsage",
    "ArtifactWritten",
    "BudgetExhausted",
    "CacheHit",
    "CacheMiss",
    "CircuitClosed",
    "CircuitHalfOpen",
    "CircuitOpened",
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
    "Record",
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
    "StepRecovery",
    "StepSkipped",
    "StepStarted",
    "StepSucceeded",
    "ValidationRound",
    "WorktreeCommitted",
    "WorktreeConflicted",
    "WorktreeCreated",
    "WorktreeMerged",
    "WorktreeRemoved",
    "decode_record",
    "record_decoder",
]

FORMAT_VERSION = 1
"""The ledger format version, written as ``v`` in every record."""


EVENT_TYPES: dict[str, type[Event]] = {
    cls.TYPE: cls
    for cls in (
        RunCreated,
        RunStarted,
        RunResumed,
        RunCompleted,
        RunFailed,
        RunAborted,
        RunLeftovers,
        RunPaused,
        RunUnpaused,
        RunCancelRequested,
        LockAcquired,
        LedgerRecovered,
        StepStarted,
        StepSucceeded,
        StepFailed,
        StepSkipped,
        ItemEnqueued,
        MapEnqueued,
        ItemDuplicate,
        ItemDispatched,
        Heartbeat,
        ItemSucceeded,
        ItemFailed,
        ItemRetryScheduled,
        ItemDeadLettered,
        ItemRequeued,
        DLQPurged,
        ItemSkipped,
        CacheHit,
        CacheMiss,
        CircuitOpened,
        CircuitHalfOpen,
        CircuitClosed,
        BudgetExhausted,
        ArtifactWritten,
        PatternAcknowledged,
        WorktreeCreated,
        WorktreeCommitted,
        WorktreeMerged,
        WorktreeConflicted,
        WorktreeRemoved,
    )
}
"""Every event payload class by its ``type``."""


# --- the envelope ------------------------------------------------------------


class Record(msgspec.Struct, frozen=True, kw_only=True, gc=False, tag_field="type"):
    """One line of the ledger: the envelope around an event payload.

    Field order on disk is ``v, seq, ts, type, run, data, hash``; ``type`` is
    the msgspec tag and is read from ``data.TYPE``.
    """

    v: int
    """Format version (:data:`FORMAT_VERSION`)."""
    seq: int
    """0, 1, 2, ... with no gaps."""
    ts: str
    """RFC 3339 UTC time with microseconds, set by the writer."""
    run: str
    """The run id."""
    data: Event
    """The event payload."""
    hash: str
    """Hex SHA-256 over the previous record's hash and this record's body."""

    @property
    def type(self) -> str:
        return self.data.TYPE


def _record_class(event: type[Event]) -> type[Record]:
    cls: type[Record] = msgspec.defstruct(  # type: ignore[assignment]
        event.__name__ + "Record",
        [("data", event)],
        bases=(Record,),
        tag=event.TYPE,
        frozen=True,
        kw_only=True,
        gc=False,
    )
    return cls


RECORD_TYPES: dict[str, type[Record]] = {t: _record_class(c) for t, c in EVENT_TYPES.items()}
"""The record class of every event type."""

AnyRecord = Union[tuple(RECORD_TYPES.values())]  # type: ignore[valid-type]  # noqa: UP007

record_decoder: msgspec.json.Decoder[Record] = msgspec.json.Decoder(AnyRecord)
"""The one reused typed decoder of ledger records."""

decode_record = record_decoder.decode
