"""Worktree isolation with real git and real processes: each attempt in its own worktree,
merged into the run's branch one at a time, the user's checkout never touched.

Every run here is checked against a replay of its ledger and its hash chain
(``run_workflow``, ``assert_replays``). The agents are shell steps that
commit, so that a run costs a fraction of a second.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from engine.run import RunResult
from tests.conftest import ENGINE
from tests.engine_helpers import (
    assert_replays,
    engine_in_process,
    git,
    make_repo,
    records,
    run_workflow,
    write_workflow,
)

pytestmark = pytest.mark.usefixtures("own_git")


def _run(wf: Path, home: Path, **options: Any) -> RunResult:
    result = run_workflow(wf, home, **options)
    assert_replays(result)
    return result


def _statuses(result: RunResult) -> dict[str, str]:
    return {item: state.status for item, state in result.projections.items.items.items()}


def _base(result: RunResult) -> str:
    tree = result.projections.worktrees.run
    assert tree is not None, "the run has no worktree of its own"
    return tree.base


def _commits(repo: Path, since: str, branch: str) -> dict[str, list[str]]:
    """The commits (not merges) on ``branch`` since ``since``: subject -> files it touched."""
    out = git(repo, "log", "--no-merges", "--name-only", "--format=%x00%s", f"{since}..{branch}")
    found: dict[str, list[str]] = {}
    for chunk in out.split("\0")[1:]:
        subject, *files = chunk.strip("\n").split("\n")
        assert subject not in found, f"the commit {subject!r} is on {branch} twice"
        found[subject] = [name for name in files if name]
    return found


def _worktrees(repo: Path) -> set[str]:
    out = git(repo, "worktree", "list", "--porcelain")
    return {
        line.removeprefix("worktree ") for line in out.splitlines() if line.startswith("worktree ")
    }


def _item_branches(repo: Path) -> list[str]:
    return git(repo, "for-each-ref", "--format=%(refname)", "refs/heads/engine-item/").split()


# --- Prodigy's scenario -------------------------------------------------------------------

PRODIGY = """
name: prodigy
map:
  items: [a, b, c]
  id: "${item}"
  isolation: worktree
  agent_template:
    - run: |
        # the three agents meet before any commits (bounded: a slow start only slows this)
        here="$BARRIER/$ENGINE_RUN_ID"
        mkdir -p "$here" && touch "$here/$ENGINE_ITEM_ID"
        n=0
        while [ "$(ls "$here" | wc -l)" -lt 3 ] && [ "$n" -lt 500 ]; do
          sleep 0.02; n=$((n + 1))
        done
        if [ "$ENGINE_ITEM_ID" != c ]; then
          echo "written by $ENGINE_ITEM_ID" > "$ENGINE_ITEM_ID.txt"
          git add -A && git commit -q -m "item $ENGINE_ITEM_ID"
        fi
      commit_required: true
"""


def test_prodigys_scenario_is_right_ten_runs_out_of_ten(tmp_path: Path) -> None:
    """Two agents commit a file each, the third makes no commit, all three at once: in
    one shared checkout `git add -A` swallows a neighbour's file; isolated, never."""
    repo = make_repo(tmp_path / "repo")
    wf = write_workflow(repo, PRODIGY)
    git(repo, "add", "wf.yml")
    git(repo, "commit", "-q", "-m", "workflow")
    home, barrier = tmp_path / "home", tmp_path / "barrier"
    for _ in range(10):
        result = _run(wf, home, max_parallel=3, variables={"BARRIER": str(barrier)})
        assert result.exit_code == 1
        assert _statuses(result) == {"a": "succeeded", "b": "succeeded", "c": "dead"}
        dead = result.projections.items.items["c"]
        assert dead.error_type == "validation_failed" and dead.attempts == 1
        assert "no commit made by step 1" in (dead.last_error or "")
        branch = f"engine/{result.run_id}"
        assert _commits(repo, _base(result), branch) == {"item a": ["a.txt"], "item b": ["b.txt"]}
        assert git(repo, "rev-list", "--count", "--merges", f"{_base(result)}..{branch}") == "2\n"
        kept = [(t.item, t.attempt) for t in result.projections.worktrees.kept()]
        assert kept == [("c", 1)]  # the dead item's worktree, for debugging
        root = home / "worktrees" / result.run_id
        assert sorted(p.name for p in root.iterdir()) == ["c-1", "run"]
    assert git(repo, "status", "--porcelain", "--untracked-files=all") == ""


# --- many agents, the user's checkout untouched --------------------------------------------

MANY = """
name: many
map:
  items: ITEMS
  id: "${item}"
  isolation: worktree
  agent_template:
    - run: |
        printf 'edited by %s\\n' "$ENGINE_ITEM_ID" >> "files/$ENGINE_ITEM_ID.txt"
        git commit -q -a -m "edit $ENGINE_ITEM_ID"
      commit_required: true
"""


def _checkout(repo: Path) -> dict[str, Any]:
    """Everything of the user's checkout a run could change."""
    dot = repo / ".git"
    files = {
        path.relative_to(repo).as_posix(): path.read_bytes()
        for path in sorted(repo.rglob("*"))
        if path.is_file() and path.relative_to(repo).parts[0] != ".git"
    }
    return {
        "files": files,
        "HEAD file": (dot / "HEAD").read_bytes(),
        "index": (dot / "index").read_bytes(),
        "HEAD": git(repo, "rev-parse", "HEAD"),
        "main": git(repo, "rev-parse", "refs/heads/main"),
        "status": git(repo, "status", "--porcelain=v1", "-z", "--untracked-files=all"),
        "stash": git(repo, "stash", "list", "--format=%H %gs"),
        "merge in progress": (dot / "MERGE_HEAD").exists(),
    }


def _dirty_checkout(repo: Path) -> None:
    """A user's checkout mid-work: a stash, a staged file, a change, an untracked file."""
    (repo / "README").write_text("stashed work\n")
    git(repo, "stash", "-q")
    (repo / "staged.txt").write_text("staged\n")
    git(repo, "add", "staged.txt")
    (repo / "README").write_text("a change not staged\n")
    (repo / "scratch.txt").write_text("untracked\n")
    # a file touched, not changed: the index is stale, so a `git status` that may
    # refresh it (one that takes optional locks) would rewrite it
    touched = repo / "files" / "it-01.txt"
    later = touched.stat().st_mtime + 10
    os.utime(touched, (later, later))


def test_twenty_agents_merge_once_each_and_the_checkout_is_untouched(tmp_path: Path) -> None:
    items = [f"it-{n:02}" for n in range(1, 21)]
    files = {f"files/{item}.txt": f"original {item}\n" for item in items}
    repo = make_repo(tmp_path / "repo", {"README": "the user's\n", **files})
    wf = write_workflow(repo, MANY.replace("ITEMS", "[" + ", ".join(items) + "]"))
    git(repo, "add", "wf.yml")
    git(repo, "commit", "-q", "-m", "workflow")
    _dirty_checkout(repo)
    before = _checkout(repo)
    home = tmp_path / "home"

    result = _run(wf, home, max_parallel=6)

    assert result.exit_code == 0 and set(_statuses(result).values()) == {"succeeded"}
    assert _checkout(repo) == before, "the user's checkout changed"
    branch, base = f"engine/{result.run_id}", _base(result)
    line = git(repo, "rev-list", "--first-parent", "--parents", f"{base}..{branch}").splitlines()
    assert len(line) == 20 and all(len(entry.split()) == 3 for entry in line)  # 20 merges
    merges = git(
        repo,
        "log",
        "--merges",
        "--format=%s%x01%(trailers:key=Engine-Item,valueonly,separator=%x02)",
        f"{base}..{branch}",
    ).splitlines()
    subjects = sorted(entry.split("\x01")[0] for entry in merges)
    assert subjects == [f"engine: merge item {item} (attempt 1)" for item in items]
    assert sorted(entry.split("\x01")[1] for entry in merges) == items
    commits = _commits(repo, base, branch)
    assert commits == {f"edit {item}": [f"files/{item}.txt"] for item in items}
    run_tree = home / "worktrees" / result.run_id / "run"
    assert git(run_tree, "rev-parse", "HEAD") == git(repo, "rev-parse", branch)
    for item in items:
        assert (run_tree / f"files/{item}.txt").read_text() == (
            f"original {item}\nedited by {item}\n"
        )
    assert _worktrees(repo) == {str(repo), str(run_tree)}
    assert _item_branches(repo) == []
    removed = [r.data for r in records(result, "worktree.removed")]
    assert sorted(e.item or "" for e in removed) == items
    assert {e.reason for e in removed} == {"merged"}


# --- what an attempt leaves ---------------------------------------------------------------

LEFTOVERS = """
name: leftovers
map:
  items: [left, none, both]
  id: "${item}"
  isolation: worktree
  # commit_leftovers
  agent_template:
    - run: |
        case "$ENGINE_ITEM_ID" in
          left) echo left > left.txt ;;
          both)
            echo committed > both.txt && git add both.txt && git commit -q -m "both's own"
            echo "left after the commit" >> both.txt ;;
        esac
"""


def test_leftovers_are_committed_and_merged_and_no_change_merges_nothing(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    wf = write_workflow(repo, LEFTOVERS)
    home = tmp_path / "home"
    result = _run(wf, home, max_parallel=3)
    assert result.exit_code == 0
    assert _statuses(result) == {"left": "succeeded", "none": "succeeded", "both": "succeeded"}
    branch, base = f"engine/{result.run_id}", _base(result)
    assert _commits(repo, base, branch) == {
        "engine: commit what item left attempt 1 left uncommitted": ["left.txt"],
        "both's own": ["both.txt"],
        "engine: commit what item both attempt 1 left uncommitted": ["both.txt"],
    }
    committed = {r.data.item: r.data for r in records(result, "worktree.committed")}
    assert set(committed) == {"left", "both"}
    assert committed["left"].leftovers and committed["left"].commits == 1
    assert committed["both"].leftovers and committed["both"].commits == 2
    merged = sorted(r.data.item for r in records(result, "worktree.merged"))
    assert merged == ["both", "left"]  # `none` merged nothing, and succeeded
    removed = {r.data.item: r.data.reason for r in records(result, "worktree.removed")}
    assert removed == {"left": "merged", "both": "merged", "none": "succeeded"}
    run_tree = home / "worktrees" / result.run_id / "run"
    assert (run_tree / "left.txt").read_text() == "left\n"
    assert (run_tree / "both.txt").read_text() == "committed\nleft after the commit\n"
    assert git(run_tree, "status", "--porcelain", "--untracked-files=all") == ""


def test_leftovers_refused_when_commit_leftovers_is_false(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    text = LEFTOVERS.replace("# commit_leftovers", "commit_leftovers: false")
    wf = write_workflow(repo, text.replace("[left, none, both]", "[left, none]"))
    home = tmp_path / "home"
    result = _run(wf, home, max_parallel=2)
    assert result.exit_code == 1
    assert _statuses(result) == {"left": "dead", "none": "succeeded"}
    dead = result.projections.items.items["left"]
    assert dead.error_type == "validation_failed" and dead.attempts == 1
    assert "left.txt" in (dead.last_error or "")
    assert "commit_leftovers is false" in (dead.last_error or "")
    assert records(result, "worktree.committed") == []
    assert git(repo, "rev-parse", f"engine/{result.run_id}") == _base(result) + "\n"
    (kept,) = result.projections.worktrees.kept()
    assert (kept.item, Path(kept.path).name) == ("left", "left-1")
    assert (Path(kept.path) / "left.txt").read_text() == "left\n"  # kept as the agent left it


def test_where_git_knows_no_user_the_engines_commits_are_its_own(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    git(repo, "config", "--unset", "user.name")
    git(repo, "config", "--unset", "user.email")
    git(repo, "config", "user.useConfigOnly", "true")  # and git guesses none
    wf = write_workflow(repo, LEFTOVERS.replace("[left, none, both]", "[left]"))
    result = _run(wf, tmp_path / "home")
    assert result.exit_code == 0
    authors = git(
        repo, "log", "--format=%an <%ae> %cn <%ce>", f"{_base(result)}..engine/{result.run_id}"
    )
    assert authors.splitlines() == ["engine <engine@localhost> engine <engine@localhost>"] * 2


# --- where steps run, setup, reduce and merge steps ---------------------------------------

IN_A_SUBDIRECTORY = """
name: sub
setup:
  - run: |
      pwd > "$OUT/setup.pwd"
      printf '["a", "b"]' > items.json
      echo "from setup" > setup.txt && git add setup.txt && git commit -q -m setup
map:
  input: items.json
  id: "${item}"
  isolation: worktree
  agent_template:
    - run: |
        pwd > "$OUT/$ENGINE_ITEM_ID.pwd"
        printf '%s\\n%s\\n' "$ENGINE_WORKTREE" "$ENGINE_RUN_BRANCH" > "$OUT/$ENGINE_ITEM_ID.env"
        cat setup.txt > "out-$ENGINE_ITEM_ID.txt"
        git add "out-$ENGINE_ITEM_ID.txt" && git commit -q -m "item $ENGINE_ITEM_ID"
      commit_required: true
reduce:
  - run: pwd > "$OUT/reduce.pwd" && cat out-*.txt > "$OUT/reduce.txt"
merge:
  - run: >-
      printf '%s\\n' "${merge.repository}" "${merge.worktree}" "${merge.source_branch}"
      "${merge.target_branch}" "${merge.commits}" "$(pwd)" > "$OUT/merge.txt"
  - run: git -C "${merge.repository}" merge -q --no-ff "${merge.source_branch}"
"""


def test_steps_run_in_the_workspaces_place_and_merge_steps_reach_the_users_branch(
    tmp_path: Path,
) -> None:
    repo = make_repo(tmp_path / "repo")
    wf = write_workflow(repo / "proj", IN_A_SUBDIRECTORY)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "workflow")
    main_before = git(repo, "rev-parse", "main").strip()
    out, home = tmp_path / "out", tmp_path / "home"
    out.mkdir()

    result = _run(wf, home, max_parallel=2, variables={"OUT": str(out)})

    assert result.exit_code == 0 and _statuses(result) == {"a": "succeeded", "b": "succeeded"}
    run_id, p = result.run_id, result.projections
    run_tree = home / "worktrees" / run_id / "run"
    said = {path.name: path.read_text().splitlines() for path in out.iterdir()}
    assert said["setup.pwd"] == said["reduce.pwd"] == [str(run_tree / "proj")]
    for item in ("a", "b"):
        worktree = p.worktrees.attempts[(item, 1)].path
        assert said[f"{item}.pwd"] == [f"{worktree}/proj"]
        assert said[f"{item}.env"] == [worktree, f"engine/{run_id}"]
    assert said["reduce.txt"] == ["from setup", "from setup"]  # the merged work, read by reduce
    assert said["merge.txt"] == [
        str(repo),
        str(run_tree / "proj"),
        f"engine/{run_id}",
        "main",
        "5",  # setup's commit, the two items' and their two merges
        str(run_tree / "proj"),
    ]
    # the merge step merged the run's branch into the user's branch, as the user asked
    parents = git(repo, "rev-list", "--parents", "-n", "1", "main").split()
    assert parents[1:] == [main_before, git(repo, "rev-parse", f"engine/{run_id}").strip()]
    assert (repo / "proj" / "out-a.txt").read_text() == "from setup\n"
    assert (repo / "proj" / "setup.txt").read_text() == "from setup\n"
    assert not (repo / "proj" / "items.json").exists()  # setup's scratch stayed in its worktree
    phases = [r.data.phase for r in records(result, "step.started")]
    assert phases == ["setup", "reduce", "merge", "merge"]


# --- refused before anything runs ---------------------------------------------------------

SIMPLE = """
name: v
map:
  items: [a]
  isolation: worktree
  agent_template:
    - run: echo hi
"""


def _outside_any_repository(directory: Path) -> None:
    found = subprocess.run(
        ["git", "-C", str(directory), "rev-parse", "--git-dir"], capture_output=True, check=False
    )
    if found.returncode == 0:
        pytest.skip(f"{directory} is inside a git repository on this machine")


@pytest.mark.parametrize("kind", ["not a repository", "no commit"])
def test_isolation_needs_a_repository_with_a_commit(tmp_path: Path, kind: str) -> None:
    work = tmp_path / "work"
    wf = write_workflow(work, SIMPLE)
    _outside_any_repository(work)
    if kind == "no commit":
        git(work, "init", "-q", "-b", "main")
    home = tmp_path / "home"
    checked = engine_in_process("validate", str(wf))
    assert checked.returncode == 2 and checked.stdout == ""
    (line,) = checked.stderr.splitlines()
    assert line.startswith(f"{wf}:5: map.isolation: worktree isolation needs a git workspace")
    assert ("is not in a git repository" if kind == "not a repository" else "no commit") in line
    ran = engine_in_process("--home", str(home), "run", str(wf), "--no-progress")
    assert ran.returncode == 2 and ran.stdout == ""
    (line,) = ran.stderr.splitlines()
    assert line.startswith("engine: error: map.isolation: worktree")
    assert ("git init" if kind == "not a repository" else "commit once") in line
    assert not (home / "runs").exists() or list((home / "runs").iterdir()) == []
    # the console script, for real: the same line and code, no traceback
    real = subprocess.run(
        [ENGINE, "--home", str(home), "run", str(wf), "--no-progress"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (real.returncode, real.stderr.splitlines()) == (2, [line])
    assert not (home / "runs").exists() or list((home / "runs").iterdir()) == []


REFUSED = {
    "merge variable in the map": (
        SIMPLE.replace("echo hi", 'echo "${merge.source_branch}"'),
        "unknown variable ${merge.source_branch} here",
    ),
    "merge variable in reduce": (
        SIMPLE + 'reduce:\n  - run: echo "${merge.commits}"\n',
        "unknown variable ${merge.commits} here",
    ),
    "cache with isolation": (
        SIMPLE + 'cache: {key: ["${item}"]}\n',
        "cache cannot be used with map.isolation: worktree",
    ),
    "on_conflict without isolation": (
        SIMPLE.replace("  isolation: worktree\n", "") + '  on_conflict:\n    - run: "true"\n',
        "on_conflict needs isolation: worktree",
    ),
    "merge without isolation": (
        SIMPLE.replace("  isolation: worktree\n", "") + 'merge:\n  - run: "true"\n',
        "merge needs map.isolation: worktree",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_workflows_isolation_refuses(tmp_path: Path, case: str) -> None:
    text, said = REFUSED[case]
    repo = make_repo(tmp_path / "repo")
    wf = write_workflow(repo, text)
    checked = engine_in_process("validate", str(wf))
    assert checked.returncode == 2, checked.stdout
    (line,) = checked.stderr.splitlines()
    assert line.startswith(f"{wf}:") and said in line
    home = tmp_path / "home"
    ran = engine_in_process("--home", str(home), "run", str(wf), "--no-progress")
    assert ran.returncode == 2 and said in ran.stderr and len(ran.stderr.splitlines()) == 1
    assert not (home / "runs").exists() or list((home / "runs").iterdir()) == []
    assert _worktrees(repo) == {str(repo)} and git(repo, "branch", "--list", "engine*") == ""


def test_ok_workflow_validates(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    text = SIMPLE + (
        '  on_conflict:\n    - run: echo "${merge.files} ${item_id}"\n'
        'merge:\n  - run: echo "${merge.commits} ${merge.target_branch} ${map.total}"\n'
    )
    checked = engine_in_process("validate", str(write_workflow(repo, text)))
    assert checked.returncode == 0, checked.stderr
