"""The coordinator SIGKILLed mid-run on Dask (200 items, some done, some running), then
resumed: the attempts it left running on the workers are stopped first (reclaim), the
run's staging on the workers is removed, and each item then succeeds exactly once with
no execution overlapping another of its item (an flock per item, a witness file)."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from ledger.reader import LedgerReader, verify_ledger
from tests.conftest import ENGINE, alive
from tests.dask_cluster import DaskCluster, witness_lines, worker_directories, worker_pids
from tests.engine_helpers import DEADLINE, wait_for, write_workflow

pytest.importorskip("distributed", reason="the dask extra is not installed")

from engine.exec.dask.executor import run_prefix
from engine.exec.dask.worker import STAGING, _digest

ITEMS = 200

# While `hold` exists, an execution that starts stays (`held`) until it is killed.
WORKFLOW = """\
name: coordinator
map:
  input: items.json
  id: "${item.name}"
  max_parallel: 8
  agent_template:
    - run: |
        exec 9>"locks/${item.name}"
        flock -n 9 || echo "overlap ${item.name}" >> witness
        echo "start ${item.name} $ENGINE_ATTEMPT $PPID" >> witness
        if [ -e hold ]; then echo "held ${item.name} $ENGINE_ATTEMPT $$" >> witness; sleep 300; fi
        sleep 0.05
        echo "end ${item.name} $ENGINE_ATTEMPT" >> witness
"""


def test_a_killed_coordinator_resumed_stops_what_it_left_and_runs_each_item_once(
    dask_cluster: DaskCluster, tmp_path: Path
) -> None:
    (tmp_path / "locks").mkdir()
    (tmp_path / "items.json").write_text(json.dumps([{"name": f"i{n}"} for n in range(ITEMS)]))
    wf = write_workflow(tmp_path, WORKFLOW)
    witness = tmp_path / "witness"
    address = dask_cluster.address
    engine = subprocess.Popen(
        [ENGINE, "run", str(wf), "--executor", address, "--run-id", "lost", "--no-progress"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(
            lambda: sum(w[0] == "end" for w in witness_lines(witness)) >= 40, what="40 items to end"
        )
        (tmp_path / "hold").touch()
        wait_for(
            lambda: sum(w[0] == "held" for w in witness_lines(witness)) >= 4,
            what="attempts to be running on the workers",
        )
    finally:
        os.kill(engine.pid, signal.SIGKILL)
        engine.wait()
    held = [int(w[3]) for w in witness_lines(witness) if w[0] == "held"]
    assert all(alive(pid) for pid in held), "the workers run on without the coordinator"
    run_dir = tmp_path / ".engine" / "runs" / "lost"
    staging = {
        worker: directory / STAGING / _digest(run_prefix("lost", run_dir))
        for worker, directory in worker_directories(address).items()
    }
    assert any(path.is_dir() for path in staging.values()), "the attempts left have staging"
    (tmp_path / "hold").unlink()
    done = subprocess.run(
        [ENGINE, "resume", "lost", "--executor", address, "--no-progress"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=DEADLINE * 2,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert not any(alive(pid) for pid in held)
    left = [str(p) for path in staging.values() if path.exists() for p in path.rglob("*")]
    assert not any(path.exists() for path in staging.values()), left
    ledger = run_dir / "ledger.ndjson"
    verify_ledger(ledger)
    dispatched: collections.Counter[str] = collections.Counter()
    succeeded: collections.Counter[str] = collections.Counter()
    for record in LedgerReader(ledger).records():
        if record.type == "item.dispatched":
            dispatched[record.data.item] += 1  # type: ignore[union-attr]
        elif record.type == "item.succeeded":
            succeeded[record.data.item] += 1  # type: ignore[union-attr]
    names = {f"i{n}" for n in range(ITEMS)}
    assert set(succeeded) == names and all(n == 1 for n in succeeded.values())
    lines = witness_lines(witness)
    # The attempts left running were stopped before another of their item started.
    assert not [w for w in lines if w[0] == "overlap"], lines
    assert {int(w[3]) for w in lines if w[0] == "start"} <= set(worker_pids(address).values())
    starts = collections.Counter(w[1] for w in lines if w[0] == "start")
    assert set(starts) == names
    assert all(starts[n] <= dispatched[n] for n in names), (starts, dispatched)
