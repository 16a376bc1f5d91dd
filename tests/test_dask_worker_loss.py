"""A Dask worker killed mid-run: its attempts are worker_lost and retried, each item
succeeds exactly once, and no execution of an item overlaps another of the same item.

A cluster of its own (tests/dask_cluster.py), its first worker SIGKILLed while the
run's attempts are on it. Each execution writes a witness line under an flock of its
item's: one that starts while another of the same item still lives writes `overlap`.
"""

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
from tests.dask_cluster import start_cluster
from tests.engine_helpers import DEADLINE, wait_for, write_workflow

pytest.importorskip("distributed", reason="the dask extra is not installed")

ITEMS = 40

WORKFLOW = """\
name: loss
map:
  input: items.json
  id: "${item.name}"
  max_parallel: 8
  retry: {max_attempts: 5, initial: 0.1, jitter: false}
  agent_template:
    - run: |
        exec 9>"locks/${item.name}"
        flock -n 9 || echo "overlap ${item.name}" >> witness
        echo "start ${item.name}" >> witness
        sleep 0.6
        echo "end ${item.name}" >> witness
"""


def _lines(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def test_a_killed_worker_s_attempts_are_lost_and_retried_once_each(tmp_path: Path) -> None:
    (tmp_path / "locks").mkdir()
    (tmp_path / "items.json").write_text(json.dumps([{"name": f"i{n}"} for n in range(ITEMS)]))
    wf = write_workflow(tmp_path, WORKFLOW)
    witness = tmp_path / "witness"
    (tmp_path / "cluster").mkdir()
    with start_cluster(tmp_path / "cluster") as cluster:
        engine = subprocess.Popen(
            [ENGINE, "run", str(wf), "--executor", cluster.address, "--run-id", "loss"],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            wait_for(
                lambda: sum(w[0] == "start" for w in _lines(witness)) >= 10,
                what="attempts to run on the cluster",
            )
            os.kill(cluster.workers[0].pid, signal.SIGKILL)
            _, stderr = engine.communicate(timeout=DEADLINE * 2)
        finally:
            if engine.poll() is None:
                engine.kill()
                engine.wait()
    assert engine.returncode == 0, stderr.decode()
    ledger = tmp_path / ".engine" / "runs" / "loss" / "ledger.ndjson"
    verify_ledger(ledger)
    dispatched: collections.Counter[str] = collections.Counter()
    succeeded: collections.Counter[str] = collections.Counter()
    lost: set[str] = set()
    for record in LedgerReader(ledger).records():
        data = record.data
        if record.type == "item.dispatched":
            dispatched[data.item] += 1  # type: ignore[union-attr]
        elif record.type == "item.succeeded":
            succeeded[data.item] += 1  # type: ignore[union-attr]
        elif record.type == "item.failed":
            assert data.error_type == "worker_lost", data  # type: ignore[union-attr]
            lost.add(data.item)  # type: ignore[union-attr]
    names = {f"i{n}" for n in range(ITEMS)}
    assert set(dispatched) == set(succeeded) == names
    assert all(n == 1 for n in succeeded.values()), "an item succeeded twice"
    assert lost, "the killed worker had attempts: they were lost"
    assert all(dispatched[item] >= 2 for item in lost), "a lost attempt is dispatched again"
    lines = _lines(witness)
    assert not [w for w in lines if w[0] == "overlap"]
    starts = collections.Counter(w[1] for w in lines if w[0] == "start")
    ends = collections.Counter(w[1] for w in lines if w[0] == "end")
    assert set(starts) == set(ends) == names
    # No item ran more often than it was dispatched, and one that ran twice was lost once.
    assert all(starts[n] <= dispatched[n] for n in names), (starts, dispatched)
    assert {n for n in names if starts[n] > 1} <= lost
