"""The cluster itself lost, and a run resumed elsewhere than where it ran.

* The scheduler SIGKILLed mid-run: the run stops (failed, resumable) with the
  attempts it ran left without an outcome, none recorded lost, retried or
  dead-lettered; a resume elsewhere is refused while the old scheduler's address
  cannot be reached (its workers may still run them), and goes on once it can.
* A coordinator SIGKILLed, its run resumed with no ``--executor`` (it goes on where
  it ran) or on another executor (what it left on the cluster is still stopped,
  the run's staging there removed).
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from engine.exec.dask.executor import run_prefix
from engine.exec.dask.worker import STAGING, _digest
from ledger.reader import LedgerReader, verify_ledger
from tests.conftest import ENGINE
from tests.dask_cluster import DaskCluster, start_cluster, witness_lines, worker_directories
from tests.engine_helpers import DEADLINE, wait_for, write_workflow

pytest.importorskip("distributed", reason="the dask extra is not installed")

ITEMS = 4

WORKFLOW = """\
name: lost
map:
  input: items.json
  id: "${item.name}"
  max_parallel: 4
  agent_template:
    - run: |
        exec 9>"locks/${item.name}"
        flock -n 9 || echo "overlap ${item.name}" >> witness
        echo "start ${item.name}" >> witness
        echo "working on ${item.name}"
        while [ -e hold ]; do sleep 0.05; done
        echo "end ${item.name}" >> witness
"""


def _setup(tmp_path: Path) -> Path:
    (tmp_path / "locks").mkdir()
    (tmp_path / "hold").touch()
    (tmp_path / "items.json").write_text(json.dumps([{"name": f"i{n}"} for n in range(ITEMS)]))
    return write_workflow(tmp_path, WORKFLOW)


def _start(tmp_path: Path, wf: Path, address: str) -> subprocess.Popen[str]:
    engine = subprocess.Popen(
        [ENGINE, "run", str(wf), "--executor", address, "--run-id", "lost", "--no-progress"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    witness = tmp_path / "witness"
    try:
        wait_for(
            lambda: len(witness_lines(witness)) >= ITEMS, what="every item to start on the workers"
        )
    except BaseException:
        engine.kill()
        engine.communicate()
        raise
    return engine


def _engine(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ENGINE, *args, "--no-progress"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=DEADLINE * 2,
        check=False,
    )


def _types(tmp_path: Path) -> list[str]:
    ledger = tmp_path / ".engine" / "runs" / "lost" / "ledger.ndjson"
    verify_ledger(ledger)
    return [record.type for record in LedgerReader(ledger).records()]


def _exactly_once(tmp_path: Path) -> None:
    ledger = tmp_path / ".engine" / "runs" / "lost" / "ledger.ndjson"
    succeeded = collections.Counter(
        record.data.item  # type: ignore[union-attr]
        for record in LedgerReader(ledger).records()
        if record.type == "item.succeeded"
    )
    assert succeeded == {f"i{n}": 1 for n in range(ITEMS)}
    assert not [w for w in witness_lines(tmp_path / "witness") if w[0] == "overlap"]


def test_a_lost_scheduler_stops_the_run_resumable_with_nothing_lost_or_dead(
    tmp_path: Path,
) -> None:
    wf = _setup(tmp_path)
    with start_cluster(tmp_path / "first") as first:
        engine = _start(tmp_path, wf, first.address)
        try:
            os.kill(first.scheduler.pid, signal.SIGKILL)
            _, stderr = engine.communicate(timeout=DEADLINE * 2)
        finally:
            if engine.poll() is None:
                engine.kill()
                engine.communicate()
        (tmp_path / "hold").unlink()
    assert engine.returncode == 1, stderr
    assert "Traceback" not in stderr, stderr
    types = _types(tmp_path)
    assert types[-1] == "run.failed"
    ledger = tmp_path / ".engine" / "runs" / "lost" / "ledger.ndjson"
    *_, last = LedgerReader(ledger).records()
    assert f"the dask scheduler of {first.address} was lost" in last.data.reason  # type: ignore[union-attr]
    assert not {"item.failed", "item.retry_scheduled", "item.dead_lettered"} & set(types)
    old_port = int(first.address.rpartition(":")[2])
    with start_cluster(tmp_path / "second") as second:
        refused = _engine(tmp_path, "resume", "lost", "--executor", second.address)
        assert refused.returncode == 2, refused.stderr
        assert f"ran attempts on {first.address}, which cannot be reached" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) <= 2, refused.stderr  # a line, a hint
        with start_cluster(tmp_path / "again", workers=0, port=old_port):
            done = _engine(tmp_path, "resume", "lost", "--executor", second.address)
    assert done.returncode == 0, done.stderr
    _exactly_once(tmp_path)


@pytest.mark.parametrize("elsewhere", [False, True], ids=["where-it-ran", "on-local"])
def test_a_run_resumed_elsewhere_still_stops_what_it_left_on_the_cluster(
    dask_cluster: DaskCluster, tmp_path: Path, elsewhere: bool
) -> None:
    wf = _setup(tmp_path)
    engine = _start(tmp_path, wf, dask_cluster.address)
    os.kill(engine.pid, signal.SIGKILL)
    engine.communicate()
    run_dir = (tmp_path / ".engine" / "runs" / "lost").resolve()
    staging = [
        directory / STAGING / _digest(run_prefix("lost", run_dir))
        for directory in worker_directories(dask_cluster.address).values()
    ]
    assert any(path.is_dir() for path in staging), "the attempts left have staging"
    (tmp_path / "hold").unlink()
    done = _engine(tmp_path, "resume", "lost", *(["--executor", "local"] if elsewhere else []))
    assert done.returncode == 0, done.stderr
    resumed = [
        record.data
        for record in LedgerReader(run_dir / "ledger.ndjson").records()
        if record.type == "run.resumed"
    ]
    assert [r.executor for r in resumed] == ["local" if elsewhere else dask_cluster.address]  # type: ignore[union-attr]
    assert not any(path.exists() for path in staging), "the cluster's reclaim removed them"
    _exactly_once(tmp_path)
