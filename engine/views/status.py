"""The status of a run, as ``engine status`` and ``engine runs`` show it."""

from __future__ import annotations

import difflib
import re
import time
from collections.abc import Iterable

import msgspec

from engine.home import RunRef, effective_status
from engine.views.agents import (
    BudgetView,
    RunningView,
    WaitView,
    agent_line,
    budget_line,
    budget_view,
    running,
    wait_line,
    wait_view,
)
from engine.views.stats import engine_time
from engine.views.worktrees import IsolationStatus, isolation_status
from engine.workflow.error_types import TRANSIENT_ERROR_TYPES
from ledger.payloads_limits import ITEM_BUDGET_SPENT
from ledger.times import epoch
from projections.dlq import DLQEntry, Failure
from projections.items import ItemCounts
from projections.replay import Projections, replay
from projections.stats import SessionsProjection

__all__ = [
    "DLQItemView",
    "RunStatusView",
    "agents_lines",
    "dlq_entries",
    "dlq_view",
    "items_line",
    "status_view",
    "triage",
    "triage_rule",
    "unknown_item",
]


class RunStatusView(msgspec.Struct, kw_only=True, omit_defaults=True):
    run_id: str
    status: str
    """created, running, paused (running, its engine starts nothing until unpaused),
    completed, failed, aborted, or interrupted (running, nobody holds it)."""
    paused: bool
    """The run is paused now (``engine pause``; ``engine unpause`` goes on)."""
    workflow: str | None
    started_at: str | None
    finished_at: str | None
    reason: str | None
    took_s: float | None
    """Time engines spent on the run: its sessions summed (as ``engine stats``'s
    ``wall_s``), so the time between a crash and its resume is not counted; a run an
    engine holds now (running, paused) counts to now. None before any record."""
    run_dir: str
    items: ItemCounts
    attempts: int
    dlq: int
    events: int
    isolation: IsolationStatus | None = None
    """With ``map.isolation: worktree``: the run's branch, how many items it holds, its
    worktree and how to merge it (absent for a run without isolation)."""
    running: list[RunningView] = []
    """The running attempts, oldest first, each with what its agent did so far (absent
    when none runs)."""
    waiting: WaitView | None = None
    """What the run waits for before it starts another attempt: a usage limit's reset
    (absent when it waits for none)."""
    budget: BudgetView | None = None
    """What its agents spent, against the budget when there is one (absent when nothing
    was spent and no budget is set)."""


def status_view(ref: RunRef, p: Projections | None = None) -> RunStatusView:
    """A run's status; ``p``: its projections when they are at hand (the engine's own)."""
    stats = p.find(SessionsProjection) if p is not None else None
    if p is None or stats is None:
        stats = SessionsProjection()
        fresh = replay(ref.ledger, extra=(stats,))
        p = p if p is not None else fresh
    run = p.run
    status = effective_status(p, ref.run_dir)
    return RunStatusView(
        run_id=run.run_id or ref.run_id,
        status=status,
        paused=status == "paused",
        workflow=run.workflow,
        started_at=run.started_at or run.created_at,
        finished_at=run.finished_at,
        reason=run.reason,
        took_s=_took(stats, held=status in ("running", "paused")),
        run_dir=str(ref.run_dir),
        items=p.items.item_counts(),
        attempts=p.items.dispatched,
        dlq=len(p.dlq.dead),
        events=run.events,
        isolation=isolation_status(p),
        running=running(p),
        waiting=None if status in FINISHED else wait_view(p),
        budget=budget_view(p),
    )


FINISHED = frozenset({"completed", "failed", "aborted"})

MAX_RUNNING_LINES = 20
"""The most running items ``engine status`` lists one by one (``--json`` has them all)."""


def items_line(view: RunStatusView) -> str:
    """Where the run's items stand, as ``engine status`` says it."""
    i = view.items
    return (
        f"items     total {i.total:,} · pending {i.pending:,} · running {i.running:,} · "
        f"succeeded {i.succeeded:,} · failed {i.failed:,} · dead {i.dead:,} · "
        f"skipped {i.skipped:,} · duplicate {i.duplicate:,}"
    )


def agents_lines(view: RunStatusView) -> list[str]:
    """What ``engine status`` says of the running agents, a usage-limit wait and the
    budget, a line each (none when there is nothing to say)."""
    lines = [f"running   {agent_line(r)}" for r in view.running[:MAX_RUNNING_LINES]]
    more = len(view.running) - MAX_RUNNING_LINES
    if more > 0:
        lines.append(f"running   ... and {more:,} more (engine status {view.run_id} --json)")
    if view.waiting is not None:
        lines.append(f"waiting   {wait_line(view.waiting)}")
    if view.budget is not None:
        said = view.reason is not None and view.reason.startswith("budget spent")
        line = budget_line(view.budget, view.run_id)
        lines.append(f"budget    {line.partition(';')[0] if said else line}")  # said once
    return lines


def _took(stats: SessionsProjection, *, held: bool) -> float | None:
    """The engines' time on the run; for a run held now, its session counts to now."""
    if stats.last_ts is None:
        return None
    took = engine_time(stats)
    if held:
        took += max(0.0, time.time() - epoch(stats.last_ts))
    return round(took, 6)


def unknown_item(run_id: str, item: str, known: Iterable[str]) -> tuple[str, str]:
    """What to say of an item id the run does not have, and the hint: the ids it may
    have meant (those it starts, or close spellings), else how to list them."""
    ids = list(known)
    close = [i for i in ids if i.startswith(item)][:3] or difflib.get_close_matches(
        item, ids, n=3, cutoff=0.6
    )
    if close:
        hint = "did you mean " + " or ".join(repr(i) for i in close) + "?"
    else:
        hint = f"see the run's item ids: engine tail {run_id} --type item.enqueued --all"
    return f"run {run_id} has no item {item!r}", hint


class DLQItemView(msgspec.Struct, kw_only=True):
    item_id: str
    attempts: int
    error_type: str
    signature: str
    last_error: str
    failed_at: str
    reason: str
    """Why it was dead-lettered: ``retries exhausted``, ``not retryable`` or ``item budget
    spent``."""
    reprocessable: bool
    """Its failures look transient: a retry may well succeed (see :func:`triage`)."""
    needs_review: bool
    """Its failures look like something a person must fix first (see :func:`triage`)."""
    rule: str = ""
    """Which triage rule decided, as a sentence (:func:`triage_rule`)."""


TRANSIENT = frozenset(TRANSIENT_ERROR_TYPES)
REVIEW_TYPES = frozenset({"validation_failed", "merge_conflict"})
REVIEW_PATTERN = re.compile(
    r"permission denied|not permitted|forbidden|unauthori[sz]ed|access denied|"
    r"invalid|malformed|corrupt|checksum|schema|validation",
    re.IGNORECASE,
)


def triage(history: list[Failure], last_type: str, reason: str = "") -> tuple[bool, bool]:
    """(reprocessable, needs_review) of a dead item, from its failure history.

    * ``needs_review``: it spent its budget (``budget.max_item_cost_usd``: a
      retry would not start until it is raised), the last failure is
      ``validation_failed`` or ``merge_conflict``, or any failure's message
      speaks of permissions,
      invalid or corrupt data (permission denied, forbidden, unauthorized,
      invalid, malformed, corrupt, checksum, schema, validation).
    * ``reprocessable``: not ``needs_review``, and the last failure's type is
      transient (timeout, hung, rate_limited, api_error, resource_exhausted,
      worker_lost, interrupted): it ran out of attempts, not of chances.
    """
    reprocessable, review, _rule = triage_rule(history, last_type, reason)
    return reprocessable, review


def triage_rule(history: list[Failure], last_type: str, reason: str = "") -> tuple[bool, bool, str]:
    """:func:`triage`'s answer, and the rule that decided it, as a sentence."""
    if reason == ITEM_BUDGET_SPENT:
        return False, True, "needs review: it spent its cost budget (budget.max_item_cost_usd)"
    if last_type in REVIEW_TYPES:
        return False, True, f"needs review: its last failure is {last_type}"
    for f in history:
        found = REVIEW_PATTERN.search(f.message) or REVIEW_PATTERN.search(f.stderr_tail[-2000:])
        if found:
            return (
                False,
                True,
                f"needs review: attempt {f.attempt}'s output speaks of {found.group(0).lower()!r}",
            )
    if last_type in TRANSIENT:
        return True, False, f"reprocessable: its last failure ({last_type}) is transient"
    return False, False, f"neither: its last failure ({last_type}) is not known to be transient"


def dlq_entries(p: Projections) -> list[DLQEntry]:
    """Every dead item with its whole failure history, oldest first."""
    entries = [e for e in map(p.dlq.entry, p.dlq.dead) if e is not None]
    entries.sort(key=lambda e: (e.failed_at, e.item_id))
    return entries


def dlq_view(p: Projections) -> list[DLQItemView]:
    out = []
    for entry in dlq_entries(p):
        reprocessable, review, rule = triage_rule(entry.history, entry.error_type, entry.reason)
        out.append(
            DLQItemView(
                item_id=entry.item_id,
                attempts=entry.attempts,
                error_type=entry.error_type,
                signature=entry.signature,
                last_error=entry.last_error,
                failed_at=entry.failed_at,
                reason=entry.reason,
                reprocessable=reprocessable,
                needs_review=review,
                rule=rule,
            )
        )
    return out
