"""Runs on a real Dask cluster on loopback: a map's items, the logs back, the process
groups stopped on the worker, and what is refused (tests/dask_cluster.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import time
from pathlib import Path

import pytest

from engine.exec.executor import Attempt, AttemptOutcome, AttemptRequest
from engine.run import RunOptions, RunResult, execute_run
from engine.workflow.load import load_workflow
from engine.workflow.spec import Step
from ledger.reader import verify_ledger
from tests.dask_cluster import DaskCluster
from tests.engine_helpers import records, run_workflow, wait_for, wait_for_async, within

pytest.importorskip("distributed", reason="the dask extra is not installed")

from engine.exec.dask.cluster import DaskUnreachable
from engine.exec.dask.executor import DaskExecutor

TWENTY = """\
name: twenty
map:
  input: items.json
  id: "${item.name}"
  max_parallel: 8
  agent_template:
    - run: |
        echo "out of ${item.name}"
        echo "err of ${item.name}" >&2
"""


def test_twenty_items_run_on_the_cluster_with_their_logs(
    dask_cluster: DaskCluster, tmp_path: Path
) -> None:
    (tmp_path / "items.json").write_text(json.dumps([{"name": f"i{n}"} for n in range(20)]))
    path = tmp_path / "wf.yml"
    path.write_text(TWENTY)
    result = run_workflow(path, tmp_path / "home", executor_name=dask_cluster.address)
    assert result.exit_code == 0, result.reason
    assert verify_ledger(result.run_dir / "ledger.ndjson").torn is None
    (started,) = records(result, "run.started")
    assert started.data.executor == dask_cluster.address
    succeeded = records(result, "item.succeeded")
    assert sorted(r.data.item for r in succeeded) == sorted(f"i{n}" for n in range(20))
    for record in succeeded:
        item = record.data.item
        out = (result.run_dir / record.data.stdout.path).read_text()
        err = (result.run_dir / record.data.stderr.path).read_text()
        assert out == f"out of {item}\n" and err == f"err of {item}\n"


class _Counting(DaskExecutor):
    """Counts the attempts submitted and not ended, at most."""

    most = 0

    async def start(self, request: AttemptRequest) -> Attempt:
        self.most = max(self.most, len(self.attempts) + 1)
        return await super().start(request)


def test_no_more_tasks_in_flight_than_max_parallel(
    dask_cluster: DaskCluster, tmp_path: Path
) -> None:
    (tmp_path / "items.json").write_text(json.dumps([{"name": f"i{n}"} for n in range(30)]))
    path = tmp_path / "wf.yml"
    path.write_text(
        TWENTY.replace("max_parallel: 8", "max_parallel: 3").replace(
            'echo "out of ${item.name}"', 'echo "out of ${item.name}"; sleep 0.1'
        )
    )
    executor = _Counting(dask_cluster.address)

    async def main() -> RunResult:
        try:  # the caller's executor: closed by the caller, in the run's loop
            options = RunOptions(executor=executor)
            return await execute_run(load_workflow(path), tmp_path / "home", options)
        finally:
            await executor.close()

    result = asyncio.run(main())
    assert result.exit_code == 0, result.reason
    assert 2 <= executor.most <= 3


def _request(tmp_path: Path, run: str, **kw: object) -> AttemptRequest:
    return AttemptRequest(
        run_id="dask-kill",
        item_id="item",
        attempt=1,
        idempotency_key="ik:kill",
        steps=[Step.model_validate({"run": run})],
        context={"item": {}, "env": {}},
        env={"PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        run_dir=tmp_path,
        kill_grace=0.5,
        **kw,  # type: ignore[arg-type]
    )


def _gone(pid: int) -> bool:
    """Not running any more: no such process, or a zombie (not reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return True
    return stat[stat.rfind(b")") + 2 :].split()[0] in (b"Z", b"X")


# The leader and a background child: both of the group, both to be stopped.
GROUP = "echo $$ > pids; sleep 300 & echo $! >> pids; echo $$; wait"


@pytest.mark.parametrize("how", ["timeout", "cancel", "force"])
def test_timeout_and_cancel_kill_the_group_on_the_worker(
    dask_cluster: DaskCluster, tmp_path: Path, how: str
) -> None:
    pids = tmp_path / "pids"

    async def main() -> tuple[AttemptOutcome, list[int]]:
        executor = DaskExecutor(dask_cluster.address)
        try:
            timeout = 2.0 if how == "timeout" else None
            attempt = await executor.start(_request(tmp_path, GROUP, timeout=timeout))
            await wait_for_async(
                lambda: len(pids.read_text().split()) == 2 if pids.exists() else False,
                what="the group to start on the worker",
            )
            running = [int(p) for p in pids.read_text().split()]
            assert not any(_gone(p) for p in running)
            if how != "timeout":
                await within(attempt.cancel(force=how == "force"), what="the cancel")
            return await within(attempt.wait(), what="the outcome"), running
        finally:
            await executor.close()

    outcome, running = asyncio.run(main())
    assert not outcome.ok
    assert outcome.timed_out if how == "timeout" else outcome.interrupted
    # The pid the attempt printed (its log, copied back) is the leader's, and it is gone.
    assert outcome.stdout is not None
    assert int((tmp_path / outcome.stdout.path).read_text()) == running[0]
    assert all(_gone(p) for p in running), running


def test_a_workspace_missing_on_the_worker_fails_the_attempt_saying_so(
    dask_cluster: DaskCluster, tmp_path: Path
) -> None:
    missing = tmp_path / "not-here"

    async def main() -> AttemptOutcome:
        executor = DaskExecutor(dask_cluster.address)
        try:
            request = _request(tmp_path, "true")
            attempt = await executor.start(dataclasses.replace(request, cwd=missing))
            return await within(attempt.wait(), what="the outcome")
        finally:
            await executor.close()

    outcome = asyncio.run(main())
    assert not outcome.ok and outcome.error is not None
    assert outcome.error_type == "validation_failed"
    assert f"the workspace {missing} does not exist on worker tcp://127.0.0.1:" in outcome.error
    assert "the workspace at the same path on every worker" in outcome.stderr_tail


def test_a_scheduler_that_cannot_be_reached_is_refused_before_the_run_is_created(
    tmp_path: Path,
) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    (tmp_path / "items.json").write_text(json.dumps([{"name": "a"}]))
    path = tmp_path / "wf.yml"
    path.write_text(TWENTY)
    executor = DaskExecutor(f"dask://127.0.0.1:{port}")  # the default 30 s to connect

    async def main() -> None:
        options = RunOptions(executor=executor, run_id="unreached")
        await execute_run(load_workflow(path), tmp_path / "home", options)

    began = time.monotonic()
    with pytest.raises(DaskUnreachable) as refused:
        asyncio.run(main())
    assert time.monotonic() - began < 20, "a refused port is said at once, not after 30 s"
    assert f"cannot reach the dask scheduler at dask://127.0.0.1:{port}" in str(refused.value)
    assert "\n" not in str(refused.value) and refused.value.exit_code == 2
    assert not (tmp_path / "home" / "runs" / "unreached").exists()


def test_a_claim_lasts_as_long_as_the_scheduler_knows_its_task(dask_cluster: DaskCluster) -> None:
    """A task's claim outlives its result (a result lost with its worker is computed again
    while the key is held: the claim must still refuse that run), and goes with the key."""
    from distributed import Client

    from engine.exec.dask import worker

    key = "engine-claimtest-0000000000000000-1-abcd"
    with Client(dask_cluster.address.replace("dask://", "tcp://"), timeout="60s") as client:
        future = client.submit(sum, [1, 2], key=key, pure=False)
        assert future.result() == 3
        assert client.run_on_scheduler(worker.claim, key, "w/1") == "w/1"
        assert client.run_on_scheduler(worker.claim, key, "w/2") == "w/1"  # taken
        del future  # released: the scheduler forgets the task, and its claim with it
        wait_for(
            lambda: client.run_on_scheduler(worker.claimant, key) is None,
            what="the claim to go with its task",
        )
