"""Worktrees made and removed side by side, as a map at -j 8 does, all succeed.

git's records of a repository's worktrees (``.git/worktrees/NAME``) are not
safe to change concurrently: two ``git worktree add`` at once, or one beside
a ``git branch -D``, fail with "failed to read .git/worktrees/NAME/commondir".
The engine adds and removes them one at a time.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

from engine.git.isolation import Isolation
from engine.git.repo import Git, git_environment
from ledger.events import WorktreeCreated
from projections.replay import Projections
from projections.worktrees import AttemptTree
from tests.engine_helpers import DEADLINE, within

BATCHES, WIDTH = 8, 12
"""Batches of worktrees made at once, and how many in each."""


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout


def _repository(path: Path) -> str:
    path.mkdir()
    _git(path, "init", "-q", "-b", "main")
    _git(path, "config", "user.name", "Test")
    _git(path, "config", "user.email", "test@example.com")
    (path / "README").write_text("hello\n")
    _git(path, "add", "-A")
    _git(path, "commit", "-q", "-m", "start")
    return _git(path, "rev-parse", "HEAD").strip()


def _trees(events: list[WorktreeCreated]) -> list[AttemptTree]:
    return [
        AttemptTree(item=e.item or "", attempt=e.attempt, path=e.path, branch=e.branch, base=e.base)
        for e in events
    ]


def test_worktrees_added_and_removed_at_once_all_succeed(tmp_path: Path) -> None:
    repo, home = tmp_path / "repo", tmp_path / "home"
    head = _repository(repo)
    warnings: list[str] = []

    async def nothing(events: object) -> None:
        return None

    async def scenario() -> tuple[list[dict[str, str]], int]:
        isolation = Isolation(
            git=Git(git_environment(os.environ)),
            home=home,
            run_id="r",
            top=repo,
            prefix="",
            projections=Projections(),
            append=nothing,
            warn=warnings.append,
        )
        await isolation.open(head, "main")
        failures: list[dict[str, str]] = []
        made: list[WorktreeCreated] = []
        removed = 0
        for batch in range(BATCHES):
            plans = [(f"item-{batch}-{n}", 1) for n in range(WIDTH)]
            # This batch is made while the one before is removed, tree by tree
            # in tasks of their own (as the items that succeeded settle).
            done = await asyncio.gather(
                isolation.prepare(plans), *(isolation.remove([t], "merged") for t in _trees(made))
            )
            events, failed = done[0]
            failures.append(failed)
            removed += sum(len(gone) for gone in done[1:])
            made = [e for e in events if isinstance(e, WorktreeCreated)]
        return failures, removed

    failures, removed = asyncio.run(within(scenario(), DEADLINE, "the worktrees"))
    assert failures == [{}] * BATCHES
    assert warnings == []
    assert removed == (BATCHES - 1) * WIDTH
    listed = _git(repo, "worktree", "list", "--porcelain").count("worktree ")
    assert listed == 1 + 1 + WIDTH  # the checkout, the run's worktree, the last batch
    branches = _git(repo, "branch", "--format=%(refname:short)", "--list", "engine-item/*").split()
    assert len(branches) == WIDTH
