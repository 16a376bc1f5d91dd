"""What an attempt may leave in its worktree, and what reaches the user's repository:
the engine refuses to commit or merge a half-done git operation, a switched branch or a
nested repository; never forgets the user's own worktrees; keeps a caller's GIT_DIR away
from the steps; and a cancel while a conflict is handled interrupts, it does not fail."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ledger import LedgerReader
from ledger.events import Record
from projections.replay import replay
from tests.engine_helpers import (
    DEADLINE,
    assert_replays,
    git,
    make_repo,
    records,
    run_workflow,
    unique_run_id,
    wait_for,
    write_workflow,
)

ONE = """
name: guards
map:
  isolation: worktree
  items: [only]
  id: "${item}"
  retry: {max_attempts: 1}
  agent_template:
    - run: |
STEP
"""


pytestmark = pytest.mark.usefixtures("own_git")


def _run(tmp_path: Path, step: str, **options: object):  # type: ignore[no-untyped-def]
    repo = make_repo(tmp_path / "repo", {"shared.txt": "base\n"})
    body = "\n".join("        " + line for line in step.strip().splitlines())
    wf = write_workflow(repo, ONE.replace("STEP", body))
    git(repo, "add", "wf.yml")
    git(repo, "commit", "-q", "-m", "wf")
    result = run_workflow(wf, tmp_path / "home", **options)
    assert_replays(result)
    return repo, result


@pytest.mark.parametrize(
    ("step", "said"),
    [
        (
            "git checkout -q -b other HEAD && echo o > shared.txt && git commit -qam o\n"
            'git checkout -q "$ENGINE_RUN_BRANCH" -- . 2>/dev/null; git checkout -q -\n'
            "echo mine > shared.txt && git commit -qam mine\n"
            "git merge -q other || true",
            "a merge in progress",
        ),
        (
            "echo s > s.txt && git add s.txt && git commit -qm s\n"
            "git checkout -q -b elsewhere HEAD~1",
            "its branch engine-item/",
        ),
        ("git init -q vendor && echo f > vendor/f && git -C vendor add f", "a git repository"),
    ],
    ids=["merge left in progress", "branch switched", "nested repository"],
)
def test_what_the_engine_will_not_commit_or_merge(tmp_path: Path, step: str, said: str) -> None:
    repo, result = _run(tmp_path, step)
    state = result.projections.items.items["only"]
    assert state.status == "dead"
    (failed,) = [r.data for r in records(result, "item.failed")]
    assert failed.error_type == "validation_failed" and said in failed.message, failed.message
    assert not records(result, "worktree.committed")
    assert git(repo, "rev-parse", f"engine/{result.run_id}") == git(repo, "rev-parse", "main")
    (kept,) = result.projections.worktrees.kept()
    assert Path(kept.path).is_dir()  # the work is still there, for a person to look at


def test_the_engine_never_forgets_the_users_own_worktrees(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    mine = tmp_path / "mine"
    git(repo, "worktree", "add", "-q", str(mine), "-b", "feature")
    away = tmp_path / "mine.away"  # an unmounted disk, a moved directory: back later
    mine.rename(away)
    wf = write_workflow(
        repo, ONE.replace("STEP", "        echo x > x && git add x && git commit -qm x")
    )
    git(repo, "add", "wf.yml")
    git(repo, "commit", "-q", "-m", "wf")
    result = run_workflow(wf, tmp_path / "home")
    assert result.exit_code == 0
    away.rename(mine)
    assert git(mine, "symbolic-ref", "--short", "HEAD").strip() == "feature"


def test_a_callers_git_dir_does_not_reach_the_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = make_repo(tmp_path / "repo")
    monkeypatch.setenv("GIT_DIR", str(repo / ".git"))
    monkeypatch.setenv("GIT_WORK_TREE", str(repo))
    step = "git switch -q -c agent-work && echo a > a && git add a && git commit -qm a"
    wf = write_workflow(repo, ONE.replace("STEP", "        " + step))
    git(repo, "add", "wf.yml")
    git(repo, "commit", "-q", "-m", "wf")
    monkeypatch.delenv("GIT_DIR")
    monkeypatch.delenv("GIT_WORK_TREE")
    head = git(repo, "symbolic-ref", "HEAD")
    monkeypatch.setenv("GIT_DIR", str(repo / ".git"))
    monkeypatch.setenv("GIT_WORK_TREE", str(repo))
    result = run_workflow(wf, tmp_path / "home")
    monkeypatch.delenv("GIT_DIR")
    monkeypatch.delenv("GIT_WORK_TREE")
    assert git(repo, "symbolic-ref", "HEAD") == head  # the user's checkout stays on main
    assert result.projections.items.items["only"].status == "dead"  # it left its branch


def test_merge_files_is_known_and_empty_in_merge_steps(tmp_path: Path) -> None:
    out = tmp_path / "files.txt"
    repo = make_repo(tmp_path / "repo")
    wf = write_workflow(
        repo,
        ONE.replace("STEP", "        echo x > x && git add x && git commit -qm x")
        + f'merge:\n  - run: echo "${{merge.files}}" > {out}\n',
    )
    git(repo, "add", "wf.yml")
    git(repo, "commit", "-q", "-m", "wf")
    result = run_workflow(wf, tmp_path / "home")
    assert result.exit_code == 0, result.reason
    assert out.read_text() == "[]\n"


CANCELLED = """
name: cancel-conflict
map:
  isolation: worktree
  items: [first, second]
  id: "${item}"
  max_parallel: 2
  retry: {max_attempts: 1}
  agent_template:
    - run: |
        echo "$ENGINE_ITEM_ID" > shared.txt && git commit -qam "$ENGINE_ITEM_ID"
        [ "$ENGINE_ITEM_ID" = first ] && exit 0
        base=$(git rev-parse HEAD~1)
        while [ "$(git rev-parse "$ENGINE_RUN_BRANCH")" = "$base" ]; do sleep 0.02; done
  on_conflict:
    - run: touch "$GATE.in"; while [ ! -e "$GATE" ]; do sleep 0.02; done
"""


def test_a_cancel_while_a_conflict_is_handled_interrupts_the_item(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"shared.txt": "base\n"})
    wf = write_workflow(repo, CANCELLED)
    git(repo, "add", "wf.yml")
    git(repo, "commit", "-q", "-m", "wf")
    home, gate, run_id = tmp_path / "home", tmp_path / "gate", unique_run_id("cancel-conflict")
    engine = [sys.executable, "-m", "cli", "--home", str(home)]
    proc = subprocess.Popen(
        [*engine, "run", str(wf), "--run-id", run_id, "--no-progress", "--var", f"GATE={gate}"],
        cwd=repo,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: Path(f"{gate}.in").exists(), what="the on_conflict step running")
        cancel = subprocess.run(
            [*engine, "cancel", run_id],
            capture_output=True,
            text=True,
            timeout=DEADLINE,
            check=False,
        )
        assert cancel.returncode == 0, cancel.stderr
        _, err = proc.communicate(timeout=DEADLINE)
        assert proc.returncode == 130, err.decode()
    finally:
        gate.touch()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    p = replay(home / "runs" / run_id / "ledger.ndjson")
    second = p.items.items["second"]
    assert second.status != "dead", "a cancel is not the item's failure"
    assert "second" not in p.dlq.dead
    (failed,) = [r.data for r in replay_records(home, run_id) if r.type == "item.failed"]
    assert failed.error_type == "interrupted", failed


def replay_records(home: Path, run_id: str) -> list[Record]:
    return list(LedgerReader(home / "runs" / run_id / "ledger.ndjson").records())


def test_a_stash_entry_an_agent_takes_is_put_back(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"shared.txt": "base\n"})
    step = "git stash pop -q || true; echo st > st.txt; git add st.txt; git commit -qm st"
    wf = write_workflow(repo, ONE.replace("STEP", "        " + step))
    git(repo, "add", "wf.yml")
    git(repo, "commit", "-q", "-m", "wf")
    (repo / "shared.txt").write_text("the user's work in progress\n")
    git(repo, "stash", "-q")
    before = git(repo, "stash", "list", "--format=%H %gs")
    lines: list[str] = []
    result = run_workflow(wf, tmp_path / "home", warn=lines.append)
    assert result.exit_code == 0
    assert git(repo, "stash", "list", "--format=%H %gs") == before
    assert [line for line in lines if "took the stash entry" in line], lines
