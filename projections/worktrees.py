"""Worktrees: the run's worktree and branch, every attempt's worktree, and its merge state.

An attempt's worktree goes ``active`` (created) -> ``committed`` (its work
committed, the merge owed) -> ``merged``; or ``conflicted`` (the merge was
refused); and ``removed`` once its directory and branch are gone. An owed
merge (``committed``, not yet ``merged``) is what a resume must finish.
"""

from __future__ import annotations

import msgspec

from ledger.events import (
    Record,
    WorktreeCommitted,
    WorktreeConflicted,
    WorktreeCreated,
    WorktreeMerged,
    WorktreeRemoved,
)
from projections.base import Projection, handles

__all__ = ["AttemptTree", "RunTree", "WorktreesProjection", "WorktreesView"]


class RunTree(msgspec.Struct, kw_only=True):
    """The run's own worktree and branch."""

    path: str
    branch: str
    base: str
    repository: str | None
    target_branch: str | None
    removed: bool = False


class AttemptTree(msgspec.Struct, kw_only=True):
    """One attempt's worktree."""

    item: str
    attempt: int
    path: str
    branch: str
    base: str
    state: str = "active"
    """``active``, ``committed``, ``merged``, ``conflicted``."""
    head: str | None = None
    commits: int = 0
    shas: list[str] = []
    """Its commits, newest first (bounded), once committed."""
    files: list[str] = []
    """The files they change (bounded)."""
    merge: str | None = None
    conflicts: list[str] = []
    removed: bool = False


class WorktreesView(msgspec.Struct, kw_only=True):
    run: RunTree | None
    attempts: list[AttemptTree]
    merged: int
    """Items whose work is merged into the run's branch."""


class WorktreesProjection(Projection):
    def __init__(self) -> None:
        self.run: RunTree | None = None
        self.attempts: dict[tuple[str, int], AttemptTree] = {}
        self.owed: dict[str, WorktreeCommitted] = {}
        """Items whose work is committed and whose merge is not recorded yet."""
        self.merged: dict[str, WorktreeMerged] = {}
        """Each merged item's merge."""

    def of_item(self, item: str) -> list[AttemptTree]:
        """The item's attempts' worktrees, first attempt first."""
        return sorted(
            (tree for (owner, _), tree in self.attempts.items() if owner == item),
            key=lambda tree: tree.attempt,
        )

    def kept(self) -> list[AttemptTree]:
        """Attempt worktrees not removed, in the order they were created."""
        return [tree for tree in self.attempts.values() if not tree.removed]

    @handles(WorktreeCreated)
    def _created(self, record: Record, e: WorktreeCreated) -> None:
        if e.item is None:
            self.run = RunTree(
                path=e.path,
                branch=e.branch,
                base=e.base,
                repository=e.repository,
                target_branch=e.target_branch,
            )
            return
        self.attempts[(e.item, e.attempt)] = AttemptTree(
            item=e.item, attempt=e.attempt, path=e.path, branch=e.branch, base=e.base
        )

    @handles(WorktreeCommitted)
    def _committed(self, record: Record, e: WorktreeCommitted) -> None:
        tree = self.attempts.get((e.item, e.attempt))
        if tree is not None:
            tree.state, tree.head, tree.commits = "committed", e.head, e.commits
            tree.shas, tree.files = e.shas, e.files
        self.owed[e.item] = e

    @handles(WorktreeMerged)
    def _merged(self, record: Record, e: WorktreeMerged) -> None:
        tree = self.attempts.get((e.item, e.attempt))
        if tree is not None:
            tree.state, tree.head, tree.merge = "merged", e.head, e.merge
        self.owed.pop(e.item, None)
        self.merged[e.item] = e

    @handles(WorktreeConflicted)
    def _conflicted(self, record: Record, e: WorktreeConflicted) -> None:
        tree = self.attempts.get((e.item, e.attempt))
        if tree is not None:
            tree.state, tree.head, tree.conflicts = "conflicted", e.head, list(e.files)
        owed = self.owed.get(e.item)
        if owed is not None and owed.attempt == e.attempt:
            del self.owed[e.item]

    @handles(WorktreeRemoved)
    def _removed(self, record: Record, e: WorktreeRemoved) -> None:
        if e.item is None:
            if self.run is not None:
                self.run.removed = True
            return
        tree = self.attempts.get((e.item, e.attempt))
        if tree is not None:
            tree.removed = True

    def to_json(self) -> WorktreesView:
        return WorktreesView(
            run=self.run, attempts=list(self.attempts.values()), merged=len(self.merged)
        )
