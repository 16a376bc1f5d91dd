"""``engine worktree clean``: a run's kept worktrees and orphans removed, and recorded.

Removed: kept worktrees (failed, dead or interrupted attempts', and those
whose removal failed before) with their branches, and the orphans; with
``everything`` the run's own worktree too, never the run's branch
``engine/<run-id>`` (it holds the merged work). Never one whose item is
running or whose merge is owed: a resume needs it.

Cleaning writes ``worktree.removed`` (reason ``clean``) for each worktree
the ledger knows, so it holds the run's lock for the whole of it, as every
writer does: :class:`~ledger.errors.LedgerLocked` (exit 3, naming the holder)
while an engine holds the run. Holding it also keeps an engine from starting
meanwhile and creating a worktree that would look like an orphan. A
worktree that cannot be removed is one line in :attr:`CleanReport.failures`
and nothing is recorded for it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from engine.git import worktrees as wt
from engine.git.inventory import (
    OrphanWorktree,
    engine_git,
    orphans,
    run_isolation,
    run_worktree_id,
    unreadable,
)
from engine.git.isolation import Isolation
from engine.git.repo import GitError
from engine.home import RunRef
from ledger.errors import LedgerLocked
from ledger.events import Event, WorktreeRemoved
from ledger.lock import RunLock
from ledger.writer import LedgerWriter
from projections.replay import Projections, replay
from projections.worktrees import AttemptTree

__all__ = ["CleanReport", "Cleaned", "clean"]


class Cleaned(msgspec.Struct, kw_only=True):
    """One worktree that clean removed, would remove, left, or could not remove."""

    kind: str
    """``attempt``, ``orphan`` or ``run`` (the run's own worktree, ``--all``)."""
    path: str
    branch: str | None
    """The branch removed with it (an attempt's; an orphan's ``engine-item/<run-id>/<dir>``
    if there is one); the run's branch is never removed."""
    item: str | None = None
    attempt: int | None = None
    why: str | None = None
    """Why it was left (``skipped``), or what failed (``failures``)."""


class CleanReport(msgspec.Struct, kw_only=True):
    """``engine worktree clean --json``."""

    run_id: str
    isolation: bool
    dry_run: bool
    removed: list[Cleaned] = []
    """What was removed (with ``dry_run``: what would be)."""
    skipped: list[Cleaned] = []
    """Kept worktrees clean leaves: their item is running, or their merge is owed."""
    failures: list[Cleaned] = []
    """What could not be removed (one line each in ``why``); nothing recorded for them."""
    run_branch: str | None = None
    """The run's branch, never removed: ``branch_hint`` says how to delete it."""
    branch_hint: str | None = None
    held_by: str | None = None
    """With ``dry_run``: the engine holding the run now (clean itself would refuse)."""


@dataclass
class _Plan:
    trees: list[AttemptTree] = field(default_factory=list)
    orphans: list[Cleaned] = field(default_factory=list)
    run_tree: bool = False
    skipped: list[Cleaned] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.trees or self.orphans or self.run_tree)


def _attempt(tree: AttemptTree, why: str | None = None) -> Cleaned:
    return Cleaned(
        kind="attempt",
        path=tree.path,
        branch=tree.branch,
        item=tree.item,
        attempt=tree.attempt,
        why=why,
    )


async def _orphan(iso: Isolation, orphan: OrphanWorktree) -> Cleaned:
    """An orphan, and the branch :meth:`Isolation.remove_orphans` deletes with it
    (:func:`~engine.git.worktrees.orphan_branch`)."""
    branch = await wt.orphan_branch(iso.git, iso.top, iso.run_id, Path(orphan.path), orphan.branch)
    return Cleaned(kind="orphan", path=orphan.path, branch=branch)


def _leave(p: Projections, tree: AttemptTree, run_id: str) -> str | None:
    """Why clean must leave a kept worktree (None: it may go)."""
    owed = p.worktrees.owed.get(tree.item)
    if owed is not None and owed.attempt == tree.attempt:
        return f"its work is committed and its merge owed: engine resume {run_id} merges it"
    state = p.items.items.get(tree.item)
    if state is not None and state.status == "running":
        return f"item {tree.item} is running (attempt {state.attempts})"
    return None


async def _plan(p: Projections, iso: Isolation, everything: bool) -> _Plan:
    plan = _Plan()
    for tree in p.worktrees.kept():
        why = _leave(p, tree, iso.run_id)
        if why is None:
            plan.trees.append(tree)
        else:
            plan.skipped.append(_attempt(tree, why))
    try:
        plan.orphans = [await _orphan(iso, orphan) for orphan in await orphans(iso)]
    except (GitError, OSError) as exc:
        raise unreadable(iso, exc) from None
    run = p.worktrees.run
    assert run is not None
    plan.run_tree = everything and (not run.removed or Path(run.path).exists())
    return plan


def _report(ref: RunRef, p: Projections, dry_run: bool) -> CleanReport:
    run = p.worktrees.run
    report = CleanReport(run_id=run_worktree_id(ref, p), isolation=run is not None, dry_run=dry_run)
    if run is not None:
        report.run_branch = run.branch
        report.branch_hint = (
            f"the run's branch {run.branch} holds the merged work and stays; to delete it: "
            f"git -C {run.repository} branch -D {run.branch}"
        )
    return report


def _planned(plan: _Plan, iso: Isolation) -> list[Cleaned]:
    out = [_attempt(tree) for tree in plan.trees]
    out += plan.orphans
    if plan.run_tree:
        out.append(Cleaned(kind="run", path=str(iso.path), branch=None))
    return out


async def _clean(ref: RunRef, everything: bool, dry_run: bool) -> CleanReport:
    p = replay(ref.ledger)
    report = _report(ref, p, dry_run)
    if p.worktrees.run is None:
        return report
    holder = RunLock(ref.run_dir).probe()
    if holder is not None and not dry_run:
        raise LedgerLocked(str(ref.run_dir), holder=holder)
    said: list[str] = []
    iso = run_isolation(ref, p, engine_git(), said)
    plan = await _plan(p, iso, everything)
    if dry_run or plan.empty():
        report.removed, report.skipped = _planned(plan, iso), plan.skipped
        if holder is not None:
            report.held_by = LedgerLocked(str(ref.run_dir), holder=holder).message
        return report
    with LedgerWriter.open(
        ref.run_dir, run_worktree_id(ref, p), command="engine worktree clean"
    ) as w:
        p = replay(ref.ledger)  # under the lock: what no engine changes any more
        iso = run_isolation(ref, p, iso.git, said)
        plan = await _plan(p, iso, everything)
        report.skipped = plan.skipped
        await _remove(plan, iso, said, report, w.append)
    return report


async def _remove(
    plan: _Plan,
    iso: Isolation,
    said: list[str],
    report: CleanReport,
    record: Callable[[Event], object],
) -> None:
    """Carry out the plan: each removal recorded as it is done, each failure said
    (``said``: what ``iso`` warned of)."""
    for tree in plan.trees:
        said.clear()
        events = await iso.remove([tree], "clean")
        for event in events:
            record(event)
            report.removed.append(_attempt(tree))
        if not events:
            report.failures.append(_attempt(tree, _line(said, tree.path)))
    if plan.orphans:
        said.clear()
        await iso.remove_orphans()
        for orphan in plan.orphans:
            failed = [line for line in said if orphan.path in line]
            if failed:
                orphan.why = _line(failed, orphan.path)
                report.failures.append(orphan)
            else:
                report.removed.append(orphan)
    run = iso.p.worktrees.run
    if plan.run_tree and run is not None:
        done = Cleaned(kind="run", path=run.path, branch=None)
        try:
            await wt.remove_worktree(iso.git, iso.top, Path(run.path), None)
        except (GitError, OSError) as exc:
            done.why = f"engine: cannot remove the worktree {run.path}: {exc} (kept)"
            report.failures.append(done)
            return
        record(WorktreeRemoved(path=run.path, branch=run.branch, reason="clean"))
        report.removed.append(done)
        with contextlib.suppress(OSError):
            iso.root.rmdir()  # the run's worktrees directory, when nothing is left in it


def _line(said: Iterable[str], path: str) -> str:
    lines = [" ".join(line.split()) for line in said]
    return lines[-1] if lines else f"engine: cannot remove the worktree {path} (kept)"


def clean(ref: RunRef, *, everything: bool = False, dry_run: bool = False) -> CleanReport:
    """Remove the run's kept worktrees and orphans (``everything``: its own worktree
    too); with ``dry_run`` only say what would go. :class:`LedgerLocked` while an
    engine holds the run (not with ``dry_run``)."""
    return asyncio.run(_clean(ref, everything, dry_run))
