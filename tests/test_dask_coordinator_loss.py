"""The coordinator SIGKILLed mid-run on Dask, then resumed: its attempts, left running on
the workers, are stopped first (reclaim), and each item then succeeds exactly once with
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
from tests.conftest import ENGINE
from tests.dask_cluster import DaskCluster
from tests.engine_helpers import DEADLINE, wait_for, write_workflow

pytest.importorskip("distributed", reason="the dask extra is not installed")

ITEMS = 6

WORKFLOW = """\
name: coordinator
map:
  input: items.json
  id: "${item.name}"
  max_parallel: 6
  agent_template:
    - run: |
        exec 9>"locks/${item.name}"
        flock -n 9 || echo "overlap ${item.name}" >> witness
        echo "start ${item.name} $$" >> witness
        if [ -e slow ]; then sleep 300; fi
        echo "end ${item.name}" >> witness
"""


def _lines(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 :].split()[0] not in (b"Z", b"X")


def test_a_killed_coordinator_resumed_stops_what_it_left_on_the_workers(
    dask_cluster: DaskCluster, tmp_path: Path
) -> None:
    (tmp_path / "locks").mkdir()
    (tmp_path / "slow").touch()
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
        wait_for(lambda: len(_lines(witness)) >= ITEMS, what="every item to start on the workers")
    finally:
        os.kill(engine.pid, signal.SIGKILL)
        engine.wait()
    left = [int(w[2]) for w in _lines(witness)]
    assert all(_alive(pid) for pid in left), "the workers run on without the coordinator"
    (tmp_path / "slow").unlink()
    done = subprocess.run(
        [ENGINE, "resume", "lost", "--executor", address, "--no-progress"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=DEADLINE * 2,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert not any(_alive(pid) for pid in left)
    ledger = tmp_path / ".engine" / "runs" / "lost" / "ledger.ndjson"
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
    lines = _lines(witness)
    assert not [w for w in lines if w[0] == "overlap"], lines
    starts = collections.Counter(w[1] for w in lines if w[0] == "start")
    assert all(starts[n] == 2 <= dispatched[n] for n in names), (starts, dispatched)
