"""The status of a run, as ``engine status`` and ``engine runs`` show it."""

from __future__ import annotations

import msgspec

from engine.home import RunRef, effective_status
from projections.items import ItemCounts
from projections.replay import Projections, replay

__all__ = ["DLQItemView", "RunStatusView", "dlq_view", "status_view"]


class RunStatusView(msgspec.Struct, kw_only=True):
    run_id: str
    status: str
    """created, running, completed, failed, aborted, or interrupted (running, nobody holds it)."""
    workflow: str | None
    started_at: str | None
    finished_at: str | None
    reason: str | None
    run_dir: str
    items: ItemCounts
    attempts: int
    dlq: int
    events: int


def status_view(ref: RunRef, p: Projections | None = None) -> RunStatusView:
    p = p if p is not None else replay(ref.ledger)
    run = p.run
    return RunStatusView(
        run_id=run.run_id or ref.run_id,
        status=effective_status(p, ref.run_dir),
        workflow=run.workflow,
        started_at=run.started_at or run.created_at,
        finished_at=run.finished_at,
        reason=run.reason,
        run_dir=str(ref.run_dir),
        items=p.items.item_counts(),
        attempts=p.items.dispatched,
        dlq=len(p.dlq.dead),
        events=run.events,
    )


class DLQItemView(msgspec.Struct, kw_only=True):
    item_id: str
    attempts: int
    error_type: str
    signature: str
    last_error: str
    failed_at: str


def dlq_view(p: Projections) -> list[DLQItemView]:
    out = []
    for item in p.dlq.dead:
        entry = p.dlq.entry(item)
        assert entry is not None
        out.append(
            DLQItemView(
                item_id=entry.item_id,
                attempts=entry.attempts,
                error_type=entry.error_type,
                signature=entry.signature,
                last_error=entry.last_error,
                failed_at=entry.failed_at,
            )
        )
    out.sort(key=lambda d: (d.failed_at, d.item_id))
    return out
