"""Scale: runs of 10,000 and 100,000 items (1,000,000 with --million) of `true`, -j 4.

    .venv/bin/python benchmarks/bench_scale.py [--sizes 10000,100000] [--million] [--out FILE]

Each size is one fresh ``engine run`` in its own process (as a user starts
it), then the reading commands on its ledger, each in its own process:

* wall: process start to exit; time to the first ``item.dispatched`` (from the
  run's first record: loading and enqueueing the items);
* items/s over the first and the last tenth of the successes (by the
  records' times): whether anything grows with the run;
* peak RSS of the engine's process (``wait4``'s ``ru_maxrss``), ledger bytes
  per item;
* ``engine status RUN --json``, ``engine replay RUN``, ``engine query RUN
  "failures by signature"``, ``engine audit verify RUN``: wall of each.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ENGINE = str(Path(sys.executable).with_name("engine"))

WORKFLOW = """\
name: scale-bench
map:
  command: seq 1 {n}
  max_parallel: 4
  heartbeat: {{interval: 60s}}
  retry: {{max_attempts: 1}}
  agent_template:
    - argv: ["true"]
"""


def run_measured(argv: list[str], cwd: Path) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one process."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    proc.stderr.close()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:3])}... exited {proc.returncode}: {err[-500:]}")
    return wall, usage.ru_maxrss * 1024


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def ledger_figures(ledger: Path, n: int) -> dict[str, float]:
    """Time to the first dispatch, items/s over the first and last tenth of the successes."""
    first_ts: float | None = None
    dispatched: float | None = None
    done: list[float] = []
    with ledger.open("rb") as f:
        for line in f:
            if first_ts is None:
                first_ts = _ts(json.loads(line)["ts"])
            if dispatched is None and b'"type":"item.dispatched"' in line:
                dispatched = _ts(json.loads(line)["ts"])
            if b'"type":"item.succeeded"' in line:
                done.append(_ts(json.loads(line)["ts"]))
    assert first_ts is not None and dispatched is not None and len(done) == n, len(done)
    tenth = max(1, n // 10)

    def rate(a: int, b: int) -> float:
        return (b - a) / max(done[b] - done[a], 1e-9)

    return {
        "first_dispatch": dispatched - first_ts,
        "first_tenth": rate(0, tenth),
        "last_tenth": rate(n - 1 - tenth, n - 1),
    }


def measure(n: int, work: Path) -> dict[str, float]:
    case = work / f"n{n}"
    case.mkdir()
    (case / "wf.yml").write_text(WORKFLOW.format(n=n))
    home = case / "home"
    wall, rss = run_measured(
        [ENGINE, "--home", str(home), "run", "wf.yml", "-j", "4", "--no-progress"], case
    )
    (run_dir,) = (home / "runs").iterdir()
    ledger = run_dir / "ledger.ndjson"
    row = {"items": n, "wall": wall, "rss": rss, "bytes": ledger.stat().st_size / n}
    row |= ledger_figures(ledger, n)
    readers = {
        "status": ["status", run_dir.name, "--json"],
        "replay": ["replay", run_dir.name],
        "query": ["query", run_dir.name, "failures by signature"],
        "verify": ["audit", "verify", run_dir.name],
    }
    for name, args in readers.items():
        row[name], _ = run_measured([ENGINE, "--home", str(home), *args], case)
    shutil.rmtree(case)
    return row


def table(rows: list[dict[str, float]]) -> str:
    lines = [
        f"## Scale ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, items of `true`, -j 4)",
        "",
        "| items | wall (s) | first dispatch (s) | items/s first tenth | items/s last tenth "
        "| last / first | peak RSS (MB) | ledger bytes/item | status (s) | replay (s) "
        "| query (s) | verify (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {int(r['items']):,} | {r['wall']:.1f} | {r['first_dispatch']:.2f} "
            f"| {r['first_tenth']:,.0f} | {r['last_tenth']:,.0f} "
            f"| {r['last_tenth'] / r['first_tenth']:.2f} | {r['rss'] / 1e6:,.0f} "
            f"| {r['bytes']:,.0f} | {r['status']:.2f} | {r['replay']:.2f} "
            f"| {r['query']:.2f} | {r['verify']:.2f} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000", help="comma-separated item counts")
    ap.add_argument("--million", action="store_true", help="add the 1,000,000-item row")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if args.million:
        sizes.append(1_000_000)
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    try:
        rows = [measure(n, work) for n in sizes]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = table(rows)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
