"""No error in the engine's own code drops an item or ends a run as completed.

Whatever goes wrong while an attempt is started, watched or recorded, the
attempt ends with a typed failure in the ledger (and one line on stderr), and
``run.completed`` is never appended while an item is running or pending.
"""

from __future__ import annotations

import asyncio
import gc
import math
import random
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from engine.exec.executor import Attempt, AttemptOutcome, AttemptRequest, Executor, HeartbeatSample
from engine.exec.local.executor import LocalExecutor
from engine.map.policy import MAX_RETRY_DELAY, backoff_delay
from engine.map.scheduler import MapOutcome, MapScheduler
from engine.workflow.spec import RetrySpec, Step
from ledger import LedgerReader
from projections.replay import replay
from tests.engine_helpers import records, run_workflow, write_workflow


def _dead(result: Any) -> dict[str, Any]:
    """item -> its last item.failed data, for every dead item."""
    failed = {r.data.item: r.data for r in records(result, "item.failed")}
    return {item: failed[item] for item in result.projections.dlq.dead}


def _assert_nothing_left_running(result: Any) -> None:
    counts = result.projections.items.counts
    assert counts["running"] == 0 and counts["pending"] == 0, counts


# --- values no process can be given ---------------------------------------------------


def _request(tmp_path: Path, env: dict[str, str], step: Step) -> AttemptRequest:
    return AttemptRequest(
        run_id="r",
        item_id="i",
        attempt=1,
        idempotency_key="ik:x",
        steps=[step],
        context={"item": "i"},
        env=env,
        cwd=tmp_path,
        run_dir=tmp_path / "run",
        base_env={"PATH": "/usr/bin:/bin"},
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FOO": "a\0b"}, "the value of environment variable FOO contains a NUL byte"),
        ({"A=B": "x"}, "illegal environment variable name 'A=B'"),
        ({"": "x"}, "illegal environment variable name ''"),
        ({"FOO": "a\ud800b"}, "the value of environment variable FOO is not valid text"),
        ({"FOO": "x" * 200_000}, "environment variable FOO is 200004 bytes, over the"),
    ],
)
def test_a_value_no_process_can_be_given_fails_the_attempt_typed(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    async def attempt() -> AttemptOutcome:
        step = Step.model_validate({"run": "echo hi"})
        handle = await LocalExecutor().start(_request(tmp_path, env, step))
        return await handle.wait()

    outcome = asyncio.run(attempt())
    assert not outcome.ok
    assert outcome.error_type == "validation_failed"
    assert outcome.error is not None and message in outcome.error
    assert message in outcome.stderr_tail


def test_a_nul_byte_reaching_an_item_at_run_time_is_a_typed_failure(tmp_path: Path) -> None:
    # The NUL comes from a setup step's output, after every check at load.
    wf = write_workflow(
        tmp_path,
        r"""
        name: nul
        setup:
          - run: printf 'a\000b'
            capture_output: token
        map:
          items: [one, two]
          id: "${item}"
          agent_template:
            - run: echo "$TOKEN"
              env: {TOKEN: "${token}"}
        """,
    )
    warnings: list[str] = []
    result = run_workflow(wf, tmp_path / "home", warn=warnings.append)
    assert result.status == "completed" and result.exit_code == 1
    _assert_nothing_left_running(result)
    dead = _dead(result)
    assert sorted(dead) == ["one", "two"]
    assert {d.error_type for d in dead.values()} == {"validation_failed"}
    assert all("NUL byte" in d.message for d in dead.values())


def test_output_json_with_nan_is_invalid_output_not_a_dropped_item(tmp_path: Path) -> None:
    wf = write_workflow(
        tmp_path,
        """
        name: nan
        map:
          items: [1]
          agent_template:
            - run: echo NaN
              output: json
        """,
    )
    result = run_workflow(wf, tmp_path / "home")
    assert result.exit_code == 1
    _assert_nothing_left_running(result)
    (failure,) = _dead(result).values()
    assert failure.error_type == "validation_failed"
    assert "NaN is not a JSON value" in failure.message


# --- errors in the engine's own code ------------------------------------------------------


class _Broken(Attempt):
    def __init__(self, how: str, request: AttemptRequest) -> None:
        self.how = how
        self.request = request

    async def heartbeats(self) -> AsyncIterator[HeartbeatSample]:
        if self.how == "heartbeats":
            raise RuntimeError("the heartbeat source broke")
        return
        yield  # pragma: no cover - makes this an async generator

    async def wait(self) -> AttemptOutcome:
        if self.how == "wait":
            raise RuntimeError("waiting broke")
        if self.how == "unrecordable":  # a lone surrogate: no JSON can hold it
            return AttemptOutcome(ok=True, duration=0.0, result="a\ud800b")
        return AttemptOutcome(ok=True, duration=0.0, exit_code=0)

    async def cancel(self, *, force: bool = False) -> None:
        return None


class _BrokenExecutor(Executor):
    """Breaks for the item named ``bad`` only, in the way given."""

    name = "broken"

    def __init__(self, how: str) -> None:
        self.how = how

    async def start(self, request: AttemptRequest) -> Attempt:
        how = self.how if request.item_id == "bad" else "fine"
        if how == "start":
            raise RuntimeError("starting broke")
        return _Broken(how, request)


@pytest.mark.parametrize("how", ["start", "heartbeats", "wait", "unrecordable"])
def test_an_engine_error_in_supervision_fails_the_attempt_and_the_run_reports_it(
    tmp_path: Path, how: str
) -> None:
    wf = write_workflow(
        tmp_path,
        """
        name: broken
        map:
          items: [a, bad, c]
          id: "${item}"
          agent_template:
            - run: "true"
        """,
    )
    warnings: list[str] = []
    result = run_workflow(
        wf, tmp_path / "home", executor=_BrokenExecutor(how), warn=warnings.append
    )
    # Not exit 0: the bad item is in the DLQ, typed, and the others succeeded.
    assert (result.status, result.exit_code) == ("completed", 1)
    _assert_nothing_left_running(result)
    (failure,) = _dead(result).values()
    assert failure.item == "bad" and failure.error_type == "unknown"
    assert "engine error" in failure.message
    assert result.projections.items.counts["succeeded"] == 2
    assert len(warnings) == 1 and "'bad'" in warnings[0], warnings


def test_the_cli_says_it_in_one_line_on_stderr(tmp_path: Path) -> None:
    wf = write_workflow(
        tmp_path,
        """
        name: nan
        map:
          items: [1]
          agent_template:
            - run: "true"
        """,
    )
    # The engine, with an error planted where it records outcomes: one line, no traceback.
    script = (
        "import sys\n"
        "from cli.main import main\n"
        "from engine.map import outcomes\n"
        "def broken(*args, **kwargs):\n"
        "    raise RuntimeError('planted')\n"
        "outcomes.outcome_events = broken\n"
        "sys.argv = ['engine', '--home', sys.argv[1], 'run', sys.argv[2], '--no-progress']\n"
        "main()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "home"), str(wf)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "never retrieved" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "engine: error while recording the outcome of item" in lines[0]


def test_run_completed_is_never_appended_while_items_are_unfinished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wf = write_workflow(
        tmp_path,
        """
        name: unfinished
        map:
          items: [a, b]
          id: "${item}"
          agent_template:
            - run: "true"
        """,
    )

    async def stops_early(self: MapScheduler) -> MapOutcome:
        return MapOutcome()  # as a scheduler bug would: the map "ends" with items pending

    with monkeypatch.context() as patched:
        patched.setattr(MapScheduler, "run", stops_early)
        warnings: list[str] = []
        result = run_workflow(wf, tmp_path / "home", warn=warnings.append)
    assert (result.status, result.exit_code) == ("failed", 1)
    ledger = result.run_dir / "ledger.ndjson"
    types = [r.type for r in LedgerReader(ledger).records()]
    assert "run.completed" not in types and types[-1] == "run.failed"
    assert "2 pending (a, b)" in (result.reason or "")
    assert len(warnings) == 1
    # The run is not lost: a resume finishes it.
    from engine.run import RunOptions, resume_run

    resumed = asyncio.run(resume_run(result.run_dir, RunOptions()))
    assert (resumed.status, resumed.exit_code) == ("completed", 0)
    assert replay(ledger).items.counts["succeeded"] == 2


# --- retry delays ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "attempt"),
    [
        ({"initial": 1e308, "max": 1e308, "jitter": False}, 1),
        ({"initial": 1e308, "max": 1e308, "jitter": True}, 1),
        ({"initial": 2.0, "max": 1e308, "multiplier": 10.0}, 5000),
        ({"initial": math.nan, "max": math.nan, "jitter": False}, 1),
        ({"backoff": "linear", "initial": math.inf, "max": math.inf}, 3),
    ],
)
def test_a_retry_delay_is_always_a_finite_bounded_number(
    settings: dict[str, Any], attempt: int
) -> None:
    retry = RetrySpec.model_construct(**{**RetrySpec().model_dump(), **settings})
    delay = backoff_delay(retry, attempt, random.Random(1))
    assert math.isfinite(delay) and 0 <= delay <= MAX_RETRY_DELAY


def test_a_failing_cache_lookup_stops_the_run_but_keeps_the_success_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.run import RunOptions, resume_run
    from engine.store.cache import ItemHooks

    wf = write_workflow(
        tmp_path,
        """
        name: cache
        cache: {key: ["${item}"]}
        map:
          items: [a, b]
          id: "${item}"
          max_parallel: 1
          agent_template:
            - run: echo "${item}" >> ran.log
        """,
    )
    check = ItemHooks.check

    async def breaks_on_b(self: ItemHooks, item: str, value: Any, attempts: int) -> Any:
        if item == "b":
            raise RuntimeError("the cache broke")
        return await check(self, item, value, attempts)

    with monkeypatch.context() as patched:
        patched.setattr(ItemHooks, "check", breaks_on_b)
        warnings: list[str] = []
        result = run_workflow(wf, tmp_path / "home", warn=warnings.append)
    assert (result.status, result.exit_code) == ("failed", 1)
    assert "engine error: RuntimeError: the cache broke" in (result.reason or "")
    assert [r.data.item for r in records(result, "item.succeeded")] == ["a"]
    assert result.projections.items.items["b"].status == "pending"
    assert any("looking up the cache" in w for w in warnings)
    resumed = asyncio.run(resume_run(result.run_dir, RunOptions()))
    assert (resumed.status, resumed.exit_code) == ("completed", 0)
    assert (tmp_path / "ran.log").read_text() == "a\nb\n"


def test_an_item_value_no_json_can_hold_is_one_line_and_exit_2(tmp_path: Path) -> None:
    wf = write_workflow(
        tmp_path,
        r"""
        name: surrogate
        map:
          items: ["a\ud800b"]
          id: "n-${item_index}"
          agent_template:
            - run: "true"
        """,
    )
    done = subprocess.run(
        [sys.executable, "-m", "cli", "--home", str(tmp_path / "home"), "run", str(wf)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "internal error" not in lines[0], done.stderr


@pytest.mark.parametrize("text", ["\x01" * 65536, "é\x02" * 40000, "a\ud800" * 9000, "ok"])
def test_a_failure_tail_fits_its_record_once_escaped(text: str) -> None:
    # A tail of control characters takes six bytes each as JSON: a 64 KiB tail
    # made item.failed too large to record, and the failure lost its type.
    from engine.map.outcomes import _bounded

    bounded = _bounded(text)
    assert len(msgspec.json.encode(bounded)) <= 64 * 1024
    assert bounded and text.encode("utf-8", "replace").decode().endswith(bounded)


def test_when_nothing_can_be_recorded_the_run_stops_resumable_never_completed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from engine.run import RunOptions, execute_run, resume_run
    from engine.workflow.load import load_workflow
    from ledger.errors import LedgerWriteFailed
    from ledger.events import ItemSucceeded
    from ledger.writer import LedgerWriter

    wf = write_workflow(
        tmp_path,
        """
        name: stopped-writer
        map:
          items: [a, b, c, d]
          id: "${item}"
          max_parallel: 1
          agent_template:
            - run: echo "${item}" >> ran.log
        """,
    )
    append = LedgerWriter.append_async

    async def fails_at_b(self: LedgerWriter, events: Any) -> Any:
        batch = list(events)
        if any(isinstance(e, ItemSucceeded) and e.item == "b" for e in batch):
            # As a failed fsync does: the writer stops for good.
            self._failed = OSError(5, "Input/output error")
        return await append(self, batch)

    warnings: list[str] = []
    with monkeypatch.context() as patched:
        patched.setattr(LedgerWriter, "append_async", fails_at_b)
        with pytest.raises(LedgerWriteFailed):
            asyncio.run(
                execute_run(
                    load_workflow(wf),
                    tmp_path / "home",
                    RunOptions(run_id="r", warn=warnings.append),
                )
            )
    ledger = tmp_path / "home" / "runs" / "r" / "ledger.ndjson"
    types = [r.type for r in LedgerReader(ledger).records()]
    assert "run.completed" not in types and "run.failed" not in types
    assert warnings == []  # the error ends the run: the CLI prints it, in one line
    gc.collect()  # a task whose exception nobody retrieved says so when it is collected
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
    resumed = asyncio.run(resume_run(ledger.parent, RunOptions()))
    assert (resumed.status, resumed.exit_code) == ("completed", 0)
    succeeded = [r.data.item for r in LedgerReader(ledger).records() if r.type == "item.succeeded"]
    assert sorted(succeeded) == ["a", "b", "c", "d"]
