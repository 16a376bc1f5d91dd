"""``engine audit report``: a run's audit trail for review, built from its ledger.

:func:`build_report` fills one :class:`~engine.views.report_model.Report` in one
replay: integrity (did the hash chain verify, head seq and hash), identity (workflow,
snapshot, every engine session, every request made of the run, variables with secrets
as ``***``), outcome (counts, ``engine stats``' figures, cost), failures (every failed
attempt, the dead-letter queue with its triage rule, signatures, and, given the home,
patterns across runs) and every item with its attempts and receipt. The renderings are
``engine/views/report_md.py`` and ``engine/views/report_html.py``; the JSON form is
the Report itself. Nothing here reads the clock but for ``generated_at`` (``now``), so
a report can be rebuilt byte for byte (``engine audit verify RUN --report FILE``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from engine import engine_version
from engine.views.report_cost import cost_of
from engine.views.report_model import (
    Failures,
    Identity,
    Integrity,
    ItemRow,
    Outcome,
    Recovery,
    Report,
    SnapshotInfo,
    WorkflowInfo,
)
from engine.views.report_parts import AuditFold, cross_run_patterns
from engine.views.stats import stats_of
from engine.views.status import dlq_view
from engine.workflow.load import load_yaml
from ledger.errors import LedgerCorrupt
from ledger.events import RunCreated, RunResumed
from ledger.times import utc_now
from projections.receipts import ReceiptsProjection
from projections.replay import Projections, replay
from projections.stats import StatsProjection
from projections.timeline import TimelineProjection

__all__ = ["build_report"]


class _Folds:
    def __init__(self) -> None:
        self.timeline = TimelineProjection()
        self.stats = StatsProjection()
        self.receipts = ReceiptsProjection(keep=True)
        self.audit = AuditFold()

    def all(self) -> tuple[Any, ...]:
        return (self.timeline, self.stats, self.receipts, self.audit)


def _replay(ledger: Path, until: int | None) -> tuple[Projections, _Folds, str | None]:
    """The projections of the ledger (up to ``until``); on corruption, of the records
    before the corrupt one, with the problem."""
    folds = _Folds()
    try:
        return replay(ledger, until=until, extra=folds.all()), folds, None
    except LedgerCorrupt as exc:
        problem = f"seq {exc.seq} at byte offset {exc.offset}: {exc.reason}"
        last = exc.seq - 1 if until is None else min(exc.seq - 1, until)
        folds = _Folds()
        if last < 0:
            return Projections(extra=folds.all()), folds, problem
        return replay(ledger, until=last, extra=folds.all()), folds, problem


def build_report(
    run_dir: Path,
    *,
    home: Path | None = None,
    now: str | None = None,
    until: int | None = None,
    patterns: bool = True,
) -> Report:
    """The run's report. ``home``: read a large workflow from its store and (with
    ``patterns``) add the failure patterns across its runs; ``now``: the report's
    ``generated_at``; ``until``: cover the records up to that seq only."""
    p, folds, problem = _replay(run_dir / "ledger.ndjson", until)
    receipts = folds.receipts.receipts
    items = _items(p, folds, receipts)
    by_type = _by_type(folds)
    signatures = p.signatures.to_json().signatures
    now = now or utc_now()
    recurring = (
        cross_run_patterns(home, {s.signature for s in signatures}, until=now)
        if home is not None and patterns
        else []
    )
    return Report(
        generated_at=now,
        generated_by=engine_version(),
        integrity=_integrity(p, problem),
        identity=_identity(run_dir, home, p, folds),
        outcome=_outcome(p, folds, items, by_type),
        failures=Failures(
            attempts=folds.audit.failed,
            by_type=by_type,
            dlq=dlq_view(p),
            signatures=signatures,
            patterns=recurring,
        ),
        items=items,
    )


def _integrity(p: Projections, problem: str | None) -> Integrity:
    scan = p.scan
    records = scan.records if scan is not None else 0
    return Integrity(
        verified=problem is None,
        problem=problem,
        records=records,
        head_seq=records - 1,
        head_hash=scan.last_hash.decode() if scan is not None else "",
        head_ts=p.run.last_ts,
        ledger_bytes=scan.end_offset if scan is not None else 0,
        torn_tail=scan is not None and scan.torn is not None,
        recoveries=[Recovery(**msgspec.structs.asdict(r)) for r in p.run.recoveries],
    )


def _identity(run_dir: Path, home: Path | None, p: Projections, folds: _Folds) -> Identity:
    run = p.run
    created = run.created
    text = _workflow_text(home, created)
    secrets, variables = _variables(text, created, run.resumed)
    resumes = [r.data for r in run.resumed if isinstance(r.data, RunResumed)]
    changes = [f"{r.workflow_hash}: {c}" for r in resumes for c in r.changes]
    return Identity(
        run_id=run.run_id or run_dir.name,
        workflow=WorkflowInfo(
            name=run.workflow,
            path=run.workflow_path,
            hash=run.workflow_hash,
            text=text,
            changes=changes,
        ),
        snapshot=_snapshot(run_dir, run.snapshot_id, [r.snapshot_id for r in resumes]),
        engine_version=run.engine_version,
        created_by=f"{created.user}@{created.host}" if created is not None else None,
        sessions=folds.audit.sessions,
        controls=folds.audit.controls,
        variables=variables,
        secrets=secrets,
        env_files=[f"{k} ({v})" for k, v in sorted(created.env_files.items())]
        if created is not None
        else [],
    )


def _workflow_text(home: Path | None, created: RunCreated | None) -> str:
    """The frozen workflow as recorded (from the content store when too large to inline)."""
    if created is None:
        return ""
    if created.workflow or created.workflow_ref is None:
        return created.workflow
    ref = created.workflow_ref
    digest = ref.split(":", 1)[-1]
    if home is not None:
        try:
            return (home / "store" / "sha256" / digest[:2] / digest).read_text()
        except (OSError, UnicodeDecodeError):
            pass
    return f"# the workflow is in the home's content store as {ref}\n"


def _variables(
    text: str, created: RunCreated | None, resumed: list[Any]
) -> tuple[list[str], dict[str, str]]:
    """The workflow's secrets, and the variables: ``env``, then ``--var`` (the resumes'
    too); secrets as ``***``."""
    secrets: list[str] = []
    env: dict[str, str] = {}
    try:
        spec = load_yaml(text) if text else {}
        if isinstance(spec, dict):
            secrets = [str(s) for s in spec.get("secrets") or []]
            env = {str(k): str(v) for k, v in (spec.get("env") or {}).items()}
    except Exception:
        pass
    variables = {**env, **(created.vars if created is not None else {})}
    for record in resumed:
        if isinstance(record.data, RunResumed):
            variables.update(record.data.vars)
    variables.update(dict.fromkeys(secrets, "***"))
    return secrets, dict(sorted(variables.items()))


def _snapshot(run_dir: Path, snapshot_id: str | None, later: list[str | None]) -> SnapshotInfo:
    """The workspace snapshot: its id, and its manifest's method and size when present."""
    info = SnapshotInfo(id=snapshot_id, later=[s for s in later if s])
    try:
        manifest = msgspec.json.decode((run_dir / "snapshot.json").read_bytes())
        info.method = manifest.get("method")
        info.files = len(manifest.get("files", {}))
    except (OSError, msgspec.DecodeError, AttributeError):
        pass
    return info


def _items(p: Projections, folds: _Folds, receipts: dict[str, Any]) -> list[ItemRow]:
    """Every enqueued item in index order, with its status, attempts and receipt."""
    states = sorted(p.items.items.values(), key=lambda s: s.index)
    skips = folds.timeline.skip_reasons
    out = []
    for s in states:
        attempts = folds.audit.attempts.get(s.item, [])
        failed = [a.outcome for a in attempts if a.outcome not in ("succeeded", "no outcome")]
        reason = skips.get(s.item)
        status = f"skipped ({reason})" if s.status == "skipped" and reason else s.status
        out.append(
            ItemRow(
                item=s.item,
                index=s.index,
                status=status,
                error_type=failed[-1] if failed else None,
                duration=round(sum(a.duration or 0.0 for a in attempts), 6),
                attempts=attempts,
                receipt=receipts.get(s.item) if s.status == "succeeded" else None,
            )
        )
    return out


def _by_type(folds: _Folds) -> dict[str, int]:
    counts: dict[str, int] = {}
    for f in folds.audit.failed:
        counts[f.error_type] = counts.get(f.error_type, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _outcome(
    p: Projections, folds: _Folds, items: list[ItemRow], by_type: dict[str, int]
) -> Outcome:
    run = p.run
    counts = msgspec.to_builtins(p.items.item_counts())
    return Outcome(
        status=run.status,
        reason=run.reason,
        created_at=run.created_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
        counts={k: v for k, v in counts.items() if isinstance(v, int)},
        stats=stats_of(folds.stats),
        cost=cost_of(
            folds.stats,
            attempts={i.item: len(i.attempts) for i in items},
            status={i.item: i.status for i in items},
            failures=by_type,
        ),
    )
