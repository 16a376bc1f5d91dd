"""`engine worktree list|clean`, and the run's branch in `dlq show`, `status` and the summary.

Real git repositories under tmp_path, real engine runs with
``map.isolation: worktree``: two items merge, one dies and keeps its worktree.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ledger import LedgerReader, verify_ledger
from ledger.events import WorktreeRemoved
from projections.replay import replay
from tests.conftest import ENGINE
from tests.engine_helpers import (
    DEADLINE,
    engine_in_process,
    ledger_has,
    make_repo,
    run_workflow,
    unique_run_id,
    wait_for,
    write_workflow,
)
from tests.engine_helpers import git as git_out

WORKFLOW = """
name: iso
map:
  isolation: worktree
  items: [ok-1, ok-2, bad]
  id: "${item}"
  max_parallel: 3
  agent_template:
    - run: |
        echo "$ENGINE_ITEM_ID" > "file-$ENGINE_ITEM_ID"
        git add -A && git commit -q -m "item $ENGINE_ITEM_ID"
        if [ "$ENGINE_ITEM_ID" = bad ]; then echo "left behind" > scratch; echo nope >&2; exit 3; fi
"""


pytestmark = pytest.mark.usefixtures("own_git")


def git(repo: Path, *args: str) -> str:
    """``git -C repo ARGS``'s output, stripped."""
    return git_out(repo, *args).strip()


def engine(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return engine_in_process("--home", str(home), *args)


@pytest.fixture
def done_run(tmp_path: Path) -> tuple[Path, Path, str]:
    """(repo, home, run id) of a finished run: ok-1 and ok-2 merged, bad dead."""
    repo = make_repo(tmp_path / "repo")
    wf = write_workflow(repo, WORKFLOW)
    home = tmp_path / "home"
    run_id = unique_run_id("wtc")
    result = run_workflow(wf, home, run_id=run_id)
    assert result.exit_code == 1  # bad is dead
    states = {i: (s.status, s.last_error) for i, s in result.projections.items.items.items()}
    assert set(result.projections.worktrees.merged) == {"ok-1", "ok-2"}, states
    return repo, home, run_id


def root_of(home: Path, run_id: str) -> Path:
    return (home / "worktrees" / run_id).resolve()


def listed(home: Path, run_id: str) -> Any:
    """``engine worktree list --json``, decoded."""
    shown = engine(home, "worktree", "list", run_id, "--json")
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)


def git_worktrees(repo: Path) -> set[Path]:
    out = git(repo, "worktree", "list", "--porcelain")
    return {
        Path(line.removeprefix("worktree "))
        for line in out.splitlines()
        if line.startswith("worktree ")
    }


def removed_records(home: Path, run_id: str) -> list[dict[str, object]]:
    """The run's ``worktree.removed`` records: item, path, reason."""
    ledger = home / "runs" / run_id / "ledger.ndjson"
    return [
        {"item": e.item, "path": e.path, "reason": e.reason}
        for r in LedgerReader(ledger).records()
        if isinstance(e := r.data, WorktreeRemoved)
    ]


# --- list ---------------------------------------------------------------------------


def test_list_shows_the_run_tree_merged_attempts_and_the_kept_dead_one(
    done_run: tuple[Path, Path, str],
) -> None:
    repo, home, run_id = done_run
    root = root_of(home, run_id)
    data = listed(home, run_id)
    assert data["isolation"] is True and data["merged"] == 2 and data["orphans"] == []
    assert data["root"] == str(root)
    run = data["run"]
    assert run["branch"] == f"engine/{run_id}" and run["path"] == str(root / "run")
    assert run["target_branch"] == "main" and run["repository"] == str(repo)
    assert run["base"] == git(repo, "rev-parse", "main") and run["exists"] and not run["removed"]
    attempts = {a["item"]: a for a in data["attempts"]}
    assert set(attempts) == {"ok-1", "ok-2", "bad"}
    for item in ("ok-1", "ok-2"):
        a = attempts[item]
        assert (a["state"], a["item_status"], a["kept"], a["exists"]) == (
            "merged",
            "succeeded",
            False,
            False,
        )
        assert a["commits"] == 1 and a["merge"] and a["branch"] == f"engine-item/{run_id}/{item}-1"
        assert git(repo, "merge-base", "--is-ancestor", a["head"], f"engine/{run_id}") == ""
    bad = attempts["bad"]
    assert (bad["state"], bad["item_status"], bad["kept"], bad["exists"]) == (
        "active",
        "dead",
        True,
        True,
    )
    # What only git knows: its commit, and the file it left uncommitted.
    assert bad["commits"] == 1 and bad["uncommitted"] == 1 and bad["merge"] is None
    assert bad["head"] == git(repo, "rev-parse", f"engine-item/{run_id}/bad-1")
    assert bad["path"] == str(root / "bad-1")

    table = engine(home, "worktree", "list", run_id)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].startswith(f"run branch  engine/{run_id}  2 item(s) merged")
    assert f"worktree    {root / 'run'}" in lines
    header = next(line for line in lines if line.startswith("ITEM"))
    assert header.split() == [
        "ITEM", "ATT", "STATUS", "STATE", "KEPT", "COMMITS", "MERGE", "PATH", "BRANCH", "CONFLICTS",
    ]  # fmt: skip
    bad_row = next(line for line in lines if line.startswith("bad "))
    assert bad_row.split()[:6] == ["bad", "1", "dead", "active", "kept", "1"]
    assert "+1 uncommitted" in bad_row and str(root / "bad-1") in bad_row
    ok_row = next(line for line in lines if line.startswith("ok-1 "))
    assert ok_row.split()[:6] == ["ok-1", "1", "succeeded", "merged", "removed", "1"]
    assert lines[-1] == f"remove them: engine worktree clean {run_id}"


def test_a_run_without_isolation_lists_nothing_and_says_so(tmp_path: Path) -> None:
    wf = write_workflow(
        tmp_path, "name: plain\nmap:\n  items: [a]\n  agent_template:\n    - run: 'true'\n"
    )
    home = tmp_path / "home"
    run_workflow(wf, home, run_id="plain")
    table = engine(home, "worktree", "list", "plain")
    assert table.returncode == 0, table.stderr
    assert table.stdout == (
        "run plain does not use isolation (map.isolation: worktree): it has no worktrees\n"
    )
    data = listed(home, "plain")
    assert (data["isolation"], data["run"], data["attempts"], data["orphans"]) == (
        False,
        None,
        [],
        [],
    )
    cleaned = engine(home, "worktree", "clean", "plain")
    assert cleaned.returncode == 0 and "nothing to clean" in cleaned.stdout
    assert "isolation" not in json.loads(engine(home, "status", "plain", "--json").stdout)


# --- clean --------------------------------------------------------------------------


def test_orphans_are_listed_and_clean_removes_them_with_the_kept_worktree(
    done_run: tuple[Path, Path, str],
) -> None:
    repo, home, run_id = done_run
    root = root_of(home, run_id)
    stray = root / "stray-1"
    git(repo, "worktree", "add", "-q", "-b", f"engine-item/{run_id}/stray-1", str(stray))
    leftover = root / "half-made"
    leftover.mkdir()
    data = listed(home, run_id)
    assert data["orphans"] == [
        {"path": str(leftover), "branch": None},
        {"path": str(stray), "branch": f"engine-item/{run_id}/stray-1"},
    ]
    table = engine(home, "worktree", "list", run_id).stdout
    assert f"  {stray}  branch engine-item/{run_id}/stray-1" in table.splitlines()

    cleaned = engine(home, "worktree", "clean", run_id, "--json")
    assert cleaned.returncode == 0, cleaned.stderr
    report = json.loads(cleaned.stdout)
    assert report["failures"] == [] and report["skipped"] == []
    assert {(c["kind"], c["path"], c["branch"]) for c in report["removed"]} == {
        ("attempt", str(root / "bad-1"), f"engine-item/{run_id}/bad-1"),
        ("orphan", str(stray), f"engine-item/{run_id}/stray-1"),
        ("orphan", str(leftover), None),
    }
    assert not stray.exists() and not leftover.exists() and not (root / "bad-1").exists()
    assert git_worktrees(repo) == {repo, root / "run"}
    branches = git(repo, "branch", "--format=%(refname:short)").split()
    assert sorted(branches) == [f"engine/{run_id}", "main"]
    # Only what the ledger knows is recorded; the orphans never were.
    assert removed_records(home, run_id)[-1] == {
        "item": "bad",
        "path": str(root / "bad-1"),
        "reason": "clean",
    }
    ledger = home / "runs" / run_id / "ledger.ndjson"
    assert verify_ledger(ledger).torn is None
    assert replay(ledger).worktrees.kept() == []
    after = listed(home, run_id)
    assert after["orphans"] == [] and not any(a["kept"] for a in after["attempts"])
    again = engine(home, "worktree", "clean", run_id)
    assert again.returncode == 0 and again.stdout == f"nothing to clean in {run_id}\n"


def test_dry_run_removes_nothing_and_records_nothing(done_run: tuple[Path, Path, str]) -> None:
    repo, home, run_id = done_run
    root = root_of(home, run_id)
    ledger = home / "runs" / run_id / "ledger.ndjson"
    before_ledger = ledger.read_bytes()
    before_trees = git_worktrees(repo)
    shown = engine(home, "worktree", "clean", run_id, "--dry-run", "--all")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[:2] == [
        f"would remove item bad attempt 1: {root / 'bad-1'} (branch engine-item/{run_id}/bad-1)",
        f"would remove the run's worktree {root / 'run'}",
    ]
    assert ledger.read_bytes() == before_ledger
    assert git_worktrees(repo) == before_trees and (root / "bad-1").is_dir()
    assert git(repo, "rev-parse", "--verify", f"engine-item/{run_id}/bad-1")


def test_clean_all_removes_the_run_worktree_and_keeps_the_run_branch(
    done_run: tuple[Path, Path, str],
) -> None:
    repo, home, run_id = done_run
    root = root_of(home, run_id)
    branch_head = git(repo, "rev-parse", f"engine/{run_id}")
    cleaned = engine(home, "worktree", "clean", run_id, "--all")
    assert cleaned.returncode == 0, cleaned.stderr
    lines = cleaned.stdout.splitlines()
    assert f"removed the run's worktree {root / 'run'}" in lines
    assert lines[-1] == (
        f"the run's branch engine/{run_id} holds the merged work and stays; to delete it: "
        f"git -C {repo} branch -D engine/{run_id}"
    )
    assert git_worktrees(repo) == {repo}
    assert not root.exists()  # nothing is left in the run's worktrees directory
    assert git(repo, "rev-parse", f"engine/{run_id}") == branch_head
    log = git(repo, "log", "--format=%s", f"engine/{run_id}")
    assert "item ok-1" in log and "item ok-2" in log and "item bad" not in log
    assert [r["item"] for r in removed_records(home, run_id)][-2:] == ["bad", None]
    run = listed(home, run_id)["run"]
    assert run["removed"] and not run["exists"]
    assert (
        f"worktree    {root / 'run'} (removed)" in engine(home, "worktree", "list", run_id).stdout
    )


def test_a_removal_that_fails_is_one_line_exit_1_and_not_recorded(
    done_run: tuple[Path, Path, str],
) -> None:
    """The user checked out the dead attempt's branch in their own checkout to look at
    it: git refuses to delete a branch checked out somewhere."""
    repo, home, run_id = done_run
    branch = f"engine-item/{run_id}/bad-1"
    git(repo, "checkout", "-q", "--ignore-other-worktrees", branch)
    before = removed_records(home, run_id)
    failed = engine(home, "worktree", "clean", run_id)
    assert failed.returncode == 1
    assert failed.stderr.count("\n") == 1 and "Traceback" not in failed.stderr
    assert failed.stderr.startswith(
        f"engine: cannot remove the worktree {root_of(home, run_id) / 'bad-1'}"
    )
    assert branch in failed.stderr and failed.stderr.rstrip().endswith("(kept)")
    assert "0 removed, 1 failed" in failed.stdout
    assert removed_records(home, run_id) == before
    assert [a["kept"] for a in listed(home, run_id)["attempts"] if a["item"] == "bad"] == [True]
    git(repo, "checkout", "-q", "main")
    fixed = engine(home, "worktree", "clean", run_id)
    assert fixed.returncode == 0, fixed.stderr
    assert removed_records(home, run_id)[-1]["item"] == "bad"


# --- a live run, and an interrupted one ------------------------------------------------


GATED = """
name: gated
map:
  isolation: worktree
  items: [slow]
  id: "${{item}}"
  agent_template:
    - run: touch '{started}'; while [ ! -f '{release}' ]; do sleep 0.05; done
"""


def _start_gated(tmp_path: Path) -> tuple[subprocess.Popen[str], Path, str, Path, Path]:
    repo = make_repo(tmp_path / "repo")
    started, release = tmp_path / "started", tmp_path / "release"
    wf = write_workflow(repo, GATED.format(started=started, release=release))
    home = tmp_path / "home"
    run_id = unique_run_id("wtc-live")
    engine_proc = subprocess.Popen(
        [ENGINE, "--home", str(home), "run", str(wf), "--run-id", run_id, "--no-progress"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(
        lambda: started.exists() or engine_proc.poll() is not None, what="the gated item to start"
    )
    assert engine_proc.poll() is None, engine_proc.communicate()[1]
    return engine_proc, home, run_id, release, repo


def _stop(proc: subprocess.Popen[str], release: Path) -> str:
    release.touch()
    try:
        _, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return err


def test_clean_refuses_with_exit_3_while_an_engine_holds_the_run(tmp_path: Path) -> None:
    proc, home, run_id, release, repo = _start_gated(tmp_path)
    try:
        refused = engine(home, "worktree", "clean", run_id)
        assert refused.returncode == 3, refused.stderr
        assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
        assert f"run is locked by pid {proc.pid} " in refused.stderr
        assert refused.stdout == ""
        # A dry run reads only: it says what clean would do, and that it would refuse.
        dry = engine(home, "worktree", "clean", run_id, "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert f"left item slow attempt 1: {root_of(home, run_id) / 'slow-1'}" in dry.stdout
        assert f"note: {home / 'runs' / run_id}: run is locked by pid {proc.pid} " in dry.stdout
        live = listed(home, run_id)
        assert [(a["item"], a["state"], a["item_status"], a["kept"]) for a in live["attempts"]] == [
            ("slow", "active", "running", True)
        ]
    finally:
        err = _stop(proc, release)
    assert proc.returncode == 0, err
    assert git(repo, "log", "-1", "--format=%s", f"engine/{run_id}") == "start"  # no commit made


def test_clean_leaves_the_worktree_of_an_item_an_interrupted_run_left_running(
    tmp_path: Path,
) -> None:
    proc, home, run_id, release, repo = _start_gated(tmp_path)
    ledger = home / "runs" / run_id / "ledger.ndjson"
    try:
        wait_for(lambda: ledger_has(ledger, "worktree.created", 2), what="the attempt's worktree")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=DEADLINE)
    finally:
        _stop(proc, release)
    tree = root_of(home, run_id) / "slow-1"
    cleaned = engine(home, "worktree", "clean", run_id)
    assert cleaned.returncode == 0, cleaned.stderr
    assert cleaned.stdout.splitlines() == [
        f"left item slow attempt 1: {tree} (branch engine-item/{run_id}/slow-1): "
        "item slow is running (attempt 1)",
        f"nothing to clean in {run_id}",
    ]
    assert tree.is_dir() and tree in git_worktrees(repo)
    assert removed_records(home, run_id) == []


# --- dlq show, status, the summary -----------------------------------------------------


def test_dlq_show_names_the_kept_worktree(done_run: tuple[Path, Path, str]) -> None:
    _, home, run_id = done_run
    tree = root_of(home, run_id) / "bad-1"
    shown = engine(home, "dlq", "show", run_id, "bad")
    assert shown.returncode == 0, shown.stderr
    assert (
        f"worktree  {tree}  (attempt 1, branch engine-item/{run_id}/bad-1: "
        "1 commit + 1 uncommitted change, active)"
    ) in shown.stdout.splitlines()
    data = json.loads(engine(home, "dlq", "show", run_id, "bad", "--json").stdout)
    (kept,) = data["worktrees"]
    assert (kept["path"], kept["branch"], kept["commits"], kept["state"], kept["kept"]) == (
        str(tree),
        f"engine-item/{run_id}/bad-1",
        1,
        "active",
        True,
    )
    engine(home, "worktree", "clean", run_id)
    gone = engine(home, "dlq", "show", run_id, "bad")
    assert "worktree  " not in gone.stdout
    assert (
        json.loads(engine(home, "dlq", "show", run_id, "bad", "--json").stdout)["worktrees"][0][
            "kept"
        ]
        is False
    )


def test_status_names_the_run_branch_and_what_it_holds(done_run: tuple[Path, Path, str]) -> None:
    repo, home, run_id = done_run
    text = engine(home, "status", run_id).stdout.splitlines()
    assert (
        f"branch    engine/{run_id} · 2 items merged · 1 worktree kept "
        f"(engine worktree list {run_id})"
    ) in text
    data = json.loads(engine(home, "status", run_id, "--json").stdout)
    assert data["isolation"] == {
        "branch": f"engine/{run_id}",
        "merged": 2,
        "worktree": str(root_of(home, run_id) / "run"),
        "repository": str(repo),
        "target_branch": "main",
        "kept": 1,
        "merge_command": f"git merge --no-ff engine/{run_id}",
    }


def test_the_summary_names_the_branch_its_worktree_and_the_merge_command(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    wf = write_workflow(repo, WORKFLOW)
    home = tmp_path / "home"
    run_id = unique_run_id("wtc-sum")
    done = subprocess.run(
        [ENGINE, "--home", str(home), "run", str(wf), "--run-id", run_id, "--no-progress"],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    root = root_of(home, run_id)
    assert (
        f"run branch: engine/{run_id} holds 2 merged items; its worktree: {root / 'run'}" in lines
    )
    assert (
        f"  git merge --no-ff engine/{run_id}        # in {repo}, on main: "
        "the run's work into your branch"
    ) in lines
    assert (
        f"  engine worktree list {run_id}        # 1 attempt worktree kept, for debugging" in lines
    )

    again = subprocess.run(
        [ENGINE, "--home", str(home), "run", str(wf), "--run-id", run_id + "-j", "--json",
         "--no-progress"],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )  # fmt: skip
    assert again.returncode == 1, again.stderr
    iso = json.loads(again.stdout)["isolation"]
    assert (iso["branch"], iso["merged"], iso["kept"], iso["merge_command"]) == (
        f"engine/{run_id}-j",
        2,
        1,
        f"git merge --no-ff engine/{run_id}-j",
    )
    # The command works as said: run in the workspace, it brings both items' files.
    git(repo, "merge", "-q", "--no-ff", "--no-edit", f"engine/{run_id}")
    assert (repo / "file-ok-1").is_file() and (repo / "file-ok-2").is_file()
    assert not (repo / "file-bad").exists()
