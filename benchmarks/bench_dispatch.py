"""Dispatch throughput: 2,000 items whose command is `true`, 4 at a time.

    .venv/bin/python benchmarks/bench_dispatch.py [--items N] [--repeat N] [--out FILE]

Side by side, in this one script, each in a fresh process, wall time from
process start to exit:

* the engine: ``engine run`` of a workflow whose map step is ``argv: [true]``,
  ``-j 4``: every dispatch and every outcome appended to the ledger and
  fdatasynced before anything depends on it;
* GNU parallel with ``--joblog`` (the same 2,000 ``true`` runs, ``-j 4``);
* a bare asyncio loop spawning ``true`` 4 at a time, with no bookkeeping at
  all (the ceiling for spawning from Python).

Also the engine's own CPU time per item (its process only, children not
counted). GNU parallel comes from Debian (`make bench` installs it); without
it that row says so.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKFLOW = """\
name: dispatch-bench
map:
  command: seq 1 {n}
  max_parallel: 4
  heartbeat: {{interval: 60s}}
  retry: {{max_attempts: 1}}
  agent_template:
    - argv: ["true"]
"""

ENGINE_CHILD = """
import asyncio, json, resource, sys, time
from pathlib import Path
from engine.run import RunOptions, execute_run
from engine.workflow.load import load_workflow
t = time.perf_counter()
workflow = load_workflow(sys.argv[1])
result = asyncio.run(execute_run(workflow, Path(sys.argv[2]), RunOptions(max_parallel=4)))
wall = time.perf_counter() - t
u = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"cpu": u.ru_utime + u.ru_stime, "wall": wall,
                  "ok": result.projections.items.counts["succeeded"]}))
"""

BARE_CHILD = """
import asyncio, sys
N = int(sys.argv[1])
async def main():
    sem = asyncio.Semaphore(4)
    async def one():
        async with sem:
            p = await asyncio.create_subprocess_exec("true")
            await p.wait()
    await asyncio.gather(*(one() for _ in range(N)))
asyncio.run(main())
"""


def timed(argv: list[str], **kw: object) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, check=True, **kw)  # type: ignore[call-overload]
    return time.perf_counter() - start, proc.stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    n = args.items
    work = Path(tempfile.mkdtemp(prefix="bench-dispatch-"))
    (work / "wf.yml").write_text(WORKFLOW.format(n=n))
    parallel = shutil.which("parallel")
    engine_wall, engine_cpu, parallel_wall, bare_wall = [], [], [], []
    for r in range(args.repeat):
        home = work / f"home-{r}"
        wall, out = timed([sys.executable, "-c", ENGINE_CHILD, str(work / "wf.yml"), str(home)])
        data = json.loads(out)
        assert data["ok"] == n, data
        engine_wall.append(wall)
        engine_cpu.append(data["cpu"])
        if parallel:
            joblog = work / f"joblog-{r}"
            wall, _ = timed(
                [parallel, "--will-cite", "--joblog", str(joblog), "-j", "4", "true", ":::"]
                + [str(i) for i in range(n)]
            )
            assert len(joblog.read_text().splitlines()) == n + 1
            parallel_wall.append(wall)
        wall, _ = timed([sys.executable, "-c", BARE_CHILD, str(n)])
        bare_wall.append(wall)
    shutil.rmtree(work)

    def rate(walls: list[float]) -> float:
        return n / statistics.median(walls)

    e, b = rate(engine_wall), rate(bare_wall)
    lines = [
        f"## Dispatch ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, "
        f"{n:,} items of `true`, -j 4, median of {args.repeat})",
        "",
        "| runner | items/s | wall (s) | engine / this |",
        "|---|---|---|---|",
        f"| engine (`engine run`, every dispatch and outcome fsynced) | {e:,.0f} | "
        f"{statistics.median(engine_wall):.2f} | 1.00x |",
    ]
    if parallel_wall:
        g = rate(parallel_wall)
        lines.append(
            f"| GNU parallel --joblog | {g:,.0f} | {statistics.median(parallel_wall):.2f} | "
            f"{e / g:.2f}x |"
        )
    else:
        lines.append("| GNU parallel --joblog | not installed (`make bench` installs it) | | |")
    lines.append(
        f"| bare asyncio spawn loop (no bookkeeping) | {b:,.0f} | "
        f"{statistics.median(bare_wall):.2f} | {e / b:.2f}x |"
    )
    lines += [
        "",
        f"Engine CPU per item (its own process): {statistics.median(engine_cpu) / n * 1e3:.2f} ms.",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
