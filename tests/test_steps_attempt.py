"""A step's retry waits and its stderr, in real attempts of the local executor."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from engine.exec.executor import AttemptRequest
from engine.exec.local.executor import LocalExecutor
from engine.exec.program import STDERR_LIMIT
from engine.workflow.spec import Step
from tests.engine_helpers import DEADLINE, wait_for_async, within


def _request(tmp_path: Path, steps: list[dict[str, Any]], **kw: Any) -> AttemptRequest:
    kw.setdefault("env", {"PATH": "/usr/bin:/bin"})
    return AttemptRequest(
        run_id="steps",
        item_id="item-1",
        attempt=1,
        idempotency_key="ik:steps",
        steps=[Step.model_validate(s) for s in steps],
        context={"env": {}},
        cwd=tmp_path,
        run_dir=tmp_path,
        **kw,
    )


LONG_RETRY = {"max_attempts": 2, "backoff": "fixed", "initial": "1h", "jitter": False}
"""A retry whose wait no test sits out: only what cuts it short ends it."""


def test_a_retry_runs_the_failed_command_again_after_its_backoff(tmp_path: Path) -> None:
    retry = {"max_attempts": 3, "backoff": "fixed", "initial": 0.05, "jitter": False}
    script = 'echo run >> runs; [ "$(wc -l < runs)" -ge 3 ]'

    async def main() -> None:
        step = {"run": script, "retry": {**retry, "retry_on": ["command_failed"]}}
        attempt = await LocalExecutor().start(_request(tmp_path, [step]))
        outcome = await within(attempt.wait(), what="the attempt")
        assert outcome.ok, outcome
        assert [(r.by, r.runs) for r in outcome.recovered] == [("retry", 3)]

    asyncio.run(main())
    assert (tmp_path / "runs").read_text() == "run\n" * 3


def test_a_cancel_ends_a_retry_wait_at_once(tmp_path: Path) -> None:
    async def main() -> None:
        step = {
            "run": "echo ran >> runs; exit 1",
            "retry": {**LONG_RETRY, "retry_on": ["command_failed"]},
            "on_failure": {"steps": [{"run": "echo handler >> runs"}], "recover": True},
        }
        attempt = await LocalExecutor().start(_request(tmp_path, [step]))
        runs = tmp_path / "runs"
        await wait_for_async(lambda: runs.exists() and attempt._backoff is not None)  # type: ignore[attr-defined]
        started = time.monotonic()
        await attempt.cancel()
        outcome = await within(attempt.wait(), what="the cancelled attempt")
        assert time.monotonic() - started < DEADLINE / 2
        assert outcome.interrupted and not outcome.ok and outcome.recovered == ()

    asyncio.run(main())
    assert (tmp_path / "runs").read_text() == "ran\n"  # neither a retry nor the handler


def test_the_attempts_deadline_cuts_a_retry_wait_short_as_a_timeout(tmp_path: Path) -> None:
    async def main() -> None:
        step = {
            "run": "echo ran >> runs; exit 1",
            "retry": {**LONG_RETRY, "retry_on": ["command_failed"]},
        }
        request = _request(tmp_path, [step], timeout=1.0, heartbeat_interval=0.1, hung_after=0.4)
        attempt = await LocalExecutor().start(request)
        beats = []

        async def count() -> None:
            async for sample in attempt.heartbeats():
                beats.append(sample)

        counting = asyncio.ensure_future(count())
        outcome = await within(attempt.wait(), what="the attempt past its deadline")
        await within(counting, what="the heartbeats' end")
        # waiting to retry is not hanging (hung_after is shorter than the wait)
        assert outcome.timed_out and not outcome.hung and not outcome.ok
        assert len(beats) >= 2  # heartbeats went on while it waited

    asyncio.run(main())
    assert (tmp_path / "runs").read_text() == "ran\n"


def test_a_steps_stderr_is_its_own_and_its_end_is_kept(tmp_path: Path) -> None:
    big = STDERR_LIMIT + 5000
    steps = [
        {"run": "echo first-err >&2"},
        {"run": f"head -c {big} /dev/zero | tr '\\0' x >&2; echo END >&2; echo out"},
        {"run": 'printf "%s" "${last.stderr}" > seen; printf "%s" "${shell.output}" > out'},
    ]

    async def main() -> None:
        attempt = await LocalExecutor().start(_request(tmp_path, steps))
        outcome = await within(attempt.wait(), what="the attempt")
        assert outcome.ok, outcome

    asyncio.run(main())
    seen = (tmp_path / "seen").read_text()
    assert seen.endswith("xxxEND") and "first-err" not in seen
    assert len(seen) <= STDERR_LIMIT
    assert (tmp_path / "out").read_text() == "out"


def test_stderr_is_redacted_before_a_step_sees_it(tmp_path: Path) -> None:
    steps = [
        {"run": "echo token s3cr3t-value >&2"},
        {"run": 'printf "%s" "${shell.stderr}" > seen'},
    ]

    async def main() -> None:
        request = _request(tmp_path, steps, redact=["s3cr3t-value"])
        outcome = await within((await LocalExecutor().start(request)).wait(), what="it")
        assert outcome.ok

    asyncio.run(main())
    assert (tmp_path / "seen").read_text() == "token ***"
