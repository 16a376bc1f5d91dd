"""Stopping a Dask run: a terminal's Ctrl-C (SIGINT to the engine's whole process group,
the local cluster's workers included) or a SIGTERM to the engine alone interrupts the
run (exit 130, its running attempts `interrupted`, not lost), leaves no process behind,
and the resume runs each item exactly once; a pause lets what runs finish and starts
nothing new."""

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
from tests.dask_cluster import DaskCluster, witness_lines
from tests.engine_helpers import DEADLINE, wait_for, write_workflow

pytest.importorskip("distributed", reason="the dask extra is not installed")

ITEMS = 6

# While `hold` exists, an execution stays until it is stopped.
WORKFLOW = """\
name: stop
map:
  input: items.json
  id: "${item.name}"
  max_parallel: 2
  agent_template:
    - run: |
        exec 9>"locks/${item.name}"
        flock -n 9 || echo "overlap ${item.name}" >> witness
        echo "start ${item.name} $ENGINE_ATTEMPT $PPID $$" >> witness
        while [ -e hold ]; do sleep 0.05; done
        echo "end ${item.name} $ENGINE_ATTEMPT" >> witness
"""


def _children(pid: int) -> set[int]:
    """The processes whose parent is ``pid`` (the local cluster's workers among them)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rfind(")") + 2 :].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def _setup(tmp_path: Path) -> Path:
    (tmp_path / "locks").mkdir()
    (tmp_path / "hold").touch()
    (tmp_path / "items.json").write_text(json.dumps([{"name": f"i{n}"} for n in range(ITEMS)]))
    return write_workflow(tmp_path, WORKFLOW)


def _once_each(tmp_path: Path, run: str) -> None:
    """Each item succeeded exactly once, no execution overlapped another of its item,
    none ran more often than it was dispatched, and the chain verifies."""
    ledger = tmp_path / ".engine" / "runs" / run / "ledger.ndjson"
    verify_ledger(ledger)
    dispatched: collections.Counter[str] = collections.Counter()
    succeeded: collections.Counter[str] = collections.Counter()
    for record in LedgerReader(ledger).records():
        if record.type == "item.dispatched":
            dispatched[record.data.item] += 1  # type: ignore[union-attr]
        elif record.type == "item.succeeded":
            succeeded[record.data.item] += 1  # type: ignore[union-attr]
    names = {f"i{n}" for n in range(ITEMS)}
    assert set(succeeded) == names and all(n == 1 for n in succeeded.values()), succeeded
    lines = witness_lines(tmp_path / "witness")
    assert not [w for w in lines if w[0] == "overlap"], lines
    starts = collections.Counter(w[1] for w in lines if w[0] == "start")
    assert set(starts) == names
    assert all(starts[n] <= dispatched[n] for n in names), (starts, dispatched)


def _resume(tmp_path: Path, run: str, *executor: str) -> None:
    done = subprocess.run(
        [ENGINE, "resume", run, *executor, "--no-progress"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=DEADLINE * 2,
        check=False,
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_a_stopped_local_cluster_run_is_interrupted_leaves_nothing_and_resumes(
    tmp_path: Path, how: str
) -> None:
    wf = _setup(tmp_path)
    witness = tmp_path / "witness"
    local = ["--executor", "dask", "--workers", "2"]
    engine = subprocess.Popen(
        [ENGINE, "run", str(wf), *local, "--run-id", "stop", "--no-progress"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # a terminal's foreground group of its own
    )
    try:
        wait_for(
            lambda: sum(w[0] == "start" for w in witness_lines(witness)) >= 2,
            what="attempts to run on the local cluster",
        )
        started = [w for w in witness_lines(witness) if w[0] == "start"]
        pids = {engine.pid, *_children(engine.pid)}
        pids |= {int(w[3]) for w in started} | {int(w[4]) for w in started}
        if how == "ctrl-c":
            os.killpg(engine.pid, signal.SIGINT)
        else:
            os.kill(engine.pid, signal.SIGTERM)
        _, stderr = engine.communicate(timeout=DEADLINE)
    finally:
        if engine.poll() is None:
            os.killpg(engine.pid, signal.SIGKILL)
            engine.wait()
    assert engine.returncode == 130, stderr.decode()
    wait_for(lambda: not any(alive(pid) for pid in pids), what="every process to end")
    ledger = tmp_path / ".engine" / "runs" / "stop" / "ledger.ndjson"
    failed = [r.data for r in LedgerReader(ledger).records() if r.type == "item.failed"]
    running = {(w[1], int(w[2])) for w in started}
    assert {(f.item, f.attempt) for f in failed} == running  # type: ignore[union-attr]
    assert {f.error_type for f in failed} == {"interrupted"}, failed  # type: ignore[union-attr]
    assert not [r for r in LedgerReader(ledger).records() if r.type == "item.dead_lettered"]
    if how == "ctrl-c":  # (the resume of a stopped run is the same either way)
        (tmp_path / "hold").unlink()
        _resume(tmp_path, "stop", *local)
        _once_each(tmp_path, "stop")


def test_a_paused_dask_run_lets_its_attempts_finish_starts_nothing_and_resumes(
    dask_cluster: DaskCluster, tmp_path: Path
) -> None:
    wf = _setup(tmp_path)
    witness = tmp_path / "witness"
    ledger = tmp_path / ".engine" / "runs" / "paused" / "ledger.ndjson"
    executor = ["--executor", dask_cluster.address]
    engine = subprocess.Popen(
        [ENGINE, "run", str(wf), *executor, "--run-id", "paused", "--no-progress"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        wait_for(
            lambda: sum(w[0] == "start" for w in witness_lines(witness)) >= 2,
            what="attempts to run on the workers",
        )
        pause = subprocess.run(
            [ENGINE, "pause", "paused"], cwd=tmp_path, capture_output=True, text=True, check=False
        )
        assert pause.returncode == 0, pause.stderr
        (tmp_path / "hold").unlink()
        # What ran finishes, on the workers, and is recorded.
        wait_for(
            lambda: (
                len([r for r in LedgerReader(ledger).records() if r.type == "item.succeeded"]) == 2
            ),
            what="the running attempts to finish while paused",
        )
        os.kill(engine.pid, signal.SIGTERM)
        _, stderr = engine.communicate(timeout=DEADLINE)
    finally:
        if engine.poll() is None:
            os.killpg(engine.pid, signal.SIGKILL)
            engine.wait()
    assert engine.returncode == 130, stderr.decode()
    types = [r.type for r in LedgerReader(ledger).records()]
    paused = types.index("run.paused")
    assert "item.dispatched" not in types[paused:], "nothing is dispatched once paused"
    assert types[paused:].count("item.succeeded") == 2
    assert "item.failed" not in types, "the running attempts were let finish"
    assert sum(w[0] == "start" for w in witness_lines(witness)) == 2
    _resume(tmp_path, "paused", *executor)
    _once_each(tmp_path, "paused")
