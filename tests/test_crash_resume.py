"""Nothing lost, nothing twice: an engine killed at random moments, then resumed.

A 200-item run (-j 4) of a stand-in agent that appends ``start ITEM ATTEMPT
NS`` and ``end ITEM ATTEMPT NS`` to a side log around a 20-200 ms sleep is
stopped again and again (SIGKILL: nothing in the engine can react; SIGTERM:
graceful), each time followed by ``engine resume``, until it completes. The
side log, written by the commands themselves, is the witness the ledger is
checked against.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from engine.exec.local.procfs import run_processes
from engine.run import RunOptions, resume_run
from ledger import LedgerReader
from ledger.reader import verify_ledger
from ledger.times import epoch
from projections.replay import replay
from tests.conftest import projections_json
from tests.engine_helpers import DEADLINE, catches, dying, poll, unique_run_id, wait_for

AGENT = """#!/bin/bash
# Times come from bash's own clock (no subprocess a signal could cut short).
log="$1"; item="$2"; ms="$3"
# Writes to a dead engine's pipes fail rather than kill: every end is logged.
trap '' PIPE
killed() {
  trap "" TERM
  echo "end $item $ENGINE_ATTEMPT ${EPOCHREALTIME/./}000 killed" >> "$log"
  exit 143
}
trap killed TERM
echo "start $item $ENGINE_ATTEMPT ${EPOCHREALTIME/./}000" >> "$log"
sleep "0.$(printf %03d "$ms")" &
wait $!
echo "end $item $ENGINE_ATTEMPT ${EPOCHREALTIME/./}000" >> "$log"
"""


def _setup(tmp_path: Path, seed: int, items: int = 200) -> tuple[Path, Path, Path, str]:
    rng = random.Random(seed)
    agent = tmp_path / "agent.sh"
    agent.write_text(AGENT)
    agent.chmod(0o755)
    values = [{"n": i, "ms": rng.randint(20, 200)} for i in range(items)]
    (tmp_path / "items.json").write_text(json.dumps(values))
    side = tmp_path / "side.log"
    wf = tmp_path / "wf.yml"
    wf.write_text(
        f"""
name: crash
map:
  input: items.json
  id: "item-${{item.n}}"
  max_parallel: 4
  retry: {{max_attempts: 1000}}
  agent_template:
    - argv: ["{agent}", "{side}", "${{item.n}}", "${{item.ms}}"]
"""
    )
    # Unique on this machine: another checkout may be running this test right now.
    return wf, tmp_path / "home", side, unique_run_id("crash")


def _engine(home: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "cli", "--home", str(home), *args, "--no-progress"]


def _left_running(run_id: str, run_dir: Path) -> list[int]:
    """Processes of this run (this run directory, not just this id) still running."""
    return [pid for pid in run_processes(run_id, run_dir) if not dying(pid)]


def _handles(proc: subprocess.Popen[bytes], signum: int) -> bool:
    return proc.poll() is not None or catches(proc.pid, signum)


def _started_more(proc: subprocess.Popen[bytes], side: Path, before: int) -> bool:
    return proc.poll() is not None or (side.exists() and side.stat().st_size > before)


def _stop_repeatedly(
    wf: Path, home: Path, run_id: str, *, stops: int, signum: int, seed: int
) -> tuple[int, list[int]]:
    """Start, stop at a random moment, resume, ... ``stops`` times (or until it completes)."""
    side = wf.parent / "side.log"
    rng = random.Random(seed)
    done = 0
    codes: list[int] = []
    run_dir = home / "runs" / run_id
    ledger = run_dir / "ledger.ndjson"
    while done < stops:
        # Killed before it recorded run.created, it is started again with `engine run`
        # (which takes up an existing id); otherwise `engine resume`.
        created = ledger.exists() and b'"type":"run.created"' in ledger.read_bytes()[:65536]
        command = (
            _engine(home, "resume", run_id)
            if created
            else _engine(home, "run", str(wf), "--run-id", run_id)
        )
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if signum != signal.SIGKILL:
            # A signal that lands while the interpreter itself starts, before any
            # engine code runs, takes the default action: the moments that count
            # begin once the engine handles it.
            wait_for(
                functools.partial(_handles, proc, signum),
                what="the engine to install its signal handlers",
            )
        if len(codes) % 3 == 0:
            time.sleep(rng.uniform(0.05, 0.9))  # start-up, enqueue, mid-map: wherever it is
        else:
            # Mid-map, where most of the work is: once this engine has started commands
            # (or, near the end, once it has none left to start).
            before = side.stat().st_size if side.exists() else 0
            poll(functools.partial(_started_more, proc, side, before), timeout=30)
            time.sleep(rng.uniform(0.0, 0.3))
        if proc.poll() is None:
            proc.send_signal(signum)
            done += 1
        _, err = proc.communicate(timeout=DEADLINE)
        codes.append(proc.returncode)
        if proc.returncode == 0:
            break  # finished before the signal
        assert proc.returncode in (130, -signal.SIGKILL), err.decode()
        if signum == signal.SIGTERM:
            # Graceful: nothing of the run is left running once the engine is gone.
            assert _left_running(run_id, run_dir) == []
    return done, codes


def _finish_and_check(home: Path, side: Path, run_id: str, items: int = 200) -> None:
    run_dir = home / "runs" / run_id
    ledger = run_dir / "ledger.ndjson"
    if replay(ledger).run.status != "completed":
        result = asyncio.run(resume_run(run_dir, RunOptions()))
        assert (result.status, result.exit_code) == ("completed", 0), result.reason
        # The engine's own projections equal a fresh replay of what it wrote.
        assert projections_json(result.projections) == projections_json(replay(ledger))
    records = list(LedgerReader(ledger).records())
    verify_ledger(ledger)
    ids = {r.data.item: r.data.value["n"] for r in records if r.type == "item.enqueued"}
    assert len(ids) == items
    successes = Counter(r.data.item for r in records if r.type == "item.succeeded")
    assert set(successes) == set(ids) and set(successes.values()) == {1}
    success_at = {ids[r.data.item]: epoch(r.ts) for r in records if r.type == "item.succeeded"}
    dispatches = Counter(ids[r.data.item] for r in records if r.type == "item.dispatched")
    keys: dict[str, set[str]] = {}
    for r in records:
        if r.type == "item.dispatched":
            keys.setdefault(r.data.item, set()).add(r.data.idempotency_key)
    assert all(len(k) == 1 for k in keys.values())  # one key for every attempt and resume

    starts: dict[int, list[tuple[int, int]]] = {}
    ends: dict[tuple[int, int], int] = {}
    for line in side.read_text().splitlines():
        kind, item, attempt, ns = line.split()[:4]
        key = (int(item), int(attempt))
        if kind == "start":
            starts.setdefault(int(item), []).append((int(ns), int(attempt)))
        else:
            ends[key] = int(ns)
    for item, runs in starts.items():
        runs.sort()
        # Each execution was dispatched (write-ahead), and none started after
        # the item's success was recorded.
        assert len(runs) <= dispatches[item], (item, runs, dispatches[item])
        assert all(ns / 1e9 <= success_at[item] for ns, _ in runs), item
        # No two executions of one item overlapped in time.
        for (_ns, attempt), (next_ns, _) in itertools.pairwise(runs):
            end = ends.get((item, attempt))
            assert end is not None, f"item {item} attempt {attempt} has no end"
            assert end <= next_ns, f"item {item}: attempt {attempt} overlaps the next"


def test_sigkill_at_random_moments_then_resume(tmp_path: Path) -> None:
    wf, home, side, run_id = _setup(tmp_path, seed=11)
    kills, _codes = _stop_repeatedly(wf, home, run_id, stops=20, signum=signal.SIGKILL, seed=11)
    assert kills >= 20
    _finish_and_check(home, side, run_id)


def test_sigterm_is_graceful_and_resumable(tmp_path: Path) -> None:
    wf, home, side, run_id = _setup(tmp_path, seed=5)
    stops, codes = _stop_repeatedly(wf, home, run_id, stops=8, signum=signal.SIGTERM, seed=5)
    assert stops >= 8 and 130 in codes
    ledger = home / "runs" / run_id / "ledger.ndjson"
    interrupted = [
        r
        for r in LedgerReader(ledger).records()
        if r.type == "item.failed" and r.data.error_type == "interrupted"
    ]
    assert interrupted  # attempts stopped by SIGTERM were recorded as such
    _finish_and_check(home, side, run_id)


@pytest.mark.soak
@pytest.mark.timeout(1800)
def test_soak_two_hundred_sigkills(tmp_path: Path) -> None:
    wf, home, side, run_id = _setup(tmp_path, seed=2026, items=1500)
    kills, _codes = _stop_repeatedly(wf, home, run_id, stops=200, signum=signal.SIGKILL, seed=2026)
    assert kills >= 200
    _finish_and_check(home, side, run_id, items=1500)


def test_two_resumes_at_the_same_instant(tmp_path: Path) -> None:
    wf, home, side, run_id = _setup(tmp_path, seed=3, items=60)
    first = subprocess.Popen(
        _engine(home, "run", str(wf), "--run-id", run_id, "-j", "1"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # Killed mid-map: once its first command has started (a run to resume).
    wait_for(lambda: side.exists() and side.stat().st_size > 0, what="the first command")
    first.kill()
    first.wait()
    gate = threading.Barrier(2)
    results: list[tuple[int, str]] = []

    def resume() -> None:
        gate.wait()
        proc = subprocess.run(
            _engine(home, "resume", run_id, "-j", "1"), capture_output=True, text=True, check=False
        )
        results.append((proc.returncode, proc.stderr))

    threads = [threading.Thread(target=resume) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    codes = sorted(code for code, _ in results)
    assert codes == [0, 3], results
    refused = next(err for code, err in results if code == 3)
    assert "run is locked by" in refused and "pid" in refused
    assert len(refused.strip().splitlines()) <= 2  # one clear line (and its hint), no traceback
    _finish_and_check(home, side, run_id, items=60)
    assert os.path.exists(home / "runs" / run_id / "lock")
