"""One contract for every executor: start, heartbeats, outcome, cancel.

Each executor runs this same suite: the local one, and the Dask one on a real
cluster on loopback (tests/dask_cluster.py).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from engine.exec.executor import AttemptRequest, Executor, HeartbeatSample
from engine.exec.local.executor import LocalExecutor
from engine.workflow.spec import Step
from tests.engine_helpers import wait_for_async, within


def _dask(request: pytest.FixtureRequest) -> Executor:
    from engine.exec.dask.executor import DaskExecutor

    cluster = request.getfixturevalue("dask_cluster")
    return DaskExecutor(cluster.address)


EXECUTORS: dict[str, Callable[[pytest.FixtureRequest], Executor]] = {
    "LocalExecutor": lambda _request: LocalExecutor(),
    "DaskExecutor": _dask,
}


def _request(tmp_path: Path, steps: list[dict[str, Any]], **kw: Any) -> AttemptRequest:
    kw.setdefault("env", {"PATH": "/usr/bin:/bin"})
    return AttemptRequest(
        run_id="contract",
        item_id="item/1",
        attempt=1,
        idempotency_key="ik:test",
        steps=[Step.model_validate(s) for s in steps],
        context={"item": {"name": "x y"}, "env": {}},
        cwd=tmp_path,
        run_dir=tmp_path,
        **kw,
    )


@pytest.fixture(params=list(EXECUTORS))
def executor(request: pytest.FixtureRequest) -> Executor:
    return EXECUTORS[request.param](request)


def _run(executor: Executor, main: Coroutine[Any, Any, None]) -> None:
    """Run a test's body, then close the executor in the same loop."""

    async def body() -> None:
        try:
            await main
        finally:
            await executor.close()

    asyncio.run(body())


def test_success_result_and_logs(executor: Executor, tmp_path: Path) -> None:
    async def main() -> None:
        attempt = await executor.start(
            _request(
                tmp_path,
                [
                    {"run": 'echo "hello ${item.name}"; echo warn >&2'},
                    {"run": "echo '{\"ok\": true}'", "output": "json"},
                ],
            )
        )
        outcome = await attempt.wait()
        assert outcome.ok and outcome.result == {"ok": True}
        assert outcome.stderr_tail == "warn"
        assert outcome.stdout is not None and outcome.stdout.size > 0
        assert (tmp_path / outcome.stdout.path).read_text().startswith("hello x y\n")

    _run(executor, main())


def test_failure_exit_code_and_environment(executor: Executor, tmp_path: Path) -> None:
    async def main() -> None:
        attempt = await executor.start(
            _request(tmp_path, [{"run": 'echo "$ENGINE_HEARTBEAT_FILE" >&2; exit 7'}])
        )
        outcome = await attempt.wait()
        assert not outcome.ok and outcome.exit_code == 7
        assert outcome.stderr_tail.strip()

    _run(executor, main())


def test_heartbeats_while_running(executor: Executor, tmp_path: Path) -> None:
    async def main() -> None:
        # It runs until the test has had three heartbeats (then it is let go).
        done = tmp_path / "done"
        attempt = await executor.start(
            _request(
                tmp_path,
                [{"run": f"while [ ! -e {done} ]; do sleep 0.02; done"}],
                heartbeat_interval=0.1,
            )
        )

        async def collect() -> list[HeartbeatSample]:
            samples = []
            async for sample in attempt.heartbeats():
                samples.append(sample)
                if len(samples) == 3:
                    done.touch()
            return samples

        samples = await within(collect(), what="three heartbeats and the end")
        outcome = await within(attempt.wait(), what="the outcome")
        assert outcome.ok
        assert len(samples) >= 3
        assert all(s.pid for s in samples)

    _run(executor, main())


def test_timeout_and_cancel(executor: Executor, tmp_path: Path) -> None:
    async def main() -> None:
        attempt = await executor.start(
            _request(tmp_path, [{"run": "sleep 300"}], timeout=0.3, kill_grace=0.2)
        )
        outcome = await within(attempt.wait(), what="the timeout to end the attempt")
        assert outcome.timed_out and not outcome.ok
        started = tmp_path / "started"
        attempt = await executor.start(
            _request(tmp_path, [{"run": f"touch {started}; sleep 300"}], kill_grace=0.2)
        )
        await wait_for_async(started.exists, what="the attempt to start")
        await attempt.cancel()
        outcome = await within(attempt.wait(), what="the cancel to end the attempt")
        assert outcome.interrupted and not outcome.ok

    _run(executor, main())


def test_a_background_child_holding_the_pipes_does_not_hang_the_attempt(
    executor: Executor, tmp_path: Path
) -> None:
    async def main() -> None:
        attempt = await executor.start(_request(tmp_path, [{"run": "sleep 300 & echo started"}]))
        # The leader's exit ends it (the group is killed), not the child's.
        outcome = await within(attempt.wait(), what="the attempt to end with its leader")
        assert outcome.ok and outcome.stdout_tail == "started"

    _run(executor, main())


def test_a_program_that_cannot_start_fails_the_attempt_with_why(
    executor: Executor, tmp_path: Path
) -> None:
    async def main() -> None:
        attempt = await executor.start(_request(tmp_path, [{"argv": ["no-such-program-x1"]}]))
        outcome = await attempt.wait()
        assert not outcome.ok and outcome.exit_code == 127
        assert "cannot start 'no-such-program-x1'" in outcome.stderr_tail
        assert "No such file or directory" in outcome.stderr_tail
        script = tmp_path / "not-executable.sh"
        script.write_text("#!/bin/sh\necho hi\n")
        attempt = await executor.start(_request(tmp_path, [{"argv": [str(script)]}]))
        outcome = await attempt.wait()
        assert not outcome.ok and "Permission denied" in outcome.stderr_tail
        attempt = await executor.start(
            _request(tmp_path, [{"argv": ["true"], "cwd": "missing-dir"}])
        )
        outcome = await attempt.wait()
        assert not outcome.ok
        assert f"in {tmp_path / 'missing-dir'}: No such file" in outcome.stderr_tail

    _run(executor, main())


def test_every_attempt_leads_its_own_session_with_exact_status(
    executor: Executor, tmp_path: Path
) -> None:
    async def main() -> None:
        out = tmp_path / "ids"
        attempt = await executor.start(
            _request(tmp_path, [{"argv": ["sh", "-c", f"ps -o pid=,pgid=,sid= -p $$ > {out}"]}])
        )
        outcome = await attempt.wait()
        assert outcome.ok, outcome.stderr_tail
        pid, pgid, sid = out.read_text().split()
        assert pid == pgid == sid
        attempt = await executor.start(_request(tmp_path, [{"argv": ["sh", "-c", "kill -9 $$"]}]))
        outcome = await attempt.wait()
        assert not outcome.ok and outcome.signal == 9 and outcome.exit_code is None

    _run(executor, main())


def test_attempt_environment_is_laid_over_the_shared_one(
    executor: Executor, tmp_path: Path
) -> None:
    async def main() -> None:
        out = tmp_path / "env"
        base = {"PATH": "/usr/bin:/bin", "SHARED": "base", "KEPT": "yes"}
        for _ in range(2):  # the second spawn reuses the shared environment's encoding
            attempt = await executor.start(
                _request(
                    tmp_path,
                    [{"argv": ["sh", "-c", f"env > {out}"], "env": {"SHARED": "step"}}],
                    base_env=base,
                    env={"OWN": "1"},
                )
            )
            assert (await attempt.wait()).ok
            lines = out.read_text().splitlines()
            assert "SHARED=step" in lines and "SHARED=base" not in lines
            assert "KEPT=yes" in lines and "OWN=1" in lines
            assert sum(line.startswith("SHARED=") for line in lines) == 1
        assert base == {"PATH": "/usr/bin:/bin", "SHARED": "base", "KEPT": "yes"}

    _run(executor, main())


def test_a_cancel_before_the_process_starts_is_not_lost(executor: Executor, tmp_path: Path) -> None:
    async def main() -> None:
        ran = tmp_path / "ran"
        attempt = await executor.start(_request(tmp_path, [{"run": f"touch {ran}; sleep 300"}]))
        # Should it start anyway, it is killed after a while (and the test fails).
        asyncio.get_running_loop().call_later(
            30, lambda: attempt.pgid and os.killpg(attempt.pgid, signal.SIGKILL)
        )
        await attempt.cancel()  # at once: its first step runs before the attempt's task
        outcome = await within(attempt.wait(), what="the outcome")
        assert outcome.interrupted and not outcome.ok
        assert not ran.exists()

    _run(executor, main())


def test_a_cancel_requested_before_the_process_starts_starts_none(
    executor: Executor, tmp_path: Path
) -> None:
    """Cancelled when ``cancel()`` is called, not when it is awaited: a signal handler
    schedules it (``ensure_future``), and the attempt's first step must not start meanwhile."""

    async def main() -> None:
        ran = tmp_path / "ran"
        attempt = await executor.start(_request(tmp_path, [{"run": f"touch {ran}; sleep 300"}]))
        asyncio.get_running_loop().call_later(
            30, lambda: attempt.pgid and os.killpg(attempt.pgid, signal.SIGKILL)
        )
        stopping = asyncio.ensure_future(attempt.cancel())
        outcome = await within(attempt.wait(), what="the outcome")
        await within(stopping, what="the cancel")
        assert outcome.interrupted and not outcome.ok
        # No process ran: none exited, none was killed.
        assert outcome.exit_code is None and outcome.signal is None
        assert attempt.pgid is None and not ran.exists()

    _run(executor, main())
