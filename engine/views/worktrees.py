"""An isolated run's branch, as ``engine status`` and the summary of ``run`` show it.

From the projections alone; the list of a run's worktrees, which needs git,
is :mod:`engine.git.inventory`'s.
"""

from __future__ import annotations

import msgspec

from projections.replay import Projections

__all__ = ["IsolationStatus", "isolation_status", "merge_command"]


class IsolationStatus(msgspec.Struct, kw_only=True):
    """A run's branch in ``engine status --json`` (and the summary of ``run``/``resume``)."""

    branch: str
    merged: int
    """Items whose work the branch holds."""
    worktree: str
    """The run's worktree (where setup, reduce and merge steps ran)."""
    repository: str | None
    target_branch: str | None
    kept: int
    """Attempt worktrees kept (failed attempts', for debugging): ``engine worktree list``."""
    merge_command: str
    """What brings the run's work to the user's branch, run in ``repository``."""


def merge_command(branch: str) -> str:
    return f"git merge --no-ff {branch}"


def isolation_status(p: Projections) -> IsolationStatus | None:
    """The run's branch, what it holds and what is kept; None without isolation."""
    tree = p.worktrees.run
    if tree is None:
        return None
    return IsolationStatus(
        branch=tree.branch,
        merged=len(p.worktrees.merged),
        worktree=tree.path,
        repository=tree.repository,
        target_branch=tree.target_branch,
        kept=sum(
            1
            for tree in p.worktrees.kept()
            if (state := p.items.items.get(tree.item)) is None or state.status != "running"
        ),
        merge_command=merge_command(tree.branch),
    )
