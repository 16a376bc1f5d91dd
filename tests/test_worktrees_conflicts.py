"""Worktree isolation when two items change the same line: one merges, the other
conflicts; kept for debugging, retried from the run branch's newer head, or resolved
by the workflow's ``on_conflict`` steps. Real git, real processes.

Item ``first`` rewrites ``shared.txt``; item ``second`` rewrites it too, and its
first attempt ends only once ``first``'s work is in the run's branch, so that
its merge is the one that conflicts (every run, whatever the load).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import cli.dlq_cmds
from engine.run import RunOptions, RunResult
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


CONFLICT = """
name: conflict
map:
  items: [first, second]
  id: "${item}"
  isolation: worktree
  retry: {max_attempts: 1}
  agent_template:
    - run: |
        if [ "$ENGINE_ITEM_ID" = first ]; then
          echo first > shared.txt && git commit -q -a -m first
          exit 0
        fi
        if [ "$ENGINE_ATTEMPT" -gt 1 ]; then
          # a retry forks from the run branch's newer head, first's line in it
          echo second >> shared.txt && git commit -q -a -m "second, attempt $ENGINE_ATTEMPT"
          exit 0
        fi
        echo second > shared.txt && git commit -q -a -m "second, attempt 1"
        base=$(git rev-parse HEAD~1)
        n=0
        while [ "$(git rev-parse "$ENGINE_RUN_BRANCH")" = "$base" ]; do
          n=$((n + 1)); [ "$n" -lt 3000 ] || exit 9
          sleep 0.02
        done
ON_CONFLICT
"""


def _conflicting_run(tmp_path: Path, on_conflict: str = "", **options: Any) -> RunResult:
    repo = make_repo(tmp_path / "repo", {"shared.txt": "original\n"})
    wf = write_workflow(repo, CONFLICT.replace("ON_CONFLICT", on_conflict))
    git(repo, "add", "wf.yml")
    git(repo, "commit", "-q", "-m", "workflow")
    result = run_workflow(wf, tmp_path / "home", max_parallel=2, **options)
    assert_replays(result)
    created = {
        (r.data.item, r.data.attempt): r.data.base for r in records(result, "worktree.created")
    }
    assert created[("first", 1)] == created[("second", 1)], "both must fork from one head"
    return result


def _run_tree(result: RunResult) -> Path:
    tree = result.projections.worktrees.run
    assert tree is not None
    return Path(tree.path)


def _merged(result: RunResult) -> dict[str, Any]:
    return {r.data.item: r.data for r in records(result, "worktree.merged")}


def _assert_clean(run_tree: Path, head: str) -> None:
    """The run's worktree at ``head``: no merge in progress, nothing changed, no markers."""
    merge_head = Path(git(run_tree, "rev-parse", "--git-path", "MERGE_HEAD").strip())
    assert not (merge_head if merge_head.is_absolute() else run_tree / merge_head).exists()
    assert git(run_tree, "status", "--porcelain", "--untracked-files=all") == ""
    assert git(run_tree, "rev-parse", "HEAD").strip() == head
    assert (run_tree / "shared.txt").read_text() == "first\n"


def _parents(repo: Path, commit: str) -> list[str]:
    return git(repo, "rev-list", "--parents", "-n", "1", commit).split()[1:]


def _spy_resume(monkeypatch: pytest.MonkeyPatch) -> list[RunResult]:
    """The runs ``engine dlq retry`` makes (the real resume), kept for their projections."""
    real = cli.dlq_cmds.resume_run
    made: list[RunResult] = []

    async def resume(run_dir: Path, options: RunOptions) -> RunResult:
        result = await real(run_dir, options)
        made.append(result)
        return result

    spy: Callable[[Path, RunOptions], Awaitable[RunResult]] = resume
    monkeypatch.setattr(cli.dlq_cmds, "resume_run", spy)
    return made


def test_a_conflict_is_kept_and_its_dlq_retry_merges_on_the_newer_head(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _conflicting_run(tmp_path)
    repo, home, run_id = tmp_path / "repo", tmp_path / "home", result.run_id
    branch = f"engine/{run_id}"
    assert result.exit_code == 1
    items = result.projections.items.items
    assert (items["first"].status, items["second"].status) == ("succeeded", "dead")
    assert items["second"].error_type == "merge_conflict" and items["second"].attempts == 1
    assert "shared.txt" in (items["second"].last_error or "")
    (conflicted,) = [r.data for r in records(result, "worktree.conflicted")]
    assert (conflicted.item, conflicted.attempt, conflicted.files) == ("second", 1, ["shared.txt"])
    first_merge = _merged(result)["first"].merge
    assert set(_merged(result)) == {"first"}
    _assert_clean(_run_tree(result), first_merge)
    # the conflicting attempt's worktree and branch are kept, as the agent left them
    (kept,) = result.projections.worktrees.kept()
    assert (kept.item, kept.attempt, kept.state, kept.conflicts) == (
        "second",
        1,
        "conflicted",
        ["shared.txt"],
    )
    assert (Path(kept.path) / "shared.txt").read_text() == "second\n"
    assert git(repo, "rev-parse", kept.branch).strip() == kept.head == conflicted.head
    assert git(repo, "log", "-1", "--format=%s", kept.branch) == "second, attempt 1\n"
    shown = engine_in_process("--home", str(home), "dlq", "show", run_id, "second")
    assert shown.returncode == 0 and "merge_conflict" in shown.stdout

    made = _spy_resume(monkeypatch)
    retried = engine_in_process(
        "--home", str(home), "dlq", "retry", run_id, "second", "--no-progress"
    )
    assert retried.returncode == 0, retried.stdout + retried.stderr
    (again,) = made
    assert_replays(again)
    state = again.projections.items.items["second"]
    assert (state.status, state.attempts) == ("succeeded", 2)
    created = [r.data for r in records(again, "worktree.created") if r.data.item == "second"]
    assert [(e.attempt, e.base) for e in created][-1] == (2, first_merge)  # the newer head
    merge = _merged(again)["second"]
    assert merge.attempt == 2 and merge.resolved_by is None
    assert git(repo, "rev-parse", branch).strip() == merge.merge
    assert _parents(repo, merge.merge) == [first_merge, merge.head]
    assert git(repo, "show", f"{branch}:shared.txt") == "first\nsecond\n"
    trailers = git(
        repo, "log", "--merges", "--format=%(trailers:key=Engine-Item,valueonly)", branch
    )
    assert sorted(trailers.split()) == ["first", "second"]  # each item merged once
    # the item succeeded: all its worktrees are gone, the conflicted one too
    assert again.projections.worktrees.kept() == []
    listed = git(repo, "worktree", "list", "--porcelain").splitlines()
    assert [line for line in listed if line.startswith("worktree ")] == [
        f"worktree {repo}",
        f"worktree {_run_tree(again)}",
    ]
    assert git(repo, "for-each-ref", "refs/heads/engine-item/") == ""


RESOLVE = """\
  on_conflict:
    - run: |
        printf '%s\\n' "${merge.source_branch}" "${merge.target_branch}" "${merge.files}" \\
          "${merge.commits}" "${item_id}" "$(pwd)" > "$OUT/conflict.txt"
        git checkout --theirs shared.txt && git add shared.txt && git commit -q --no-edit
"""


def test_on_conflict_steps_that_resolve_the_merge_make_the_item_succeed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    result = _conflicting_run(tmp_path, RESOLVE, variables={"OUT": str(out)})
    repo, run_id = tmp_path / "repo", result.run_id
    assert result.exit_code == 0
    assert {i: s.status for i, s in result.projections.items.items.items()} == {
        "first": "succeeded",
        "second": "succeeded",
    }
    merged = _merged(result)
    assert (merged["first"].resolved_by, merged["second"].resolved_by) == (None, "on_conflict")
    (conflicted,) = [r.data for r in records(result, "worktree.conflicted")]
    assert (conflicted.item, conflicted.files) == ("second", ["shared.txt"])
    types = [(r.type, getattr(r.data, "item", None)) for r in records(result)]
    assert types.index(("worktree.conflicted", "second")) < types.index(
        ("worktree.merged", "second")
    )
    assert [(r.data.phase, r.data.item) for r in records(result, "step.started")] == [
        ("on_conflict", "second")
    ]
    second = merged["second"]
    assert git(repo, "rev-parse", f"engine/{run_id}").strip() == second.merge
    assert _parents(repo, second.merge) == [merged["first"].merge, second.head]
    assert git(repo, "show", f"engine/{run_id}:shared.txt") == "second\n"  # theirs
    assert (out / "conflict.txt").read_text().splitlines() == [
        f"engine-item/{run_id}/second-1",
        f"engine/{run_id}",
        '["shared.txt"]',
        "1",
        "second",
        str(_run_tree(result)),
    ]
    assert git(_run_tree(result), "status", "--porcelain", "--untracked-files=all") == ""
    assert result.projections.worktrees.kept() == []


@pytest.mark.parametrize(
    "steps",
    [
        'run: "true"',
        "run: git checkout --theirs shared.txt && git add shared.txt",  # merge left half done
        "run: echo 'cannot resolve' >&2; exit 3",
    ],
    ids=["does nothing", "stages without committing", "fails"],
)
def test_on_conflict_steps_that_do_not_resolve_leave_it_failing_and_the_run_tree_clean(
    tmp_path: Path, steps: str
) -> None:
    result = _conflicting_run(tmp_path, f"  on_conflict:\n    - {steps}\n")
    assert result.exit_code == 1
    second = result.projections.items.items["second"]
    assert (second.status, second.error_type) == ("dead", "merge_conflict")
    merged = _merged(result)
    assert set(merged) == {"first"}
    _assert_clean(_run_tree(result), merged["first"].merge)
    (kept,) = result.projections.worktrees.kept()
    assert (kept.item, kept.state) == ("second", "conflicted")
    assert [r.data.phase for r in records(result, "step.started")] == ["on_conflict"]


def test_an_untracked_file_in_the_runs_worktree_does_not_undo_a_resolution(
    tmp_path: Path,
) -> None:
    """A resolution is judged by the merge's state and the tracked files: a scratch file
    left untracked in the run's worktree (by a setup or conflict step) is no conflict."""
    out = tmp_path / "out"
    out.mkdir()
    steps = RESOLVE + "        echo scratch > notes.txt\n"
    result = _conflicting_run(tmp_path, steps, variables={"OUT": str(out)})
    assert result.exit_code == 0
    assert _merged(result)["second"].resolved_by == "on_conflict"
    assert (_run_tree(result) / "notes.txt").read_text() == "scratch\n"
