"""Resuming a run with worktree isolation from the exact states a crash leaves.

Each test brings a real run (real git, real processes) to one state a crash
leaves, then resumes it, and checks that the item ends merged exactly once:

* the engine is killed at a chosen moment by a fault-injecting ``git`` put
  first on its ``PATH``: it runs the real git and, for the one command of
  the engine's (its commands carry ``core.hooksPath=/dev/null``) that the
  plan names, kills the engine (its parent) with SIGKILL before it, after
  it, or after a half of it (a merge started with ``--no-commit``: its
  MERGE_HEAD left); nothing of git is replaced;
* or the state is edited after a kill: lock files a killed git leaves, a
  merge's files written without its record.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from engine.run import RunOptions, resume_run
from ledger import LedgerReader, LedgerWriter, RunLock
from ledger.events import Record, WorktreeMerged
from projections.replay import replay
from tests.conftest import projections_json
from tests.engine_helpers import DEADLINE, engine_in_process, ledger_has, unique_run_id, wait_for
from tests.test_worktrees_crash import TRAILER, git, git_env, make_repo

FAULTY_GIT = """#!/bin/bash
# The real git; for the engine's command the plan names, the engine killed around it.
# The plan (a file): WHEN COMMAND [NTH], WHEN one of before, after, half; COMMAND the
# git subcommand (merge, worktree-add); NTH: the nth such command (default 1).
real="{real}"
plan="{plan}"
count="{plan}.count"
ours=0; sub=""; i=0; args=("$@")
while [ "$i" -lt "${{#args[@]}}" ]; do
  case "${{args[$i]}}" in
    -C|-c) [ "${{args[$((i + 1))]}}" = core.hooksPath=/dev/null ] && ours=1; i=$((i + 2));;
    -*) i=$((i + 1));;
    *) sub="${{args[$i]}}"; [ "$sub" = worktree ] && sub="worktree-${{args[$((i + 1))]}}"; break;;
  esac
done
if [ "$ours" = 1 ] && [ -f "$plan" ]; then
  read -r when what nth < "$plan"
  if [ "$what" = "$sub" ]; then
    echo "$sub" >> "$count"
    if [ "$(grep -c . "$count")" = "${{nth:-1}}" ]; then
      rm -f "$plan" "$count"
      engine=$PPID
      grep -q cli "/proc/$engine/cmdline" || {{ echo "not the engine: $engine" >&2; exit 99; }}
      case "$when" in
        before) kill -KILL "$engine"; exit 1;;
        after) "$real" "$@"; code=$?; kill -KILL "$engine"; exit $code;;
        half) set -- "${{@:1:$i}}" merge --no-commit "${{@:$((i + 2))}}"
              "$real" "$@"; kill -KILL "$engine"; exit 1;;
      esac
    fi
  fi
fi
exec "$real" "$@"
"""

AGENT = """#!/bin/bash
# Writes the item's file and commits it; fails while the file named by $4 is missing;
# waits for the one named by $5 first.
file="$1"; text="$2"; ms="$3"; needs="$4"; waits="$5"
while [ -n "$waits" ] && [ ! -e "$waits" ]; do sleep 0.02; done
sleep "0.$(printf %03d "$ms")"
if [ -n "$needs" ] && [ ! -e "$needs" ]; then echo "not yet" >&2; exit 1; fi
printf '%s\\n' "$text" > "$file"
git add "$file"
git commit -q --allow-empty -m "item $file"
"""


@dataclass
class Run:
    """A run of ``items`` (name, text, ms, needs) in a fresh repository, its engine killed
    by the faulty git's plan."""

    tmp: Path
    items: list[dict[str, Any]]
    extra: str = ""
    """More of the workflow's map."""
    parallel: int = 1
    run_id: str = field(default_factory=lambda: unique_run_id("wt-resume"))

    def __post_init__(self) -> None:
        self.repo = make_repo(self.tmp / "repo")
        self.home = self.tmp / "home"
        self.plan = self.tmp / "plan"
        bin_dir = self.tmp / "bin"
        bin_dir.mkdir()
        real = shutil.which("git")
        assert real is not None
        (bin_dir / "git").write_text(FAULTY_GIT.format(real=real, plan=self.plan))
        (bin_dir / "git").chmod(0o755)
        agent = self.tmp / "agent.sh"
        agent.write_text(AGENT)
        agent.chmod(0o755)
        self.env = {**git_env(), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
        (self.tmp / "items.json").write_text(json.dumps(self.items))
        self.wf = self.repo / "wf.yml"
        self.wf.write_text(
            f"""
name: resume-worktrees
map:
  input: {self.tmp / "items.json"}
  id: "${{item.name}}"
  isolation: worktree
  max_parallel: {self.parallel}
  retry: {{max_attempts: 3, initial: 0s}}
  agent_template:
    - argv: ["{agent}", "${{item.file}}", "${{item.text}}", "${{item.ms}}", "${{item.needs}}",
             "${{item.waits}}"]
{self.extra}
"""
        )
        git(self.repo, "add", "wf.yml")
        git(self.repo, "commit", "-q", "-m", "workflow")

    @property
    def run_dir(self) -> Path:
        return self.home / "runs" / self.run_id

    @property
    def ledger(self) -> Path:
        return self.run_dir / "ledger.ndjson"

    @property
    def branch(self) -> str:
        return f"engine/{self.run_id}"

    @property
    def tree(self) -> Path:
        """The run's worktree."""
        return self.home.resolve() / "worktrees" / self.run_id / "run"

    def engine(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "cli", "--home", str(self.home), *args, "--no-progress"]

    def killed_at(self, plan: str, *args: str) -> None:
        """``engine run`` (or ``args``), killed as ``plan`` says."""
        self.plan.write_text(plan + "\n")
        command = self.engine(*(args or ("run", str(self.wf), "--run-id", self.run_id)))
        done = subprocess.run(
            command, capture_output=True, text=True, env=self.env, timeout=DEADLINE, check=False
        )
        assert done.returncode == -signal.SIGKILL, (done.returncode, done.stderr)
        assert not self.plan.exists()
        unlocked(self.run_dir)

    def resume(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``engine resume`` to the end, its own way (a real process, no fault planned)."""
        return subprocess.run(
            self.engine("resume", self.run_id, *args),
            capture_output=True,
            text=True,
            env=self.env,
            timeout=DEADLINE,
            check=False,
        )

    def records(self, type_: str | None = None) -> list[Record]:
        return [r for r in LedgerReader(self.ledger).records() if type_ in (None, r.type)]

    def owed(self) -> list[str]:
        """Items whose work is committed, their merge not recorded (first committed first)."""
        merged = {r.data.item for r in self.records("worktree.merged")}
        committed = [r.data.item for r in self.records("worktree.committed")]
        return [name for name in committed if name not in merged]

    def merged(self, name: str) -> Any:
        """The item's one ``worktree.merged``."""
        [record] = [r for r in self.records("worktree.merged") if r.data.item == name]
        return record.data

    def failures(self, name: str) -> list[str]:
        """The error types of the item's failed attempts."""
        return [r.data.error_type for r in self.records("item.failed") if r.data.item == name]

    def git(self, *args: str) -> str:
        return git(self.repo, *args).strip()

    def git_path(self, name: str) -> Path:
        """Where the run's worktree keeps ``name`` (MERGE_HEAD, index.lock, ...)."""
        return Path(
            git(self.tree, "rev-parse", "--path-format=absolute", "--git-path", name).strip()
        )

    def merges(self) -> Counter[str]:
        """The merge commits on the run's branch, by the item their trailer names."""
        out = self.git(
            "log", "--merges", f"--format=%(trailers:key={TRAILER},valueonly)", self.branch
        )
        return Counter(line.strip() for line in out.splitlines() if line.strip())

    def check_done(self) -> None:
        """Completed: every item merged exactly once, its file on the run's branch, no
        attempt's worktree or branch left (``engine worktree clean`` finds none), the
        chain whole."""
        names = [item["name"] for item in self.items]
        assert replay(self.ledger).run.status == "completed"
        assert self.merges() == Counter(names)
        assert Counter(r.data.item for r in self.records("worktree.merged")) == Counter(names)
        assert Counter(r.data.item for r in self.records("item.succeeded")) == Counter(names)
        for item in self.items:
            if item["file"] == item["name"]:  # its own file
                assert self.git("show", f"{self.branch}:{item['file']}") == item["text"]
        cleaned = engine_in_process(
            "--home", str(self.home), "worktree", "clean", self.run_id, "--json", cwd=self.repo
        )
        assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
        report = json.loads(cleaned.stdout)
        assert (report["removed"], report["failures"]) == ([], []), report
        listed = self.git("worktree", "list", "--porcelain").splitlines()
        paths = sorted(line.split(" ", 1)[1] for line in listed if line.startswith("worktree "))
        assert paths == sorted([str(self.repo), str(self.tree)])
        assert [p.name for p in self.tree.parent.iterdir()] == ["run"]
        branches = self.git("branch", "--list", "--format=%(refname:short)").split()
        assert sorted(branches) == sorted(["main", self.branch])
        verified = engine_in_process("--home", str(self.home), "audit", "verify", self.run_id)
        assert verified.returncode == 0, verified.stdout + verified.stderr


def unlocked(run_dir: Path) -> None:
    """Wait until no process holds the killed engine's run lock: a child it was starting
    when it died holds a copy of the lock's descriptor until its exec closes it."""
    wait_for(lambda: RunLock(run_dir).probe() is None, what="the dead engine's lock to go")


def item(
    name: str,
    text: str | None = None,
    ms: int = 0,
    needs: str = "",
    file: str | None = None,
    waits: str = "",
) -> dict[str, Any]:
    """An item: its agent writes ``text`` to ``file`` (its name), after ``ms`` ms; it
    fails while the file ``needs`` is missing, and waits for ``waits`` to exist first."""
    return {
        "name": name,
        "file": file or name,
        "text": text or f"{name} text",
        "ms": ms,
        "needs": needs,
        "waits": waits,
    }


def _resumed_in_process(run: Run) -> None:
    """``engine resume`` in this process: its projections equal a replay of its ledger."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PATH", run.env["PATH"])
        patch.setenv("GIT_CONFIG_GLOBAL", "/dev/null")
        patch.setenv("GIT_CONFIG_NOSYSTEM", "1")
        result = asyncio.run(resume_run(run.run_dir, RunOptions()))
    assert (result.status, result.exit_code) == ("completed", 0), result.reason
    assert projections_json(result.projections) == projections_json(replay(run.ledger))


# --- (a) a merge half done -------------------------------------------------------------


def test_a_half_done_merge_is_aborted_and_done_again(tmp_path: Path) -> None:
    run = Run(tmp_path, [item("a.txt"), item("b.txt")])
    run.killed_at("half merge")
    # What a killed merge leaves: MERGE_HEAD in the run's worktree's git directory (its
    # .git is a file: <worktree>/.git/MERGE_HEAD is not where it is).
    assert (run.tree / ".git").is_file()
    assert run.git_path("MERGE_HEAD").is_file()
    assert run.owed()[:1] == ["a.txt"]  # (b.txt, dispatched meanwhile, may be owed too)
    _resumed_in_process(run)
    run.check_done()
    assert not run.git_path("MERGE_HEAD").exists()
    merged = run.merged("a.txt")
    assert (merged.item, merged.attempt, merged.found) == ("a.txt", 1, False)  # done again
    # Done again, not failed and retried: one attempt, no conflict.
    assert not run.records("worktree.conflicted")
    assert not run.failures("a.txt")


# --- (b) a merge done in git, not recorded ---------------------------------------------


def test_a_merge_done_but_not_recorded_is_found_not_repeated(tmp_path: Path) -> None:
    run = Run(tmp_path, [item("a.txt"), item("b.txt")])
    run.killed_at("after merge")
    head = run.git("rev-parse", run.branch)
    assert run.merges() == Counter(["a.txt"])  # in git
    assert run.owed()[:1] == ["a.txt"]  # not in the ledger
    _resumed_in_process(run)
    run.check_done()
    first = run.merged("a.txt")
    assert (first.item, first.found, first.merge) == ("a.txt", True, head)
    assert not run.failures("a.txt")


def test_a_merge_killed_before_it_ran_is_done_on_resume(tmp_path: Path) -> None:
    run = Run(tmp_path, [item("a.txt"), item("b.txt")])
    run.killed_at("before merge")
    assert run.merges() == Counter()
    assert run.owed()[:1] == ["a.txt"]
    _resumed_in_process(run)
    run.check_done()
    first = run.merged("a.txt")
    assert (first.item, first.attempt, first.found) == ("a.txt", 1, False)
    assert not run.failures("a.txt")


def test_a_merge_recorded_without_its_success_is_not_merged_again(tmp_path: Path) -> None:
    """The append of a merge and its item's success torn after the merge's record (a
    write cut short by the kill): the success is recorded, the item not run again."""
    run = Run(tmp_path, [item("a.txt"), item("b.txt")])
    # Killed once a.txt is merged, before the append of [worktree.merged,
    # item.succeeded]; then only the first of the two made it.
    run.killed_at("after merge")
    assert run.merges() == Counter(["a.txt"]) and run.owed()[:1] == ["a.txt"]
    owed = run.records("worktree.committed")[0].data
    writer = LedgerWriter.open(run.run_dir, run.run_id)  # the torn append's first record
    merge = run.git("rev-parse", run.branch)
    writer.append(
        WorktreeMerged(item="a.txt", attempt=1, branch=owed.branch, head=owed.head, merge=merge)
    )
    writer.close()
    assert replay(run.ledger).items.items["a.txt"].status == "running"
    _resumed_in_process(run)
    run.check_done()
    assert not run.failures("a.txt")
    assert [r.data.attempt for r in run.records("item.dispatched") if r.data.item == "a.txt"] == [1]


@pytest.mark.parametrize("left", ["untracked", "modified", "staged"])
def test_a_merge_killed_before_its_merge_head_is_written_is_done_again(
    tmp_path: Path, left: str
) -> None:
    """A merge killed while it wrote the run's worktree, before MERGE_HEAD (nothing to
    abort): the files it had written (new ones untracked, changed ones modified, or
    the index already written) would make the merge done again refuse; the resume
    puts the merge's paths back as the run's branch has them first."""
    owed = "README" if left == "modified" else "a.txt"  # a file the branch has, or a new one
    first = item(owed, text="the item's text")
    run = Run(tmp_path, [first, item("b.txt")])
    run.killed_at("before merge")
    assert run.owed()[:1] == [owed]
    (run.tree / owed).write_text("the it")  # half written
    if left == "staged":
        git(run.tree, "add", owed)
    _resumed_in_process(run)
    run.check_done()
    merged = run.merged(owed)
    assert (merged.item, merged.attempt, merged.found) == (owed, 1, False)
    assert not run.failures(owed)


# --- (c) lock files a killed git command left -------------------------------------------


def test_stale_lock_files_of_killed_git_commands_are_cleared(tmp_path: Path) -> None:
    run = Run(tmp_path, [item("a.txt"), item("b.txt")])
    run.killed_at("before merge")
    owed = run.records("worktree.committed")[0].data
    common = Path(run.git("rev-parse", "--path-format=absolute", "--git-common-dir"))
    # What git commands killed in the middle leave: the run's worktree's index and HEAD
    # locks, its ORIG_HEAD's (a merge writes it first), the run branch's ref lock, and an
    # attempt branch's (a commit killed in it).
    stale = [
        run.git_path("index.lock"),
        run.git_path("HEAD.lock"),
        run.git_path("ORIG_HEAD.lock"),
        common / "refs" / "heads" / f"{run.branch}.lock",
        common / "refs" / "heads" / f"{owed.branch}.lock",
    ]
    for path in stale:
        path.write_text("")
    done = run.resume()
    assert done.returncode == 0, done.stderr
    assert [path for path in stale if path.exists()] == []
    for path in stale:
        assert f"engine: removed {path}, left by a git command" in done.stderr
    run.check_done()
    assert not run.failures("a.txt")


# --- (d) orphans: worktrees made, their dispatch not recorded --------------------------


def test_orphan_worktrees_are_removed_on_resume(tmp_path: Path) -> None:
    run = Run(tmp_path, [item("a.txt"), item("b.txt"), item("c.txt")], parallel=2)
    # Killed between `git worktree add` (two of them, for a batch of two) and the
    # append that records them.
    run.killed_at("after worktree-add 3")  # the run's own is the first
    assert not run.records("item.dispatched")
    orphans = sorted(p.name for p in run.tree.parent.iterdir() if p.name != "run")
    assert [name[:6] for name in orphans] == ["a_txt-", "b_txt-"], orphans
    listed = run.git("worktree", "list")
    assert all(name in listed for name in orphans)
    # The resume (one at a time now) is killed as it is about to make its first
    # worktree: by then the orphans are gone, directories, git's records and branches.
    run.killed_at("before worktree-add", "resume", run.run_id, "-j", "1")
    assert [p.name for p in run.tree.parent.iterdir()] == ["run"]
    assert run.git("worktree", "list", "--porcelain").count("worktree ") == 2
    branches = run.git("branch", "--list", "--format=%(refname:short)").split()
    assert sorted(branches) == sorted(["main", run.branch])
    done = run.resume()
    assert done.returncode == 0, done.stderr
    run.check_done()


def test_an_orphan_removal_killed_halfway_is_finished(tmp_path: Path) -> None:
    run = Run(tmp_path, [item("a.txt"), item("b.txt"), item("c.txt")], parallel=2)
    run.killed_at("after worktree-add 3")  # two orphans
    # The resume is killed as it removes the first orphan: its directory and git's
    # record gone, its branch not deleted yet.
    run.killed_at("after worktree-remove", "resume", run.run_id)
    branches = run.git("branch", "--list", "--format=%(refname:short)").split()
    left = [b for b in branches if b.startswith("engine-item/")]
    assert len(left) == 2, branches
    done = run.resume()
    assert done.returncode == 0, done.stderr
    run.check_done()


# --- (e) items back from the dead-letter queue ------------------------------------------


@pytest.mark.parametrize("how", ["dlq retry", "resume --include-dlq"])
def test_a_retried_dead_item_forks_from_the_run_branch_head(tmp_path: Path, how: str) -> None:
    ready = tmp_path / "ready"
    run = Run(tmp_path, [item("x.txt", needs=str(ready)), item("a.txt"), item("b.txt")])
    done = subprocess.run(
        run.engine("run", str(run.wf), "--run-id", run.run_id),
        capture_output=True,
        text=True,
        env=run.env,
        timeout=DEADLINE,
        check=False,
    )
    assert done.returncode == 1, done.stderr  # x.txt dead: its command failed
    assert replay(run.ledger).dlq.dead.keys() == {"x.txt"}
    first = [r.data for r in run.records("worktree.created") if r.data.item == "x.txt"]
    assert len(first) == 1
    kept = [p for p in run.tree.parent.iterdir() if p.name.startswith("x_txt")]
    assert kept == [Path(first[0].path)]  # a dead item's worktree is kept (for debugging)
    head = run.git("rev-parse", run.branch)
    assert head != first[0].base  # a.txt and b.txt merged since x.txt was first tried
    ready.touch()
    args = ("dlq", "retry", run.run_id, "x.txt") if how == "dlq retry" else ("resume", run.run_id)
    extra = () if how == "dlq retry" else ("--include-dlq",)
    done = subprocess.run(
        run.engine(*args, *extra),
        capture_output=True,
        text=True,
        env=run.env,
        timeout=DEADLINE,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    retried = [r.data for r in run.records("worktree.created") if r.data.item == "x.txt"][1:]
    assert [(t.attempt, t.base) for t in retried] == [(2, head)]  # fresh, from the head now
    assert retried[0].path not in {t.path for t in first}
    # Its work sits on top of the others': its commit's parent is the head it forked from.
    assert run.git("rev-parse", f"{run.branch}^2^") == head
    run.check_done()


# --- two engines ---------------------------------------------------------------------


def _worktree_state(run: Run) -> tuple[str, ...]:
    """Everything of git and the worktrees a second engine could have changed."""
    files = sorted(
        f"{path.relative_to(run.tree.parent)} {path.stat().st_mtime_ns}"
        for path in run.tree.parent.rglob("*")
        if ".git" not in path.parts or path.name == ".git"
    )
    common = Path(run.git("rev-parse", "--path-format=absolute", "--git-common-dir"))
    admin = sorted(
        f"{path.relative_to(common)} {path.stat().st_mtime_ns}"
        for path in (common / "worktrees").rglob("*")
        if path.is_file()
    )
    return (
        run.git("worktree", "list", "--porcelain"),
        run.git("for-each-ref"),
        # (status without its optional index refresh: this look must change nothing)
        git(run.tree, "--no-optional-locks", "status", "--porcelain", "--untracked-files=all"),
        "\n".join(files),
        "\n".join(admin),
    )


def test_a_second_engine_on_a_live_run_is_refused_and_touches_no_worktree(
    tmp_path: Path,
) -> None:
    gate = tmp_path / "gate"
    # b.txt's attempt waits on the gate: the run is live, with a worktree in use.
    run = Run(tmp_path, [item("a.txt"), item("b.txt", waits=str(gate)), item("c.txt")])
    first = subprocess.Popen(
        run.engine("run", str(run.wf), "--run-id", run.run_id),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=run.env,
    )
    try:
        # Still, but for b.txt's attempt: a.txt merged and its worktree removed.
        wait_for(
            lambda: (
                ledger_has(run.ledger, "item.dispatched", 2)
                and ledger_has(run.ledger, "worktree.removed", 1)
            ),
            what="a.txt done and b.txt's attempt started",
        )
        before = _worktree_state(run)
        for command in (
            ("resume", run.run_id),
            ("run", str(run.wf), "--run-id", run.run_id),
            ("resume", run.run_id, "--include-dlq"),
        ):
            second = subprocess.run(
                run.engine(*command),
                capture_output=True,
                text=True,
                env=run.env,
                timeout=DEADLINE,
                check=False,
            )
            assert second.returncode == 3, (command, second.stderr)
            assert "run is locked by" in second.stderr
            assert len(second.stderr.strip().splitlines()) <= 2  # one line (and its hint)
            after = _worktree_state(run)
            changed = [
                set(b.splitlines()) ^ set(a.splitlines())
                for b, a in zip(before, after, strict=True)
            ]
            assert after == before, (command, changed)
        gate.touch()
        _, err = first.communicate(timeout=DEADLINE)
        assert first.returncode == 0, err.decode()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    run.check_done()


# --- a conflict resolved by on_conflict, not recorded ----------------------------------

RESOLVE = """
  on_conflict:
    - run: >-
        git checkout --theirs -- shared.txt && git add shared.txt && git commit -q --no-edit
        && if [ ! -e {killed} ]; then touch {killed}; kill -KILL $PPID; fi
"""


def test_a_conflict_resolved_but_not_recorded_is_found_not_merged_again(tmp_path: Path) -> None:
    """on_conflict finished the merge (committed it), the engine died before recording it:
    the resume records it (found), and does not run the item again (a second merge)."""
    killed = tmp_path / "killed"
    items = [item("one", file="shared.txt", ms=0), item("two", file="shared.txt", ms=300)]
    run = Run(tmp_path, items, parallel=2, extra=RESOLVE.format(killed=killed))
    subprocess.run(
        run.engine("run", str(run.wf), "--run-id", run.run_id),
        capture_output=True,
        env=run.env,
        timeout=DEADLINE,
        check=False,
    )
    assert killed.exists()  # killed by the on_conflict step, once the merge was committed
    unlocked(run.run_dir)
    conflicted = run.records("worktree.conflicted")
    assert [r.data.files for r in conflicted] == [["shared.txt"]]
    second = conflicted[0].data.item
    assert run.merges() == Counter(["one", "two"])  # both in git
    assert [r.data.item for r in run.records("worktree.merged")] == [
        "one" if second == "two" else "two"
    ]
    _resumed_in_process(run)
    run.check_done()
    last = run.records("worktree.merged")[-1].data
    assert (last.item, last.attempt, last.found, last.resolved_by) == (
        second,
        1,
        True,
        "on_conflict",
    )
    assert not run.failures(second)
    assert run.git("show", f"{run.branch}:shared.txt") == f"{second} text"


# --- worktrees made for a batch of dispatches at once ----------------------------------


def test_an_owed_merge_that_git_cannot_do_is_one_clear_line(tmp_path: Path) -> None:
    run = Run(tmp_path, [item("a.txt"), item("b.txt")])
    run.killed_at("before merge")
    head = run.records("worktree.committed")[0].data.head
    objects = Path(run.git("rev-parse", "--path-format=absolute", "--git-common-dir")) / "objects"
    (objects / head[:2] / head[2:]).unlink()  # the attempt's commit lost: git cannot merge it
    done = run.resume()
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) <= 2 and "Traceback" not in done.stderr, done.stderr
    assert "cannot finish the merges the stopped engine owed" in lines[0]
    assert replay(run.ledger).worktrees.owed.keys() == {"a.txt"}  # still owed: resumable


def test_a_worktree_record_half_written_by_a_killed_add_is_removed(tmp_path: Path) -> None:
    """`git worktree add` killed while it wrote git's record of the worktree (a machine
    crash, a SIGKILL of git itself): an empty commondir makes every `git worktree`
    command die, and `git worktree prune` keeps the record (it is locked)."""
    run = Run(tmp_path, [item("a.txt"), item("b.txt"), item("c.txt")], parallel=2)
    run.killed_at("after worktree-add 3")  # two orphans
    orphan = next(p for p in run.tree.parent.iterdir() if p.name.startswith("b_txt"))
    record = Path((orphan / ".git").read_text().split(":", 1)[1].strip())
    (record / "locked").write_text("initializing\n")
    (record / "commondir").write_text("")
    listed = subprocess.run(
        ["git", "-C", str(run.repo), "worktree", "list"],
        capture_output=True,
        text=True,
        env=git_env(),
        check=False,
    )
    assert listed.returncode != 0 and "commondir" in listed.stderr  # git is stuck
    done = run.resume()
    assert done.returncode == 0, done.stderr
    assert f"engine: removed {record}" in done.stderr
    run.check_done()
