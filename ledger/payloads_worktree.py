"""The payloads of the worktree family: a git worktree per attempt, and its merge.

With ``map.isolation: worktree`` every attempt works in its own git worktree
on its own branch; a successful attempt's branch is merged into the run's
branch, one merge at a time, and its item succeeds only once the merge is
recorded. These events say what was created, committed, merged, conflicted
and removed, so that a resume knows where each attempt's work is.
"""

from __future__ import annotations

from typing import ClassVar

from ledger.payloads import Event, ItemSucceeded

__all__ = [
    "WorktreeCommitted",
    "WorktreeConflicted",
    "WorktreeCreated",
    "WorktreeMerged",
    "WorktreeRemoved",
]


class WorktreeCreated(Event, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "worktree.created"
    item: str | None = None
    """The item whose attempt works here; None for the run's own worktree."""
    attempt: int = 0
    """The attempt (1, 2, ...); 0 for the run's worktree."""
    path: str
    """The worktree's directory (absolute)."""
    branch: str
    """The branch checked out in it."""
    base: str
    """The commit the branch starts from: the run branch's head at dispatch (for the
    run's worktree, the workspace's HEAD when the run began)."""
    repository: str | None = None
    """The run's worktree only: the workspace's repository (its top directory)."""
    target_branch: str | None = None
    """The run's worktree only: the branch the workspace had checked out when the run
    began (None: a detached HEAD), what ``merge:`` steps merge into."""


class WorktreeCommitted(Event, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "worktree.committed"
    item: str
    attempt: int
    branch: str
    head: str
    """The branch's head: the commit to merge."""
    commits: int
    """Commits on the branch since its base."""
    shas: list[str] = []
    """Those commits, newest first (at most 1,000)."""
    files: list[str] = []
    """The files they change (at most 1,000)."""
    files_total: int = 0
    """How many files they change in all."""
    leftovers: bool = False
    """The engine committed changes the attempt left uncommitted."""
    outcome: ItemSucceeded
    """The item's success, recorded (as ``item.succeeded``) once its merge is durable; a
    resume that finds the merge done records it from here."""


class WorktreeMerged(Event, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "worktree.merged"
    item: str
    attempt: int
    branch: str
    head: str
    """The branch head that was merged."""
    merge: str
    """The merge commit on the run's branch."""
    resolved_by: str | None = None
    """``on_conflict`` when the workflow's conflict steps finished the merge."""
    found: bool = False
    """A resume found this merge done but not recorded (the head already an ancestor of
    the run's branch): recorded, not repeated."""


class WorktreeConflicted(Event, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "worktree.conflicted"
    item: str
    attempt: int
    branch: str
    head: str
    files: list[str] = []
    """The files with conflicts (at most 100)."""


class WorktreeRemoved(Event, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "worktree.removed"
    item: str | None = None
    attempt: int = 0
    path: str
    branch: str
    reason: str = ""
    """``merged``, ``succeeded`` (nothing to merge), ``clean`` (``engine worktree clean``)."""
