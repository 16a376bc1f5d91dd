"""The Dask executor against the local one: 1,000 items of `sleep 0.05` at -j 16.

    .venv/bin/python benchmarks/bench_dask.py [--items N] [--rounds N] [--out FILE]

Side by side, in this one script, the order alternated every round, each run
in a fresh process, wall time from process start to exit, median of the
rounds:

* ``engine run -j 16`` with the local executor;
* ``engine run -j 16 --executor dask://127.0.0.1:PORT``: a cluster this script
  starts once beforehand on loopback (``dask scheduler`` and two ``dask worker``
  of 8 threads each, no nanny) and reuses for every round;
* ``engine run -j 16 --executor dask --workers 2``: the engine starts a local
  cluster itself (and closes it at the end); its start-up cost is measured
  apart, as the difference of a 1-item run with it and without it;
* bare Dask: the same tasks (``subprocess.run(["sleep", "0.05"])``) submitted by
  a plain ``distributed.Client`` to the same cluster, 16 in flight at a time
  (``as_completed``), with no ledger, no claim, no logs: what Dask itself costs.

Then the same with ``true`` instead of ``sleep 0.05``: what is left is the
cost of an attempt itself, local, on Dask through the engine, and on Dask bare.

The cluster's processes are stopped by their process groups at the end, also on
an interrupt. Files live in ``benchmarks/.work`` (``make clean`` removes it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

BIN = Path(sys.executable).parent
ENGINE = str(BIN / "engine")
DASK = str(BIN / "dask")
WORK = Path(__file__).resolve().parent / ".work"
THREADS = 8
"""Threads of each of the two workers of the cluster started here (16 slots in all)."""

WORKFLOW = """\
name: dask-bench
map:
  input: items.json
  max_parallel: {parallel}
  heartbeat: {{interval: 60s}}
  retry: {{max_attempts: 1}}
  agent_template:
    - argv: {argv}
"""

BARE_CHILD = """
import asyncio, json, subprocess, sys
from distributed import Client
address, n, window, argv = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
def task(i):
    return subprocess.run(argv, check=False).returncode
async def main():
    async with Client(address, asynchronous=True, timeout="30s") as client:
        slots = asyncio.Semaphore(window)
        async def one(i):
            async with slots:
                return await client.submit(task, i, pure=False)
        codes = await asyncio.gather(*(one(i) for i in range(n)))
    assert codes.count(0) == n, codes
asyncio.run(main())
"""
"""Bare Dask: an asynchronous client, at most ``window`` tasks in flight, each awaited
(as the engine awaits its attempts; ``as_completed`` and ``wait(FIRST_COMPLETED)``
windows were no faster here)."""


def timed(argv: list[str], cwd: Path) -> tuple[float, float]:
    """Wall time from process start to exit, and the CPU time of the process and its
    children."""
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err)
        _pid, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            tail = err.read()[-2000:].decode(errors="replace")
            raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}:\n{tail}")
    return wall, usage.ru_utime + usage.ru_stime


def cpu_of(pids: list[int]) -> float:
    """CPU seconds the processes ``pids`` used so far (their own, not their children's)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rfind(")") + 2 :].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def cluster(directory: Path) -> Iterator[tuple[str, list[int]]]:
    """A scheduler and two workers on loopback; their groups stopped at the end."""
    scheduler_file = directory / "scheduler.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    processes: list[subprocess.Popen[bytes]] = []

    def spawn(argv: list[str], log: str) -> subprocess.Popen[bytes]:
        with open(directory / log, "ab") as out:
            process = subprocess.Popen(
                argv, cwd=directory, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        processes.append(process)
        return process

    try:
        scheduler = spawn(
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
             "--scheduler-file", str(scheduler_file)],
            "scheduler.log",
        )  # fmt: skip
        deadline = time.monotonic() + 60
        address = None
        while address is None:
            if scheduler.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the dask scheduler did not start: see {directory}")
            with contextlib.suppress(OSError, ValueError, KeyError):
                address = json.loads(scheduler_file.read_text())["address"]
            time.sleep(0.05)
        for i in range(2):
            spawn(
                [DASK, "worker", "--scheduler-file", str(scheduler_file), "--nthreads",
                 str(THREADS), "--no-nanny", "--no-dashboard", "--host", "127.0.0.1",
                 "--name", f"w{i}", "--local-directory", str(directory / f"w{i}")],
                f"worker{i}.log",
            )  # fmt: skip
        from distributed import Client

        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=60)
        yield address, [process.pid for process in processes]
    finally:
        for process in reversed(processes):  # the workers, then the scheduler
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def write_workflow(directory: Path, name: str, argv: list[str], items: int, parallel: int) -> Path:
    wf = directory / name
    wf.mkdir()
    (wf / "items.json").write_text(json.dumps(list(range(items))))
    (wf / "workflow.yml").write_text(WORKFLOW.format(parallel=parallel, argv=json.dumps(argv)))
    return wf


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-j", "--parallel", type=int, default=16)
    ap.add_argument("--sleep", type=float, default=0.05)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    n, j = args.items, args.parallel
    # A SIGTERM stops the script as ^C does: the cluster is stopped on the way out.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    WORK.mkdir(exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix="dask-", dir=WORK))
    sleep_argv = ["sleep", f"{args.sleep:g}"]
    flows = {
        "sleep": write_workflow(directory, "sleep", sleep_argv, n, j),
        "true": write_workflow(directory, "true", ["true"], n, j),
        "one": write_workflow(directory, "one", ["true"], 1, j),
    }
    results: dict[str, list[tuple[float, float, float]]] = {}
    """Per case, each round: wall, CPU of the run's process tree, CPU of the cluster."""
    started = time.perf_counter()
    with cluster(directory) as (address, pids):

        def record(key: str, argv: list[str], cwd: Path) -> None:
            before = cpu_of(pids)
            wall, cpu = timed(argv, cwd)
            results.setdefault(key, []).append((wall, cpu, cpu_of(pids) - before))

        def engine(key: str, flow: str, *extra: str) -> None:
            home = directory / f"home-{sum(map(len, results.values()))}"
            argv = [ENGINE, "--home", str(home), "run", "workflow.yml", "-j", str(j)]
            record(key, [*argv, "--no-progress", *extra], flows[flow])

        def bare(key: str, argv: list[str], items: int = n) -> None:
            cmd = [sys.executable, "-c", BARE_CHILD, address, str(items), str(j)]
            record(key, [*cmd, json.dumps(argv)], directory)

        remote = "dask://" + address.removeprefix("tcp://")
        own = ("--executor", "dask", "--workers", "2")
        cases = [
            lambda: engine("local sleep", "sleep"),
            lambda: engine("dask sleep", "sleep", "--executor", remote),
            lambda: engine("dask-local sleep", "sleep", *own),
            lambda: bare("bare sleep", sleep_argv),
            lambda: engine("local true", "true"),
            lambda: engine("dask true", "true", "--executor", remote),
            lambda: bare("bare true", ["true"]),
            lambda: engine("local one", "one"),
            lambda: engine("dask one", "one", "--executor", remote),
            lambda: engine("dask-local one", "one", *own),
            lambda: bare("bare one", ["true"], 1),
        ]
        done = 0
        try:
            for r in range(args.rounds):
                for case in cases if r % 2 == 0 else reversed(cases):
                    case()
                done += 1
                print(f"round {done} done, {time.perf_counter() - started:.0f} s", file=sys.stderr)
        except KeyboardInterrupt:  # the rounds done are reported, the cluster stopped
            if not done:
                raise
            print(f"interrupted: reporting the {done} rounds done", file=sys.stderr)
            results = {key: runs[:done] for key, runs in results.items()}
    text = report(results, n, j, args.sleep, done)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


def report(
    results: dict[str, list[tuple[float, float, float]]], n: int, j: int, sleep: float, rounds: int
) -> str:
    def med(key: str, field: int) -> float:
        return statistics.median(run[field] for run in results[key])

    def row(label: str, key: str, base: str, one: str, ideal: float, *, own: bool = False) -> str:
        wall = med(key, 0)
        each = ", ".join(f"{run[0]:.1f}" for run in results[key])
        per = (wall - med(one, 0) - ideal) / n * 1e3
        return (
            f"| {label} | {wall:.2f} ({each}) | {n / wall:,.0f} | {wall / med(base, 0):.2f}x | "
            f"{ideal:.1f} | {med(one, 0):.2f} | {per:.1f} | "
            f"{med(key, 1) / n * 1e3:.1f} + "
            f"{'(its own: in the run)' if own else f'{med(key, 2) / n * 1e3:.1f}'} |"
        )

    head = [
        "| runner | wall, s: median (each run) | items/s | / local | ideal, s | a 1-item run, s "
        "| ms per item beyond both | CPU ms per item: run + cluster |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    remote = "`--executor dask://` (2 workers x 8 threads)"
    own = f"`--executor dask --workers 2` (its own cluster: 2 x {j // 2} threads)"
    bare = "bare Dask client, 16 in flight, same cluster"
    t = n * sleep / j
    return "\n".join(
        [
            f"## Dask ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, -j {j}, "
            f"median of {rounds}, order alternated every round)",
            "",
            f"{n:,} items of `sleep {sleep:g}` (ideal: {n:,} x {sleep:g} s / slots):",
            "",
            *head,
            row("engine, local executor", "local sleep", "local sleep", "local one", t),
            row(f"engine, {remote}", "dask sleep", "local sleep", "dask one", t),
            row(
                f"engine, {own}",
                "dask-local sleep",
                "local sleep",
                "dask-local one",
                t,
                own=True,
            ),
            row(bare, "bare sleep", "local sleep", "bare one", t),
            "",
            f"{n:,} items of `true` (all of the time is the attempts' cost):",
            "",
            *head,
            row("engine, local executor", "local true", "local true", "local one", 0.0),
            row(f"engine, {remote}", "dask true", "local true", "dask one", 0.0),
            row(bare, "bare true", "local true", "bare one", 0.0),
            "",
            "A 1-item run is the fixed cost (start-up, connecting; a local cluster's start "
            "and close). CPU: the run's process tree (the engine, its steps, a cluster of "
            "its own) + the scheduler's and workers' own on the cluster started here.",
        ]
    )


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
