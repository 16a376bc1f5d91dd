"""Step failure handling, captures and phase timeouts in real runs of the engine."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from engine.run import RunOptions, resume_run
from tests.engine_helpers import DEADLINE, records, run_workflow, write_workflow


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_a_handler_that_succeeds_lets_the_item_carry_on(tmp_path: Path) -> None:
    wf = write_workflow(
        tmp_path,
        """
        name: recover
        map:
          items: [a, b]
          id: "${item}"
          retry: {max_attempts: 1}
          agent_template:
            - run: echo "start ${item}" >> "log-${item}"
            - run: '[ "${item}" = a ] || { echo "no b here" >&2; exit 4; }'
              on_failure:
                steps:
                  - run: echo "fixed after ${last.exit_code}" >> "log-${item}"
                recover: true
            - run: echo "done ${item}" >> "log-${item}"
        """,
    )
    result = run_workflow(wf, tmp_path / "home")
    assert (result.status, result.exit_code) == ("completed", 0), result.reason
    assert _lines(tmp_path / "log-a") == ["start a", "done a"]
    assert _lines(tmp_path / "log-b") == ["start b", "fixed after 4", "done b"]
    succeeded = {r.data.item: r.data for r in records(result, "item.succeeded")}
    assert succeeded["a"].recovered == []
    (note,) = succeeded["b"].recovered
    assert (note.step, note.by, note.runs, note.exit_code) == (1, "recover", 1, 4)
    assert (note.error_type, note.message) == ("command_failed", "no b here")
    assert records(result, "item.failed") == []


def test_rerun_runs_the_failed_command_again_after_the_handler(tmp_path: Path) -> None:
    wf = write_workflow(
        tmp_path,
        """
        name: rerun
        map:
          items: [x]
          retry: {max_attempts: 1}
          agent_template:
            - run: |
                echo run >> runs; [ -e repaired ] && echo '{"fixed": true}'
              output: json
              on_failure:
                steps: [{run: echo handler >> runs; touch repaired}]
                rerun: 3
        """,
    )
    result = run_workflow(wf, tmp_path / "home")
    assert result.status == "completed", result.reason
    assert _lines(tmp_path / "runs") == ["run", "handler", "run"]
    (done,) = records(result, "item.succeeded")
    assert done.data.result == {"fixed": True} and done.data.attempt == 1
    assert [(n.by, n.runs) for n in done.data.recovered] == [("rerun", 2)]


def test_a_step_retry_runs_in_place_within_the_attempt(tmp_path: Path) -> None:
    wf = write_workflow(
        tmp_path,
        """
        name: step-retry
        map:
          items: [x]
          retry: {max_attempts: 1}
          agent_template:
            - run: echo run >> runs; [ "$(wc -l < runs)" -ge 2 ] || { echo busy >&2; exit 1; }
              retry: {max_attempts: 3, backoff: fixed, initial: 10ms, retry_on: [command_failed]}
        """,
    )
    result = run_workflow(wf, tmp_path / "home")
    assert result.status == "completed", result.reason
    assert _lines(tmp_path / "runs") == ["run", "run"]
    assert len(records(result, "item.dispatched")) == 1  # one attempt of the item
    (done,) = records(result, "item.succeeded")
    assert [(n.by, n.runs, n.message) for n in done.data.recovered] == [("retry", 2, "busy")]


def test_shell_stderr_and_typed_captures_reach_the_next_step(tmp_path: Path) -> None:
    wf = write_workflow(
        tmp_path,
        """
        name: captures
        agent: {command: echo}
        map:
          items: [x]
          retry: {max_attempts: 1}
          agent_template:
            - run: 'echo "warning: disk at 91%" >&2; echo 41'
              capture_output: count
              capture_format: number
            - claude: the prompt
            - run: echo yes
              capture_output: flag
              capture_format: boolean
            - run: >-
                n="${count}"; printf '%s|%s|%s|%s|%s|%s' "${shell.stderr}" "${shell.exit_code}"
                "$((n + 1))" "${flag}" "${claude.output}" "${last.stderr}" > seen
        """,
    )
    result = run_workflow(wf, tmp_path / "home")
    assert result.status == "completed", result.reason
    # ${shell.*}: the `echo yes` step (the last shell step); ${last.*} the same
    assert (tmp_path / "seen").read_text() == "|0|42|true|the prompt|"
    wf2 = write_workflow(
        tmp_path,
        """
        name: stderr
        map:
          items: [x]
          retry: {max_attempts: 1}
          agent_template:
            - run: 'echo "warning: disk at 91%" >&2; exit 2'
              on_failure:
                steps: [{run: 'printf "%s" "${shell.stderr}" > handler-saw'}]
                recover: true
            - run: printf '%s/%s' "${shell.stderr}" "${shell.exit_code}" > seen2
        """,
        name="wf2.yml",
    )
    result = run_workflow(wf2, tmp_path / "home2")
    assert result.status == "completed", result.reason
    assert (tmp_path / "handler-saw").read_text() == "warning: disk at 91%"
    assert (tmp_path / "seen2").read_text() == "warning: disk at 91%/2"


def test_a_capture_that_is_not_a_number_fails_the_item_validation_failed(tmp_path: Path) -> None:
    wf = write_workflow(
        tmp_path,
        """
        name: bad-number
        map:
          items: [x]
          retry: {max_attempts: 1}
          on_item_failure: ignore
          agent_template:
            - run: echo "12 apples"
              capture_output: count
              capture_format: number
            - run: touch never
        """,
    )
    result = run_workflow(wf, tmp_path / "home")
    (failed,) = records(result, "item.failed")
    assert failed.data.error_type == "validation_failed"
    assert failed.data.message == (
        "step 1 capture count: '12 apples' is not a number (capture_format: number)"
    )
    assert not (tmp_path / "never").exists()


def test_a_reduce_step_recovered_by_its_handler_lets_the_run_complete(tmp_path: Path) -> None:
    wf = write_workflow(
        tmp_path,
        """
        name: reduce-recover
        map:
          items: [1]
          agent_template: [{run: "true"}]
        reduce:
          - run: echo "no report tool" >&2; exit 9
            on_failure:
              steps: [{run: echo "fallback report" > report}]
              recover: true
          - run: echo after > after
        """,
    )
    result = run_workflow(wf, tmp_path / "home")
    assert (result.status, result.exit_code) == ("completed", 0), result.reason
    assert (tmp_path / "report").read_text() == "fallback report\n"
    assert (tmp_path / "after").read_text() == "after\n"
    first = next(r.data for r in records(result, "step.succeeded") if r.data.phase == "reduce")
    assert [(n.step, n.by, n.exit_code) for n in first.recovered] == [(0, "recover", 9)]


def test_a_setup_phase_timeout_stops_the_step_and_fails_the_run(tmp_path: Path) -> None:
    wf = write_workflow(
        tmp_path,
        """
        name: slow-setup
        phase_timeout: {setup: 1s}
        setup:
          - run: echo one >> setup.log
          - run: '[ -e fast ] || exec sleep 90'
          - run: echo three >> setup.log
        map:
          items: [1]
          agent_template: [{run: "true"}]
        """,
    )
    started = time.monotonic()
    result = run_workflow(wf, tmp_path / "home")
    assert time.monotonic() - started < DEADLINE
    assert (result.status, result.exit_code) == ("failed", 1)
    assert result.reason is not None
    assert "setup step 2" in result.reason
    assert result.reason.endswith("failed: setup timed out after 1s (phase_timeout.setup)")
    (failed,) = records(result, "step.failed")
    assert (failed.data.index, failed.data.error_type) == (1, "timeout")
    assert failed.data.message == "setup timed out after 1s (phase_timeout.setup)"
    # A resume runs setup again from the first step not done, with the whole timeout.
    (tmp_path / "fast").touch()
    again = asyncio.run(resume_run(result.run_dir, RunOptions()))
    assert (again.status, again.exit_code) == ("completed", 0), again.reason
    assert _lines(tmp_path / "setup.log") == ["one", "three"]


def test_a_step_timeout_shorter_than_the_phase_is_the_steps_own(tmp_path: Path) -> None:
    wf = write_workflow(
        tmp_path,
        """
        name: step-timeout
        phase_timeout: {reduce: 10m}
        map:
          items: [1]
          agent_template: [{run: "true"}]
        reduce:
          - run: exec sleep 600
            timeout: 500ms
        """,
    )
    result = run_workflow(wf, tmp_path / "home")
    assert result.status == "failed"
    (failed,) = records(result, "step.failed")
    assert failed.data.message == "timed out after 0.5s"
