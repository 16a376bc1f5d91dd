"""What a run with isolation keeps tidy: the run's worktree made again on resume (and
recorded), attempt branches left without a worktree deleted, orphans' branches told from
the user's, and the warning about a workspace's uncommitted changes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from engine.run import resume_run
from engine.run.options import RunOptions
from ledger import LedgerReader
from ledger.events import Record
from projections.replay import replay
from tests.engine_helpers import (
    git,
    make_repo,
    projections_json,
    run_workflow,
    write_workflow,
)

FAILING = """
name: upkeep
map:
  isolation: worktree
  items: [one, two]
  id: "${item}"
  max_parallel: 1
  retry: {max_attempts: 1}
  agent_template:
    - run: |
        echo "$ENGINE_ITEM_ID" > "f-$ENGINE_ITEM_ID"
        git add -A && git commit -q -m "$ENGINE_ITEM_ID"
        [ "$ENGINE_ITEM_ID" != two ] || [ -e "$GO" ]
"""


pytestmark = pytest.mark.usefixtures("own_git")


def _failed_run(tmp_path: Path) -> tuple[Path, Path, str]:
    repo = make_repo(tmp_path / "repo")
    wf = write_workflow(repo, FAILING)
    git(repo, "add", "wf.yml")
    git(repo, "commit", "-q", "-m", "wf")
    home = tmp_path / "home"
    go = tmp_path / "go"
    result = run_workflow(wf, home, variables={"GO": str(go)})
    assert result.projections.items.items["two"].status == "dead"
    return repo, home, result.run_id


def _resume(home: Path, run_id: str, go: Path) -> None:
    go.touch()
    run_dir = home / "runs" / run_id
    result = asyncio.run(resume_run(run_dir, RunOptions(include_dlq=True)))
    assert result.exit_code == 0, result.reason
    assert projections_json(result.projections) == projections_json(
        replay(run_dir / "ledger.ndjson")
    )


def test_the_runs_worktree_made_again_on_resume_is_recorded(tmp_path: Path) -> None:
    repo, home, run_id = _failed_run(tmp_path)
    tree = home.resolve() / "worktrees" / run_id / "run"
    git(repo, "worktree", "remove", "--force", str(tree))
    _resume(home, run_id, tmp_path / "go")
    created = [r.data for r in records_of(home, run_id) if r.type == "worktree.created"]
    runs = [e for e in created if e.item is None]
    assert len(runs) == 2 and runs[0].base == runs[1].base, runs
    p = replay(home / "runs" / run_id / "ledger.ndjson")
    assert p.worktrees.run is not None and not p.worktrees.run.removed
    assert (tree / "f-one").is_file() and (tree / "f-two").is_file()


def test_an_attempt_branch_left_without_its_worktree_is_deleted_on_resume(
    tmp_path: Path,
) -> None:
    repo, home, run_id = _failed_run(tmp_path)
    stray = f"engine-item/{run_id}/lost-9"
    git(repo, "branch", stray, "main")
    users = f"engine-item/{run_id}-mine"  # not under the run's prefix: the user's
    git(repo, "branch", users, "main")
    _resume(home, run_id, tmp_path / "go")
    branches = git(repo, "branch", "--format=%(refname:short)").split()
    assert stray not in branches
    assert users in branches
    assert not [b for b in branches if b.startswith(f"engine-item/{run_id}/")]


def test_an_orphan_on_a_branch_of_the_users_goes_and_the_branch_stays(tmp_path: Path) -> None:
    repo, home, run_id = _failed_run(tmp_path)
    git(repo, "branch", "mine", "main")
    orphan = home.resolve() / "worktrees" / run_id / "mine-1"
    git(repo, "worktree", "add", "-q", str(orphan), "mine")
    _resume(home, run_id, tmp_path / "go")
    assert not orphan.exists()
    assert "mine" in git(repo, "branch", "--format=%(refname:short)").split()


def test_the_uncommitted_warning_leaves_the_engines_home_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = make_repo(tmp_path / "repo")
    wf = write_workflow(repo, FAILING)
    git(repo, "add", "wf.yml")
    git(repo, "commit", "-q", "-m", "wf")
    lines: list[str] = []
    (tmp_path / "go").touch()
    run_workflow(wf, repo / ".engine", variables={"GO": str(tmp_path / "go")}, warn=lines.append)
    assert not [line for line in lines if "uncommitted" in line], lines
    assert git(repo, "status", "--porcelain") == ""  # the home in the checkout is ignored
    (repo / "draft.txt").write_text("not committed\n")
    run_workflow(wf, repo / ".engine", variables={"GO": str(tmp_path / "go")}, warn=lines.append)
    (said,) = [line for line in lines if "uncommitted" in line]
    assert "1 uncommitted change (draft.txt)" in said


def records_of(home: Path, run_id: str) -> list[Record]:
    return list(LedgerReader(home / "runs" / run_id / "ledger.ndjson").records())
