"""A Dask worker killed mid-run: its attempts are worker_lost and retried, each item
succeeds exactly once, and no execution of an item overlaps another of the same item.

A cluster of its own (tests/dask_cluster.py), one worker SIGKILLed once some items
have finished and while attempts run on it (held there by a file). Each execution
writes a witness line under an flock of its item's (`start ITEM ATTEMPT
PID-OF-ITS-WORKER`, `end ITEM ATTEMPT`): one that starts while another of the same
item still lives writes `overlap`.
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
from tests.dask_cluster import start_cluster, witness_lines, worker_pids
from tests.engine_helpers import DEADLINE, wait_for, write_workflow

pytest.importorskip("distributed", reason="the dask extra is not installed")

ITEMS = 200

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
        echo "start ${item.name} $ENGINE_ATTEMPT $PPID" >> witness
        while [ -e hold ]; do sleep 0.05; done
        sleep 0.1
        echo "end ${item.name} $ENGINE_ATTEMPT" >> witness
"""


def running_on(lines: list[list[str]], pid: int) -> set[tuple[str, str]]:
    """The (item, attempt) executions started on the worker ``pid`` and not ended."""
    started = {(w[1], w[2]) for w in lines if w[0] == "start" and int(w[3]) == pid}
    return started - {(w[1], w[2]) for w in lines if w[0] == "end"}


def test_a_killed_worker_s_attempts_are_lost_and_retried_once_each(tmp_path: Path) -> None:
    (tmp_path / "locks").mkdir()
    (tmp_path / "items.json").write_text(json.dumps([{"name": f"i{n}"} for n in range(ITEMS)]))
    wf = write_workflow(tmp_path, WORKFLOW)
    witness = tmp_path / "witness"
    (tmp_path / "cluster").mkdir()
    with start_cluster(tmp_path / "cluster") as cluster:
        pids = worker_pids(cluster.address)
        killed = cluster.workers[0].pid
        (address,) = [a for a, pid in pids.items() if pid == killed]
        engine = subprocess.Popen(
            [ENGINE, "run", str(wf), "--executor", cluster.address, "--run-id", "loss"],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            wait_for(
                lambda: sum(w[0] == "end" for w in witness_lines(witness)) >= 40,
                what="40 items to end",
            )
            hold = tmp_path / "hold"
            hold.touch()  # an execution that starts from now on stays until it is removed
            seen = len(witness_lines(witness))
            wait_for(
                lambda: running_on(witness_lines(witness)[seen:], killed),
                what="attempts to be running on the worker",
            )
            os.kill(killed, signal.SIGKILL)
            hold.unlink()
            _, stderr = engine.communicate(timeout=DEADLINE * 2)
        finally:
            if engine.poll() is None:
                engine.kill()
                engine.wait()
    assert engine.returncode == 0, stderr.decode()
    ledger = tmp_path / ".engine" / "runs" / "loss" / "ledger.ndjson"
    verify_ledger(ledger)
    lines = witness_lines(witness)
    # Every execution ran in a worker process (the step's shell is the worker's child).
    assert {int(w[3]) for w in lines if w[0] == "start"} <= set(pids.values())
    dispatched: collections.Counter[str] = collections.Counter()
    succeeded: collections.Counter[str] = collections.Counter()
    lost: dict[tuple[str, str], str | None] = {}
    redispatched: set[tuple[str, str]] = set()
    for record in LedgerReader(ledger).records():
        data = record.data
        if record.type == "item.dispatched":
            dispatched[data.item] += 1  # type: ignore[union-attr]
            redispatched |= {(i, a) for i, a in lost if i == data.item and int(a) < data.attempt}  # type: ignore[union-attr]
        elif record.type == "item.succeeded":
            succeeded[data.item] += 1  # type: ignore[union-attr]
        elif record.type == "item.failed":
            assert data.error_type == "worker_lost", data  # type: ignore[union-attr]
            lost[data.item, str(data.attempt)] = data.worker  # type: ignore[union-attr]
    names = {f"i{n}" for n in range(ITEMS)}
    assert set(dispatched) == set(succeeded) == names
    assert all(n == 1 for n in succeeded.values()), "an item succeeded twice"
    # Each execution cut short on the killed worker is recorded lost with it, and retried.
    cut = running_on(lines, killed)
    assert cut, "attempts were running on the killed worker"
    assert {key: lost.get(key) for key in cut} == dict.fromkeys(cut, address)
    assert set(lost.values()) == {address}, "a lost attempt names the killed worker"
    assert set(lost) <= redispatched, "each lost attempt is dispatched again, a higher attempt"
    assert not [w for w in lines if w[0] == "overlap"]
    starts = collections.Counter(w[1] for w in lines if w[0] == "start")
    assert set(starts) == names
    assert all(starts[n] <= dispatched[n] for n in names), (starts, dispatched)
