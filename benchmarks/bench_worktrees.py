"""Worktree isolation: 200 items at -j 8 on a repository of 5,000 files, with and without.

    .venv/bin/python benchmarks/bench_worktrees.py [--files N] [--items N] [-j N]
        [--repeat N] [--samples N] [--work DIR] [--out FILE]

A repository of ``--files`` small source files (50 lines each, in
directories of 100) is generated and committed in a scratch directory. Each
of ``--items`` items names one of its files. Side by side, alternately (the
order swapped every round), each run in a fresh process, wall time from
process start to exit, median of ``--repeat``:

* ``isolation: worktree``: each attempt gets its own git worktree of the
  whole repository on its own branch, and its step appends a line to the
  item's file and commits it (``git commit``); the engine merges every
  attempt's branch into the run's branch (``git merge --no-ff``, one at a
  time) before the item succeeds, then removes the worktree and its branch;
* ``isolation: none``: the same step in the one checkout, without the
  commit (there is nothing to merge it into): the engine's cost with no git
  at all, the floor the isolated run is compared with.

From the isolated runs' ledgers: the time from ``worktree.committed`` to
``worktree.merged`` of each attempt (median and p95). That span is the wait
for the merge queue, the merge, and the creation of the worktree of the
item dispatched in the slot the success freed (it is appended with the
merge). A worktree's creation is recorded in the same append as its
dispatch, so the ledger cannot time it: the git commands the engine runs
are timed alone on the same repository instead, each median of
``--samples`` (``git worktree add`` of the whole tree; ``git merge
--no-ff`` of a one-file commit into a worktree; the removal of a worktree
and its branch; the ``git status`` that looks for what an attempt left
uncommitted), with the engine's own options (no hooks, no gc).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ISOLATED = """\
name: bench-worktree
map:
  isolation: worktree
  input: items.json
  id: "${{item.name}}"
  max_parallel: {j}
  heartbeat: {{interval: 60s}}
  retry: {{max_attempts: 1}}
  agent_template:
    - run: |
        echo "# edited by ${{item_id}}" >> "${{item.path}}"
        git commit -q -m "edit ${{item.path}}" -- "${{item.path}}"
"""

NONE = """\
name: bench-none
map:
  isolation: none
  input: items.json
  id: "${{item.name}}"
  max_parallel: {j}
  heartbeat: {{interval: 60s}}
  retry: {{max_attempts: 1}}
  agent_template:
    - run: echo "# edited by ${{item_id}}" >> "${{item.path}}"
"""

ENGINE_CHILD = """
import asyncio, json, resource, sys, time
from pathlib import Path
from engine.run import RunOptions, execute_run
from engine.workflow.load import load_workflow
t = time.perf_counter()
workflow = load_workflow(sys.argv[1])
options = RunOptions(max_parallel=int(sys.argv[3]), warn=lambda m: print(m, file=sys.stderr))
result = asyncio.run(execute_run(workflow, Path(sys.argv[2]), options))
wall = time.perf_counter() - t
u = resource.getrusage(resource.RUSAGE_SELF)
c = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"cpu": u.ru_utime + u.ru_stime, "children_cpu": c.ru_utime + c.ru_stime,
                  "wall": wall, "ok": result.projections.items.counts["succeeded"],
                  "run_id": result.run_id, "run_dir": str(result.run_dir)}))
"""

# The engine's own options for its git commands (engine/git/repo.py).
GIT_OPTIONS = ["-c", "commit.gpgsign=false", "-c", "gc.auto=0", "-c", "core.hooksPath=/dev/null"]
IDENTITY = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@localhost",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@localhost",
}


GIT_ROWS = (
    ("add", "`git worktree add` (a worktree of the whole tree, on a new branch)"),
    ("status", "`git status` (what the attempt left uncommitted)"),
    ("commit", "`git commit` of one file (the step's own)"),
    ("merge", "`git merge --no-ff` of a one-file commit"),
    ("remove", "removal: `git worktree remove`, `prune`, `branch -D`"),
    ("admin", "creation, first half: `git worktree add --no-checkout`"),
    ("checkout", "creation, second half: `git reset --hard` there (the files)"),
    ("rmtree", "removal, first half: deleting the directory"),
    ("prune", "removal, second half: `git worktree prune`, `branch -D`"),
)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *GIT_OPTIONS, *args],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **IDENTITY, "LC_ALL": "C"},
    ).stdout


def make_repository(repo: Path, files: int, items: int) -> None:
    """``files`` source files committed; ``items.json`` names one file per item."""
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    paths = []
    for i in range(files):
        path = repo / f"pkg{i // 100:03d}" / f"mod{i:05d}.py"
        path.parent.mkdir(exist_ok=True)
        body = "".join(f"def f{k}(x):\n    return x + {i * 25 + k}\n\n" for k in range(16))
        path.write_text(f'"""Module {i}."""\n\n{body}')
        paths.append(path.relative_to(repo).as_posix())
    step = max(1, files // items)
    chosen = [{"name": f"m{n:04d}", "path": paths[(n * step) % files]} for n in range(items)]
    (repo / "items.json").write_text(json.dumps(chosen))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "a repository of many files")


def run_engine(workflow: Path, home: Path, j: int) -> dict[str, object]:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", ENGINE_CHILD, str(workflow), str(home), str(j)],
        capture_output=True,
        text=True,
        check=True,
    )
    data: dict[str, object] = json.loads(proc.stdout)
    data["process_wall"] = time.perf_counter() - start
    return data


def epoch(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


class Ledger:
    """What an isolated run's ledger says of its worktrees and merges."""

    def __init__(self, run_dir: Path) -> None:
        committed: dict[tuple[str, int], float] = {}
        self.spans: list[float] = []
        """Seconds from each attempt's ``worktree.committed`` to its ``worktree.merged``."""
        self.created: list[float] = []
        """When each attempt's worktree was recorded (with its dispatch)."""
        self.durations: list[float] = []
        """Each success's attempt (its steps), in seconds."""
        with (run_dir / "ledger.ndjson").open() as f:
            for line in f:
                record = json.loads(line)
                data, kind = record["data"], record["type"]
                if kind == "worktree.created" and data["item"] is not None:
                    self.created.append(epoch(record["ts"]))
                elif kind == "worktree.committed":
                    committed[(data["item"], data["attempt"])] = epoch(record["ts"])
                elif kind == "worktree.merged":
                    start = committed[(data["item"], data["attempt"])]
                    self.spans.append(epoch(record["ts"]) - start)
                elif kind == "item.succeeded":
                    self.durations.append(data["duration"])

    def per_worktree(self, half: int, first_batch: int) -> float:
        """Seconds between worktrees created in the first (0) or second (1) half of the
        run, after the first batch (made together): once every slot is taken, a worktree
        is made as one is freed, and the creations and removals go one at a time."""
        later = self.created[first_batch:]
        times = later[len(later) // 2 * half :][: max(2, len(later) // 2)]
        return (times[-1] - times[0]) / max(1, len(times) - 1)


def forget_run(repo: Path, home: Path, run_id: str) -> None:
    """The run's worktree and branch gone: every run starts from the same repository."""
    git(repo, "worktree", "remove", "--force", "--force", str(home / "worktrees" / run_id / "run"))
    git(repo, "worktree", "prune")
    git(repo, "branch", "-D", "-q", f"engine/{run_id}")


class Timings:
    """Seconds of each named action, one list of samples per name."""

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = {}

    def git(self, name: str, cwd: Path, *args: str) -> str:
        start = time.perf_counter()
        out = git(cwd, *args)
        self.add(name, time.perf_counter() - start)
        return out

    def add(self, name: str, seconds: float) -> None:
        self.samples.setdefault(name, []).append(seconds)

    def ms(self, name: str) -> float:
        return statistics.median(self.samples[name]) * 1e3


def git_commands(repo: Path, scratch: Path, samples: int) -> Timings:
    """The engine's git commands alone on this repository, ``samples`` times each, and
    the two halves of a worktree's creation and of its removal, timed on a second one."""
    t = Timings()
    target = scratch / "target"
    git(repo, "worktree", "add", "-q", "-f", "--no-track", "-B", "bench-target", str(target))
    first = json.loads((repo / "items.json").read_text())
    for n in range(samples):
        path, branch = scratch / f"w{n}", f"bench-{n}"
        t.git("add", repo, "worktree", "add", "-f", "--no-track", "-B", branch, str(path))
        with (path / first[n % len(first)]["path"]).open("a") as f:
            f.write(f"# sample {n}\n")
        t.git("status", path, "status", "--porcelain", "-z", "--untracked-files=all")
        t.git("commit", path, "commit", "-q", "-am", f"sample {n}")
        head = git(path, "rev-parse", "HEAD").strip()
        t.git("merge", target, "merge", "--no-ff", "--no-edit", "-m", "merge", head)
        start = time.perf_counter()
        git(repo, "worktree", "remove", "--force", "--force", str(path))
        git(repo, "worktree", "prune")
        git(repo, "branch", "-D", "-q", branch)
        t.add("remove", time.perf_counter() - start)
        # The same in halves: git's records of a worktree, then its files.
        other = scratch / f"v{n}"
        add = ("worktree", "add", "--no-checkout", "-f", "--no-track", "-B", branch, str(other))
        t.git("admin", repo, *add)
        t.git("checkout", other, "reset", "-q", "--hard")
        start = time.perf_counter()
        shutil.rmtree(other)
        t.add("rmtree", time.perf_counter() - start)
        start = time.perf_counter()
        git(repo, "worktree", "prune")
        git(repo, "branch", "-D", "-q", branch)
        t.add("prune", time.perf_counter() - start)
    git(repo, "worktree", "remove", "--force", "--force", str(target))
    git(repo, "branch", "-D", "-q", "bench-target")
    return t


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def mount_of(path: Path) -> str:
    """The file system that holds ``path``: its type, and for ext4 whether it keeps a
    journal (without one, ext4 hands out no inode freed in the last minutes: creating
    files right after deleting many costs a scan of them)."""
    best, kind, device = "", "?", ""
    with open("/proc/mounts") as f:
        for line in f:
            fields = line.split()
            point = fields[1]
            inside = str(path.resolve()).startswith(point.rstrip("/") + "/") or point == "/"
            if inside and len(point) >= len(best):
                best, kind, device = point, fields[2], fields[0]
    if kind == "ext4":
        task = Path("/sys/fs/ext4") / Path(device).name / "journal_task"
        with contextlib.suppress(OSError):
            journal = task.read_text().strip()
            kind += " without a journal" if journal == "<none>" else " with a journal"
    return f"{kind} ({best})"


def machine() -> str:
    cores = os.cpu_count()
    mem = ""
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kib / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    version = subprocess.run(
        ["git", "--version"], capture_output=True, text=True, check=False
    ).stdout
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{cores} cores{mem}, Python {platform.python_version()}, {version.strip()}, "
        f"load average {load} at the end"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=5000)
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("-j", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--samples", type=int, default=20, help="runs of each git command timed")
    ap.add_argument("--work", type=Path, help="scratch directory (default: a new temp dir)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    n, j = args.items, args.j
    work = Path(tempfile.mkdtemp(prefix="bench-worktrees-", dir=args.work))
    repo = work / "repo"
    make_repository(repo, args.files, n)
    (repo / "wf-worktree.yml").write_text(ISOLATED.format(j=j))
    (repo / "wf-none.yml").write_text(NONE.format(j=j))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "workflows")
    before = git_commands(repo, work / "scratch-before", args.samples)
    runs: dict[str, list[dict[str, object]]] = {"worktree": [], "none": []}
    ledgers: list[Ledger] = []
    for r in range(args.repeat):
        for kind in ("worktree", "none") if r % 2 == 0 else ("none", "worktree"):
            home = work / f"home-{kind}-{r}"
            data = run_engine(repo / f"wf-{kind}.yml", home, j)
            assert data["ok"] == n, data
            runs[kind].append(data)
            if kind == "worktree":
                ledgers.append(Ledger(Path(str(data["run_dir"]))))
                forget_run(repo, home, str(data["run_id"]))
            else:
                git(repo, "checkout", "-q", "--", ".")
            shutil.rmtree(home)
    after = git_commands(repo, work / "scratch-after", args.samples)
    filesystem = mount_of(work)
    shutil.rmtree(work)

    def median(kind: str, key: str) -> float:
        return statistics.median(float(str(d[key])) for d in runs[kind])

    def each(values: list[float]) -> str:
        return ", ".join(f"{v:.2f}" for v in values)

    spans = [span for ledger in ledgers for span in ledger.spans]
    durations = [d for ledger in ledgers for d in ledger.durations]
    first = [ledger.per_worktree(0, j) for ledger in ledgers]
    second = [ledger.per_worktree(1, j) for ledger in ledgers]
    wall_w, wall_n = median("worktree", "process_wall"), median("none", "process_wall")
    walls_w = [float(str(d["process_wall"])) for d in runs["worktree"]]
    lines = [
        f"## Worktree isolation ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, "
        f"{n} items at -j {j}, {args.files:,} files, median of {args.repeat})",
        "",
        "| run | wall (s) | items/s | engine CPU (s) | its git and steps' CPU (s) |",
        "|---|---|---|---|---|",
        f"| `isolation: worktree` (edit, commit, merge) | {wall_w:.2f} | {n / wall_w:.1f} | "
        f"{median('worktree', 'cpu'):.2f} | {median('worktree', 'children_cpu'):.2f} |",
        f"| `isolation: none` (edit only) | {wall_n:.2f} | {n / wall_n:.1f} | "
        f"{median('none', 'cpu'):.2f} | {median('none', 'children_cpu'):.2f} |",
        "",
        f"Isolated / not: {wall_w / wall_n:.1f}x the wall time, "
        f"{(wall_w - wall_n) / n * 1e3:.0f} ms more per item. Isolated runs: {each(walls_w)} s.",
        "",
        "From the isolated runs' ledgers:",
        "",
        f"* `worktree.committed` to `worktree.merged` ({len(spans)} merges): median "
        f"{statistics.median(spans) * 1e3:.0f} ms, p95 {p95(spans) * 1e3:.0f} ms;",
        f"* an attempt's steps (the edit and its `git commit`): median "
        f"{statistics.median(durations) * 1e3:.0f} ms;",
        f"* seconds between worktrees created, each run's first half: {each(first)}; "
        f"second half: {each(second)}.",
        "",
        f"| git command alone, on this repository (ms, median of {args.samples}) "
        "| before the runs | after them |",
        "|---|---|---|",
        *(
            f"| {label} | {before.ms(name):.0f} | {after.ms(name):.0f} |"
            for name, label in GIT_ROWS
        ),
        "",
        f"Machine: {machine()}; the repository and the homes on {filesystem}.",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
