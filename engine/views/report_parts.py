"""The audit report's own folds: what no live projection keeps.

:class:`AuditFold` is an on-demand fold (fed by the report's one replay, never by the
live engine): every engine session (one ``lock.acquired`` to the next), every request
a person made of the run (with who asked), every failed attempt with its exit code,
signal, stderr tail and logs, and each attempt's dispatch seq, idempotency key and
worker. Cross-run failure patterns come from the home's ledgers (DuckDB, imported only
when asked).
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from engine.home import list_runs, patterns_ledger
from engine.views.report_model import AttemptRow, Control, FailedAttempt, Pattern, Session
from ledger.events import (
    EVENT_TYPES,
    DLQPurged,
    ItemDispatched,
    ItemFailed,
    ItemRequeued,
    ItemSucceeded,
    LockAcquired,
    Record,
    RunCancelRequested,
    RunCreated,
    RunPaused,
    RunResumed,
    RunStarted,
    RunUnpaused,
    StepFailed,
)
from projections.base import Projection, handles

__all__ = ["AuditFold", "cross_run_patterns"]

_KINDS: dict[type[Any], str] = {
    RunCreated: "run",
    RunStarted: "run",
    RunResumed: "resume",
    RunPaused: "pause",
    RunUnpaused: "pause",
    RunCancelRequested: "cancel",
    ItemRequeued: "dlq",
    DLQPurged: "dlq",
}
"""The record that tells what a session did (its first such record decides)."""


class AuditFold(Projection):
    """Sessions, controls, failed attempts and attempt details, in ledger order."""

    def __init__(self) -> None:
        self.sessions: list[Session] = []
        self.controls: list[Control] = []
        self.failed: list[FailedAttempt] = []
        self.attempts: dict[str, list[AttemptRow]] = {}

    @handles(*EVENT_TYPES.values())
    def _record(self, record: Record, e: Any) -> None:
        kind = type(e)
        if kind is LockAcquired:
            self._lock(record, e)
        elif self.sessions:
            session = self.sessions[-1]
            session.ended_at = record.ts
            session.records += 1
            if session.kind == "other" and kind in _KINDS:
                session.kind = _KINDS[kind]
            if kind is RunCreated and e.engine_version:
                session.engine_version = e.engine_version
            if kind is RunResumed and e.engine_version:
                session.engine_version = e.engine_version
        if kind is ItemDispatched:
            self._dispatched(record, e)
        elif kind is ItemFailed or kind is ItemSucceeded:
            self._outcome(record, e)
        elif kind is StepFailed:
            self._step_failed(record, e)
        elif kind in _KINDS and kind not in (RunCreated, RunStarted):
            self._control(record, e)

    def _lock(self, record: Record, e: LockAcquired) -> None:
        self.sessions.append(
            Session(
                seq=record.seq,
                kind="other",
                user=e.user,
                host=e.host,
                pid=e.pid,
                command=e.command,
                started_at=e.started_at,
                ended_at=record.ts,
                records=1,
            )
        )

    def _who(self) -> str | None:
        if not self.sessions:
            return None
        s = self.sessions[-1]
        return f"{s.user or '?'}@{s.host} pid {s.pid}"

    def _control(self, record: Record, e: Any) -> None:
        by = getattr(e, "by", None) or None
        detail = ""
        if isinstance(e, RunCancelRequested):
            detail = "force" if e.force else ""
        elif isinstance(e, ItemRequeued):
            detail = f"{e.item}: {e.reason}"
        elif isinstance(e, DLQPurged):
            detail = ", ".join(e.items)
        elif isinstance(e, RunResumed):
            by = self._who()
            parts = ["include dlq"] if e.include_dlq else []
            parts += list(e.changes)
            detail = "; ".join(parts)
        self.controls.append(
            Control(seq=record.seq, ts=record.ts, type=record.type, by=by, detail=detail)
        )

    def _dispatched(self, record: Record, e: ItemDispatched) -> None:
        self.attempts.setdefault(e.item, []).append(
            AttemptRow(
                attempt=e.attempt,
                seq=record.seq,
                dispatched_at=record.ts,
                outcome="no outcome",
                idempotency_key=e.idempotency_key,
                worker=e.worker,
            )
        )

    def _outcome(self, record: Record, e: ItemSucceeded | ItemFailed) -> None:
        for row in reversed(self.attempts.get(e.item, ())):
            if row.attempt == e.attempt:
                row.finished_at = record.ts
                row.duration = e.duration
                row.worker = e.worker or row.worker
                if isinstance(e, ItemSucceeded):
                    row.outcome, row.message = "succeeded", None
                else:
                    row.outcome, row.message = e.error_type, e.message
                break
        if isinstance(e, ItemFailed):
            self.failed.append(
                _failed(record, e, e.item, e.attempt, signature=e.signature, worker=e.worker)
            )

    def _step_failed(self, record: Record, e: StepFailed) -> None:
        self.failed.append(_failed(record, e, f"{e.phase} step {e.index}", 1))

    def to_json(self) -> dict[str, Any]:
        return {"sessions": self.sessions, "controls": self.controls, "failed": self.failed}


def _failed(
    record: Record,
    e: ItemFailed | StepFailed,
    item: str,
    attempt: int,
    *,
    signature: str = "",
    worker: str | None = None,
) -> FailedAttempt:
    """A failed attempt's row, from an item's or a setup or reduce step's failure."""
    return FailedAttempt(
        item=item,
        attempt=attempt,
        seq=record.seq,
        ts=record.ts,
        error_type=e.error_type,
        signature=signature,
        message=e.message,
        exit_code=e.exit_code,
        signal=e.signal,
        duration=e.duration,
        stderr_tail=e.stderr_tail,
        stdout=e.stdout,
        stderr=e.stderr,
        worker=worker,
    )


def _ts(value: Any) -> str:
    if isinstance(value, datetime.datetime):
        return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return "" if value is None else str(value)


def cross_run_patterns(home: Path, signatures: set[str], *, until: str) -> list[Pattern]:
    """The ``failure patterns`` named query over the home's ledgers, for ``signatures``, as
    they stood at ``until`` (records and acknowledgements up to then: the same again later)."""
    if not signatures:
        return []
    from engine.views.query import connect, run_named  # noqa: PLC0415 - DuckDB only here

    ledgers = [r.ledger for r in list_runs(home) if r.ledger.is_file()]
    if not ledgers:
        return []
    con = connect(ledgers, acks=patterns_ledger(home), until=until)
    result = run_named(con, "failure patterns")
    out = []
    for row in result.rows:
        r = dict(zip(result.columns, row, strict=True))
        if r["signature"] not in signatures:
            continue
        out.append(
            Pattern(
                signature=r["signature"],
                error_type=r["error_type"] or "",
                runs=int(r["runs"]),
                count=int(r["count"]),
                first_seen=_ts(r["first_seen"]),
                last_seen=_ts(r["last_seen"]),
                remedy=r["remedy"] or "",
                state=r["state"],
                note=r["ack_note"],
            )
        )
    return out
