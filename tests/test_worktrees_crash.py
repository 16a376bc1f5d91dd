"""Worktree isolation killed at random moments: every item merged exactly once.

A run with ``map.isolation: worktree`` (a stand-in agent that works a little,
then writes its own file and commits it; every third one leaves it for the
engine to commit) is killed with SIGKILL again and again, most often right
after a ``worktree.committed`` record whose ``worktree.merged`` is not there
yet (a merge in flight), otherwise at a random moment; each time ``engine
resume`` takes it up, until it completes. Git is the witness the ledger is
checked against: the run's branch holds exactly one merge commit per item
(its ``Engine-Item:`` trailer) and exactly one commit of the item's work,
every item's file with its content; no attempt's worktree or branch is left
(``engine worktree clean`` finds nothing to remove); the chain verifies and
the projections equal a replay.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.run import RunOptions, resume_run
from ledger import LedgerReader, RunLock
from projections.replay import replay
from tests.conftest import projections_json
from tests.engine_helpers import DEADLINE, engine_in_process, unique_run_id, wait_for

AGENT = """#!/bin/bash
# A little work (a sleep), then the item's own file, committed (or left to the engine).
# The last item waits for the test's gate first: the run cannot end before the kills do.
n="$1"; ms="$2"; leave="$3"; gate="$4"
trap '' PIPE
if [ -n "$gate" ]; then
  while [ ! -e "$gate" ]; do sleep 0.02; done
fi
sleep "0.$(printf %03d "$ms")" &
wait $!
echo "item $n" > "f-$n.txt"
if [ "$leave" = 0 ]; then
  git add "f-$n.txt"
  # --allow-empty: an attempt whose item's work is already on the run's branch
  # still commits, so that a merge made twice shows as two merges.
  git commit -q --allow-empty -m "item $n"
fi
"""


TRAILER = "Engine-Item"
"""The trailer of the engine's merge commits that names the item merged."""


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *args],
        capture_output=True,
        text=True,
        check=True,
        env=git_env(),
    )
    return done.stdout


def git_env() -> dict[str, str]:
    """The machine's global and system git configuration kept out (only the repository's)."""
    env = dict(os.environ)
    env.update({"GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"})
    return env


def make_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.name", "Test")
    git(path, "config", "user.email", "test@example.com")
    (path / "README").write_text("start\n")
    git(path, "add", "README")
    git(path, "commit", "-q", "-m", "start")
    return path


@dataclass(frozen=True)
class _Run:
    wf: Path
    home: Path
    repo: Path
    run_id: str
    items: int
    gate: Path
    """Created once the kills are done: the last item waits for it."""

    @property
    def ledger(self) -> Path:
        return self.home / "runs" / self.run_id / "ledger.ndjson"


def _setup(tmp_path: Path, seed: int, items: int) -> _Run:
    rng = random.Random(seed)
    repo = make_repo(tmp_path / "repo")
    agent = tmp_path / "agent.sh"
    agent.write_text(AGENT)
    agent.chmod(0o755)
    gate = tmp_path / "gate"
    values = [
        {
            "n": i,
            "ms": rng.randint(20, 200),
            "leave": int(i % 3 == 2),
            "gate": str(gate) if i == items - 1 else "",
        }
        for i in range(items)
    ]
    (tmp_path / "items.json").write_text(json.dumps(values))
    wf = repo / "wf.yml"
    wf.write_text(
        f"""
name: crash-worktrees
map:
  input: {tmp_path / "items.json"}
  id: "item-${{item.n}}"
  isolation: worktree
  max_parallel: 4
  retry: {{max_attempts: 1000}}
  agent_template:
    - argv: ["{agent}", "${{item.n}}", "${{item.ms}}", "${{item.leave}}", "${{item.gate}}"]
"""
    )
    git(repo, "add", "wf.yml")
    git(repo, "commit", "-q", "-m", "workflow")
    return _Run(wf, tmp_path / "home", repo, unique_run_id("crash-wt"), items, gate)


def _engine(home: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "cli", "--home", str(home), *args, "--no-progress"]


class _Watch:
    """The ledger's worktree records as they come (complete lines only)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.committed: set[str] = set()
        self.merged: set[str] = set()

    def update(self) -> bool:
        """Read what was appended; whether a ``worktree.committed`` came with it."""
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return False
        end = data.rfind(b"\n") + 1
        self.offset += end
        fresh = False
        for line in data[:end].splitlines():
            record = json.loads(line)
            if record["type"] == "worktree.committed":
                self.committed.add(record["data"]["item"])
                fresh = True
            elif record["type"] == "worktree.merged":
                self.merged.add(record["data"]["item"])
        return fresh

    def merge_in_flight(self) -> bool:
        """A ``worktree.committed`` just appended whose merge is not recorded yet."""
        return self.update() and bool(self.committed - self.merged)


def _kill_repeatedly(run: _Run, *, kills: int, rng: random.Random) -> int:
    """Start, SIGKILL, resume, ... ``kills`` times; how many kills came while a merge
    was owed (the others at a random moment)."""
    in_merge = 0
    env = git_env()
    waiting = f"item-{run.items - 1}"  # held by the gate: it merges after the kills
    for _ in range(kills):
        created = run.ledger.exists() and b'"type":"run.created"' in run.ledger.read_bytes()
        command = (
            _engine(run.home, "resume", run.run_id)
            if created
            else _engine(run.home, "run", str(run.wf), "--run-id", run.run_id)
        )
        watch = _Watch(run.ledger)
        watch.update()  # what earlier engines wrote
        proc = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=run.wf.parent, env=env
        )
        left = len(watch.merged) < run.items - 1
        merging = left and rng.random() < 0.8
        if merging:
            # Right after a success's work is committed, while its merge runs (or the
            # resume's, of what the last engine left owed).
            deadline = time.monotonic() + DEADLINE
            while not watch.merge_in_flight():
                if watch.merged >= {f"item-{n}" for n in range(run.items)} - {waiting}:
                    break  # merged meanwhile: no merge will come before the gate
                assert proc.poll() is None, proc.communicate()[1].decode()
                assert time.monotonic() < deadline, "no merge within the deadline"
                time.sleep(0.001)
            time.sleep(rng.choice([0.0, 0.0, rng.uniform(0.0, 0.03)]))
        else:
            time.sleep(rng.uniform(0.05, 0.5))  # start-up, resume, mid-map: wherever it is
        assert proc.poll() is None, proc.communicate()[1].decode()  # the gate holds it
        proc.send_signal(signal.SIGKILL)
        in_merge += merging
        _, err = proc.communicate(timeout=DEADLINE)
        assert proc.returncode == -signal.SIGKILL, err.decode()
        # A child it was starting when it died holds a copy of the lock's descriptor
        # until its exec closes it: the next engine would be refused (exit 3).
        wait_for(lambda: RunLock(run.ledger.parent).probe() is None, what="the dead engine's lock")
    run.gate.touch()
    return in_merge


def _finish_and_check(run: _Run, main_head: str) -> None:
    """Resumed to the end, then every item merged exactly once and nothing left behind."""
    result = asyncio.run(resume_run(run.ledger.parent, RunOptions()))
    assert (result.status, result.exit_code) == ("completed", 0), result.reason
    # The engine's own projections equal a fresh replay of what it wrote.
    assert projections_json(result.projections) == projections_json(replay(run.ledger))
    verified = engine_in_process("--home", str(run.home), "audit", "verify", run.run_id)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    records = list(LedgerReader(run.ledger).records())
    ids = Counter(f"item-{n}" for n in range(run.items))
    assert Counter(r.data.item for r in records if r.type == "item.succeeded") == ids
    assert Counter(r.data.item for r in records if r.type == "worktree.merged") == ids

    # Git, the witness: one merge commit per item, one commit of each item's work.
    repo, branch = run.repo, f"engine/{run.run_id}"
    trailers = git(
        repo, "log", "--merges", "--format=%(trailers:key=Engine-Item,valueonly)", branch
    )
    merges = Counter(line.strip() for line in trailers.splitlines() if line.strip())
    assert merges == ids, f"merge commits per item: {merges}"
    work = Counter(
        subject.removeprefix("item ")
        if subject.startswith("item ")
        else subject.split()[4].removeprefix("item-")
        for subject in git(repo, "log", "--no-merges", "--format=%s", branch).splitlines()
        if subject.startswith(("item ", "engine: commit what item "))
    )
    assert work == Counter(str(n) for n in range(run.items)), f"commits of work per item: {work}"
    files = [f"f-{n}.txt" for n in range(run.items)]
    tree = git(repo, "ls-tree", "--name-only", branch).split()
    assert sorted(tree) == sorted(["README", "wf.yml", *files])
    for n in range(run.items):
        assert git(repo, "show", f"{branch}:f-{n}.txt") == f"item {n}\n"

    # Nothing of an attempt is left: worktrees, their directories, their branches (the
    # engine removed them as their items succeeded; `engine worktree clean` finds none).
    cleaned = engine_in_process(
        "--home", str(run.home), "worktree", "clean", run.run_id, "--json", cwd=run.repo
    )
    assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
    report = json.loads(cleaned.stdout)
    assert (report["removed"], report["failures"]) == ([], []), report
    listed = git(repo, "worktree", "list", "--porcelain").splitlines()
    paths = sorted(
        line.removeprefix("worktree ") for line in listed if line.startswith("worktree ")
    )
    run_tree = run.home.resolve() / "worktrees" / run.run_id / "run"
    assert paths == sorted([str(repo), str(run_tree)]), paths
    assert [p.name for p in run_tree.parent.iterdir()] == ["run"]
    branches = git(repo, "branch", "--list", "--format=%(refname:short)").split()
    assert sorted(branches) == sorted(["main", branch]), branches
    # The user's checkout is where it was: on main, at its commit, clean.
    assert git(repo, "status", "--porcelain", "--untracked-files=all") == ""
    assert git(repo, "symbolic-ref", "--short", "HEAD").strip() == "main"
    assert git(repo, "rev-parse", "main").strip() == main_head


def test_sigkill_at_random_moments_merges_each_item_once(
    tmp_path: Path, rng: random.Random
) -> None:
    run = _setup(tmp_path, seed=rng.randrange(2**32), items=24)
    main_head = git(run.repo, "rev-parse", "main").strip()
    in_merge = _kill_repeatedly(run, kills=20, rng=rng)
    _finish_and_check(run, main_head)
    assert in_merge >= 8, f"only {in_merge} of the 20 kills came while a merge was owed"


@pytest.mark.soak
@pytest.mark.timeout(3600)
def test_soak_hundred_sigkills_with_worktrees(tmp_path: Path) -> None:
    run = _setup(tmp_path, seed=2026, items=80)
    main_head = git(run.repo, "rev-parse", "main").strip()
    in_merge = _kill_repeatedly(run, kills=100, rng=random.Random(2026))
    _finish_and_check(run, main_head)
    assert in_merge >= 50, f"only {in_merge} of the 100 kills came while a merge was owed"
