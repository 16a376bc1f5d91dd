"""A run's worktrees: what its ledger knows, and what only git knows of them.

* :func:`list_worktrees` (``engine worktree list``): every worktree of a run
  (:class:`WorktreeList`): the run's own, every attempt's as the ledger
  knows it with a kept one's head, commits and uncommitted changes read
  from git, and the orphans (:meth:`Isolation.orphans`: worktrees git
  knows, or directories, under the run's worktrees directory that no record
  claims);
* :func:`item_worktrees` (``engine dlq show``): one item's attempts' worktrees.

Reading only: nothing here writes the ledger or takes the run's lock, so it
works on a run an engine holds. The JSON shapes are a contract
(``docs/worktrees.md``): fields are added, never renamed or given another meaning.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import msgspec

from engine.errors import IsolationError
from engine.git import worktrees as wt
from engine.git.isolation import Isolation
from engine.git.repo import Git, GitError, git_environment
from engine.home import RunRef, worktrees_dir
from ledger.events import Event
from projections.replay import Projections, replay
from projections.worktrees import AttemptTree

__all__ = [
    "AttemptWorktree",
    "OrphanWorktree",
    "RunWorktree",
    "WorktreeList",
    "attempt_view",
    "engine_git",
    "item_worktrees",
    "list_worktrees",
    "orphans",
    "run_isolation",
    "run_worktree_id",
    "unreadable",
    "worktree_list",
]


class RunWorktree(msgspec.Struct, kw_only=True):
    """The run's own worktree, on the run's branch."""

    path: str
    branch: str
    """``engine/<run-id>``: every merged item's work."""
    base: str
    """The commit the run's branch started from (the workspace's HEAD when the run began)."""
    repository: str | None
    """The workspace's repository (its top directory)."""
    target_branch: str | None
    """The branch the workspace had checked out when the run began (None: a detached HEAD)."""
    removed: bool
    """``engine worktree clean --all`` removed it (the branch stays)."""
    exists: bool
    """Its directory is there now."""


class AttemptWorktree(msgspec.Struct, kw_only=True):
    """One attempt's worktree."""

    item: str
    attempt: int
    path: str
    branch: str
    base: str
    """The run branch's head the attempt started from."""
    state: str
    """``active`` (created; a failed attempt's stays so), ``committed`` (its merge is
    owed), ``merged`` or ``conflicted``."""
    item_status: str
    """The item's status now: pending, running, succeeded, failed, dead, skipped."""
    kept: bool
    """Its worktree and branch are still there (not removed)."""
    head: str | None
    """The branch's head: recorded when committed, else read from git for a kept one."""
    commits: int | None
    """Commits on the branch since ``base``: recorded when committed, else counted by git
    for a kept one; None when not known (removed before its work was committed)."""
    uncommitted: int | None = None
    """Changes left uncommitted in a kept worktree (at most 100 counted); None when not
    looked at (removed, or its directory is gone)."""
    merge: str | None
    """The merge commit on the run's branch (merged)."""
    conflicts: list[str]
    """The files whose merge conflicted (conflicted)."""
    exists: bool
    """Its directory is there now."""


class OrphanWorktree(msgspec.Struct, kw_only=True):
    """A worktree (or a directory) under the run's worktrees directory that no ledger
    record claims: left by a crash between creating it and recording it, or by hand."""

    path: str
    branch: str | None
    """The branch git has checked out there (None: git has no record of it, or a
    detached HEAD)."""


class WorktreeList(msgspec.Struct, kw_only=True):
    """``engine worktree list --json``."""

    run_id: str
    isolation: bool
    """The run uses ``map.isolation: worktree`` (else every list is empty)."""
    root: str
    """``<home>/worktrees/<run-id>``: where the run's worktrees are."""
    run: RunWorktree | None
    merged: int
    """Items whose work is merged into the run's branch."""
    attempts: list[AttemptWorktree]
    """Every attempt's worktree, in the order they were created."""
    orphans: list[OrphanWorktree] = []


# --- from the ledger ----------------------------------------------------------------


def attempt_view(p: Projections, tree: AttemptTree) -> AttemptWorktree:
    """An attempt's worktree as the ledger knows it."""
    state = p.items.items.get(tree.item)
    return AttemptWorktree(
        item=tree.item,
        attempt=tree.attempt,
        path=tree.path,
        branch=tree.branch,
        base=tree.base,
        state=tree.state,
        item_status=state.status if state is not None else "unknown",
        kept=not tree.removed,
        head=tree.head,
        commits=None if tree.state == "active" else tree.commits,
        merge=tree.merge,
        conflicts=list(tree.conflicts),
        exists=Path(tree.path).is_dir(),
    )


def worktree_list(p: Projections, run_id: str, root: Path) -> WorktreeList:
    """Every worktree the run's ledger knows (orphans are git's: added by the caller)."""
    tree = p.worktrees.run
    run = None
    if tree is not None:
        run = RunWorktree(
            path=tree.path,
            branch=tree.branch,
            base=tree.base,
            repository=tree.repository,
            target_branch=tree.target_branch,
            removed=tree.removed,
            exists=Path(tree.path).is_dir(),
        )
    return WorktreeList(
        run_id=run_id,
        isolation=tree is not None,
        root=str(root),
        run=run,
        merged=len(p.worktrees.merged),
        attempts=[attempt_view(p, t) for t in p.worktrees.attempts.values()],
    )


# --- what git knows ---------------------------------------------------------------


def engine_git() -> Git:
    """Git for reading and removing worktrees (no commit is made: no identity needed)."""
    return Git(git_environment(os.environ))


def _home(ref: RunRef) -> Path:
    """The run's home: worktrees live in ``<home>/worktrees/<run-id>``."""
    return ref.run_dir.parent.parent


def run_worktree_id(ref: RunRef, p: Projections) -> str:
    """The run id its records carry (its branches and worktrees are named by it)."""
    return p.run.run_id or ref.run_id


async def _refused_append(_events: list[Event]) -> None:  # pragma: no cover - never called
    raise AssertionError("listing and cleaning append through the run's writer only")


def run_isolation(ref: RunRef, p: Projections, git: Git, said: list[str]) -> Isolation:
    """The run's :class:`Isolation`, for its orphans and removals (never its merges)."""
    tree = p.worktrees.run
    assert tree is not None
    if not tree.repository:
        raise IsolationError(
            f"{ref.run_id}: the ledger names no repository for the run's worktree",
            path=tree.path,
        )
    return Isolation(
        git=git,
        home=_home(ref),
        run_id=run_worktree_id(ref, p),
        top=Path(tree.repository),
        prefix="",
        projections=p,
        append=_refused_append,
        warn=said.append,
    )


def unreadable(iso: Isolation, exc: GitError | OSError) -> IsolationError:
    """The error for a repository git cannot read (moved or deleted)."""
    return IsolationError(
        f"cannot read the worktrees of the run's repository {iso.top}: {exc}",
        path=str(iso.top),
        hint="was the repository moved or deleted? the ledger's record: engine tail RUN "
        "--type 'worktree.*' --all",
    )


async def _look(git: Git, top: Path, view: AttemptWorktree) -> None:
    """A kept attempt's head, commits and uncommitted changes, from git."""
    if not view.kept:
        return
    try:
        head = await wt.ref(git, top, view.branch)
        if head is not None:
            view.head = head
            if view.commits is None:
                view.commits = await wt.commits_between(git, top, view.base, head)
        if view.exists:
            view.uncommitted = len(await wt.dirty(git, Path(view.path)))
    except (GitError, OSError, ValueError):
        return  # a worktree git cannot read: what the ledger knows is shown


async def orphans(iso: Isolation) -> list[OrphanWorktree]:
    """The run's orphans (:meth:`Isolation.orphans`), each with the branch git has there."""
    listed = {w.path: w.branch for w in await wt.listed_worktrees(iso.git, iso.top)}
    return [OrphanWorktree(path=str(p), branch=listed.get(p)) for p in await iso.orphans()]


async def _inventory(ref: RunRef, p: Projections) -> WorktreeList:
    run_id = run_worktree_id(ref, p)
    view = worktree_list(p, run_id, worktrees_dir(_home(ref), run_id))
    if p.worktrees.run is None:
        return view
    git = engine_git()
    iso = run_isolation(ref, p, git, [])
    try:
        view.orphans = await orphans(iso)
    except (GitError, OSError) as exc:
        raise unreadable(iso, exc) from None
    await asyncio.gather(*(_look(git, iso.top, a) for a in view.attempts))
    return view


def list_worktrees(ref: RunRef, p: Projections | None = None) -> WorktreeList:
    """Every worktree of the run: its own, its attempts', and the orphans."""
    return asyncio.run(_inventory(ref, p if p is not None else replay(ref.ledger)))


def item_worktrees(ref: RunRef, p: Projections, item: str) -> list[AttemptWorktree]:
    """The item's attempts' worktrees (first attempt first), kept ones read from git."""
    trees = p.worktrees.of_item(item)
    views = [attempt_view(p, tree) for tree in trees]
    run = p.worktrees.run
    if run is None or not run.repository or not any(v.kept for v in views):
        return views

    async def look() -> None:
        git = engine_git()
        top = Path(run.repository or "")
        await asyncio.gather(*(_look(git, top, v) for v in views))

    asyncio.run(look())
    return views
