"""The step sequence's failure handling, without any process: retry, on_failure's steps,
rerun and recover, captures by format, and the variables a step leaves for the next."""

from __future__ import annotations

import random
from typing import Any

import pytest

from engine.exec.program import CANCELLED, CaptureError, StepResult, capture
from engine.exec.sequence import StepSequence
from engine.workflow.spec import Step

OK = StepResult(exit_code=0)
FAIL = StepResult(exit_code=3, stderr=b"boom\n")


def _steps(*specs: dict[str, Any]) -> list[Step]:
    return [Step.model_validate(s) for s in specs]


def _drive(
    sequence: StepSequence,
    results: list[StepResult],
    *,
    cancelled: bool = False,
    expired: bool = False,
) -> list[tuple[str, bool, float]]:
    """Run the sequence on scripted results; what it asked: (command, deadline, backoff)."""
    asked: list[tuple[str, bool, float]] = []
    while (planned := sequence.next(cancelled=cancelled)) is not None:
        step, timed = planned
        asked.append((step.text, timed, sequence.backoff()))
        result = results[len(asked) - 1]
        sequence.record(result, stopped=cancelled, expired=expired and not result.ok)
    assert len(asked) == len(results), f"asked {asked}, scripted {len(results)}"
    return asked


def _outcome(sequence: StepSequence, **kw: Any) -> Any:
    args: dict[str, Any] = {
        "duration": 1.0, "cancelled": False, "hung": False, "logs_lost": False,
        "stderr_tail": "final", "stdout_tail": "", "stdout": None, "stderr": None, "redact": (),
    }  # fmt: skip
    return sequence.outcome(**{**args, **kw})


def _recovered(outcome: Any) -> list[tuple[int, str, int, str]]:
    return [(r.step, r.by, r.runs, r.error_type) for r in outcome.recovered]


RETRY = {"max_attempts": 3, "backoff": "fixed", "initial": 1.5, "jitter": False}


# --- rerun and recover ----------------------------------------------------------------


def test_a_rerun_that_succeeds_carries_on_as_if_the_step_had_succeeded() -> None:
    steps = _steps(
        {
            "run": "a",
            "capture_output": "n",
            "capture_format": "number",
            "on_failure": {"steps": [{"run": "h"}], "rerun": 2},
        },
        {"run": "b", "output": "text"},
    )
    sequence = StepSequence(steps, {}, tails=lambda: ("failed tail", ""))
    results = [
        FAIL,
        OK,
        StepResult(exit_code=0, stdout=b"7\n"),
        StepResult(exit_code=0, stdout=b"r"),
    ]
    asked = _drive(sequence, results)
    assert asked == [("a", True, 0.0), ("h", False, 0.0), ("a", True, 0.0), ("b", True, 0.0)]
    outcome = _outcome(sequence)
    assert outcome.ok and outcome.captures == {"n": 7} and outcome.result == "r"
    assert outcome.stderr_tail == "final"  # a success's tails, not the failure's
    assert _recovered(outcome) == [(0, "rerun", 2, "command_failed")]
    assert outcome.recovered[0].exit_code == 3 and outcome.recovered[0].message == "boom"


def test_reruns_exhausted_then_recover_goes_on_with_the_next_step() -> None:
    steps = _steps(
        {"run": "a", "on_failure": {"steps": [{"run": "h"}], "rerun": 1, "recover": True}},
        {"run": "b"},
    )
    sequence = StepSequence(steps, {}, tails=lambda: ("failed tail", ""))
    asked = _drive(sequence, [FAIL, OK, FAIL, OK, OK])
    assert [a[0] for a in asked] == ["a", "h", "a", "h", "b"]
    assert [a[1] for a in asked] == [True, False, True, False, True]
    outcome = _outcome(sequence)
    assert outcome.ok and outcome.exit_code == 0 and outcome.error_type is None
    assert outcome.stderr_tail == "final"
    assert _recovered(outcome) == [(0, "recover", 2, "command_failed")]
    # b saw the failed step as ${last}
    assert sequence.context["last"]["exit_code"] == 0


def test_a_recovered_last_step_ends_as_a_success() -> None:
    steps = _steps({"run": "a", "on_failure": {"recover": True}})  # no handlers: all succeed
    sequence = StepSequence(steps, {})
    assert [a[0] for a in _drive(sequence, [FAIL])] == ["a"]
    outcome = _outcome(sequence)
    assert outcome.ok and outcome.exit_code is None and outcome.error is None
    assert _recovered(outcome) == [(0, "recover", 1, "command_failed")]


def test_a_handler_that_fails_does_not_recover_the_step() -> None:
    steps = _steps(
        {"run": "a", "on_failure": {"steps": [{"run": "h1"}, {"run": "h2"}], "recover": True}},
        {"run": "b"},
    )
    sequence = StepSequence(steps, {}, tails=lambda: ("the step's own tail", "x"))
    asked = _drive(sequence, [FAIL, StepResult(exit_code=1), OK])
    assert [a[0] for a in asked] == ["a", "h1", "h2"]  # the handlers all run, b never
    outcome = _outcome(sequence)
    assert not outcome.ok and outcome.exit_code == 3 and outcome.recovered == ()
    assert outcome.stderr_tail == "the step's own tail"


def test_the_handlers_run_again_before_each_rerun_even_when_they_fail() -> None:
    steps = _steps({"run": "a", "on_failure": {"steps": [{"run": "h"}], "rerun": 2}})
    sequence = StepSequence(steps, {})
    asked = _drive(sequence, [FAIL, StepResult(exit_code=1), FAIL, OK, FAIL, OK])
    assert [a[0] for a in asked] == ["a", "h", "a", "h", "a", "h"]
    assert not _outcome(sequence).ok


def test_a_list_of_handlers_keeps_its_old_meaning() -> None:
    steps = _steps({"run": "a", "on_failure": [{"run": "h"}]}, {"run": "b"})
    sequence = StepSequence(steps, {})
    assert [a[0] for a in _drive(sequence, [FAIL, OK])] == ["a", "h"]
    assert not _outcome(sequence).ok


def test_a_stopped_step_is_neither_rerun_nor_recovered() -> None:
    on_failure = {"steps": [{"run": "h"}], "rerun": 3, "recover": True}
    # hung (stopped, not cancelled): the handlers still run, but nothing carries on
    sequence = StepSequence(_steps({"run": "a", "on_failure": on_failure}, {"run": "b"}), {})
    assert sequence.next(cancelled=False) is not None
    sequence.record(StepResult(signal=9), stopped=True)
    assert sequence.next(cancelled=False) is not None  # h
    sequence.record(OK, stopped=True)
    assert sequence.next(cancelled=False) is None
    assert not _outcome(sequence, hung=True).ok
    # past the attempt's deadline: no rerun of a step that would have no time
    sequence = StepSequence(_steps({"run": "a", "on_failure": on_failure}, {"run": "b"}), {})
    timed_out = StepResult(timed_out=True)
    assert [a[0] for a in _drive(sequence, [timed_out, OK], expired=True)] == ["a", "h"]
    assert not _outcome(sequence).ok and _outcome(sequence).timed_out


# --- retry ----------------------------------------------------------------------------


def test_a_retry_then_success_waits_its_backoff_and_carries_on() -> None:
    steps = _steps(
        {"run": "a", "retry": {**RETRY, "retry_on": ["command_failed"]}, "capture_output": "c"},
        {"run": "b"},
    )
    sequence = StepSequence(steps, {})
    asked = _drive(sequence, [FAIL, FAIL, StepResult(exit_code=0, stdout=b"done"), OK])
    assert asked == [("a", True, 0.0), ("a", True, 1.5), ("a", True, 1.5), ("b", True, 0.0)]
    outcome = _outcome(sequence)
    assert outcome.ok and outcome.captures == {"c": "done"}
    assert _recovered(outcome) == [(0, "retry", 3, "command_failed")]


def test_retries_exhausted_then_the_handlers_run_once() -> None:
    steps = _steps(
        {
            "run": "a",
            "retry": {**RETRY, "max_attempts": 2, "retry_on": ["command_failed"]},
            "on_failure": {"steps": [{"run": "h"}], "rerun": 1},
        }
    )
    sequence = StepSequence(steps, {})
    asked = _drive(sequence, [FAIL, FAIL, OK, FAIL, OK])
    # two runs (one retry), the handler, one rerun (not retried), the handler again
    assert asked == [
        ("a", True, 0.0),
        ("a", True, 1.5),
        ("h", False, 0.0),
        ("a", True, 0.0),
        ("h", False, 0.0),
    ]
    assert not _outcome(sequence).ok


def test_only_the_listed_error_types_are_retried() -> None:
    steps = _steps({"run": "a", "retry": RETRY})  # retry_on: the transient types
    sequence = StepSequence(steps, {})
    assert [a[0] for a in _drive(sequence, [FAIL])] == ["a"]  # command_failed: not retried
    limited = StepResult(exit_code=1, stderr=b"HTTP 429 Too Many Requests\n")
    sequence = StepSequence(steps, {})
    assert [a[0] for a in _drive(sequence, [limited, OK])] == ["a", "a"]
    assert _recovered(_outcome(sequence)) == [(0, "retry", 2, "rate_limited")]
    # the workflow's classify rules type a failure too
    rules = [{"pattern": "slow down", "as": "api_error"}]
    from engine.workflow.spec import ClassifyRule

    slow = StepResult(exit_code=1, stderr=b"please slow down\n")
    sequence = StepSequence(steps, {}, rules=[ClassifyRule.model_validate(r) for r in rules])
    assert [a[0] for a in _drive(sequence, [slow, OK])] == ["a", "a"]


def test_a_backoff_with_jitter_is_drawn_from_the_given_generator() -> None:
    retry = {"max_attempts": 2, "initial": 10, "retry_on": ["command_failed"]}
    steps = _steps({"run": "a", "retry": retry})
    delays = set()
    for _ in range(2):
        sequence = StepSequence(steps, {}, rng=random.Random(7))
        delays.add(_drive(sequence, [FAIL, OK])[1][2])
    (delay,) = delays
    assert 5.0 <= delay <= 10.0


def test_a_cancel_during_a_retry_wait_ends_the_sequence_without_handlers() -> None:
    steps = _steps(
        {
            "run": "a",
            "retry": {**RETRY, "retry_on": ["command_failed"]},
            "on_failure": {"steps": [{"run": "h"}], "recover": True},
        }
    )
    sequence = StepSequence(steps, {})
    assert sequence.next(cancelled=False) is not None
    sequence.record(FAIL, stopped=False)
    assert sequence.next(cancelled=False) is not None and sequence.backoff() == 1.5
    sequence.record(CANCELLED, stopped=True)  # what an executor records when a cancel cuts it
    assert sequence.next(cancelled=True) is None
    outcome = _outcome(sequence, cancelled=True)
    assert outcome.interrupted and not outcome.ok and outcome.recovered == ()


def test_a_deadline_during_a_retry_wait_is_a_timeout_and_no_more_retries() -> None:
    steps = _steps({"run": "a", "retry": {**RETRY, "retry_on": ["command_failed", "timeout"]}})
    sequence = StepSequence(steps, {})
    assert sequence.next(cancelled=False) is not None
    sequence.record(FAIL, stopped=False)
    assert sequence.next(cancelled=False) is not None and sequence.backoff() == 1.5
    sequence.record(StepResult(timed_out=True), stopped=False, expired=True)
    assert sequence.next(cancelled=False) is None  # timeout is listed, but no time is left
    outcome = _outcome(sequence)
    assert outcome.timed_out and not outcome.ok


# --- captures and the variables steps leave -------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [("42\n", 42), (" -7 ", -7), ("3.0", 3), ("2.5", 2.5), ("1e3", 1000), (".5", 0.5)],
)
def test_a_number_capture_is_an_int_when_integral(text: str, value: Any) -> None:
    got = capture(text, "number")
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize(
    ("text", "value"),
    [("true", True), ("YES", True), ("1\n", True), ("False", False), ("no", False), ("0", False)],
)
def test_a_boolean_capture(text: str, value: bool) -> None:
    assert capture(text, "boolean") is value


def test_string_is_text_and_a_huge_integer_is_kept_as_a_float() -> None:
    assert capture("  hi \n", "string") == "hi"
    assert capture("9" * 30, "number") == float("9" * 30)


@pytest.mark.parametrize(
    ("fmt", "text", "message"),
    [
        ("number", "12 apples", "'12 apples' is not a number (capture_format: number)"),
        ("number", "nan", "'nan' is not a number"),
        ("number", "1e999", "'1e999' is not a number"),
        ("number", "", "'' is not a number"),
        ("boolean", "maybe", "'maybe' is not a boolean (capture_format: boolean reads"),
    ],
)
def test_an_unreadable_number_or_boolean_fails_the_step(fmt: str, text: str, message: str) -> None:
    with pytest.raises(CaptureError, match=message.replace("(", r"\(").replace(")", r"\)")):
        capture(text, fmt)
    steps = _steps({"run": "a", "capture_output": "v", "capture_format": fmt}, {"run": "b"})
    sequence = StepSequence(steps, {})
    assert [a[0] for a in _drive(sequence, [StepResult(exit_code=0, stdout=text.encode())])] == [
        "a"
    ]
    outcome = _outcome(sequence)
    assert not outcome.ok and outcome.error_type == "validation_failed"
    assert outcome.error.startswith("step 1 capture v: ") and message in outcome.error


def test_each_kind_of_step_sets_its_variables_for_the_next() -> None:
    steps = _steps({"run": "a"}, {"claude": "p"}, {"argv": ["c"]}, {"run": "d"})
    sequence = StepSequence(steps, {})
    results = [
        StepResult(exit_code=0, stdout=b"A\n", stderr=b"warn a\n"),
        StepResult(exit_code=0, stdout=b"P", stderr=b"agent noise"),
        StepResult(exit_code=0, stdout=b"C", stderr=b""),
    ]
    seen = []
    for result in results:
        assert sequence.next(cancelled=False) is not None
        sequence.record(result, stopped=False)
        seen.append({k: sequence.context.get(k) for k in ("last", "shell", "claude")})
    assert seen[0]["shell"] == {"output": "A", "stderr": "warn a", "exit_code": 0}
    assert seen[0]["claude"] is None
    assert seen[1]["last"] == {"output": "P", "stderr": "agent noise", "exit_code": 0}
    assert seen[1]["claude"] == {"output": "P", "exit_code": 0}
    assert seen[1]["shell"] == seen[0]["shell"]  # the last shell step's, still
    assert seen[2]["last"]["output"] == "C" and seen[2]["shell"]["output"] == "A"


def test_an_incomplete_validation_is_a_failure_like_any_other() -> None:
    steps = _steps(
        {"run": "a", "validate": {"steps": [{"run": "v"}]}, "on_failure": {"recover": True}},
        {"run": "b"},
    )
    sequence = StepSequence(steps, {})
    half = StepResult(exit_code=0, stdout=b'{"completion_percentage": 50}')
    assert [a[0] for a in _drive(sequence, [OK, half, OK])] == ["a", "v", "b"]
    outcome = _outcome(sequence)
    assert outcome.ok and [v.complete for v in outcome.validations] == [False]
    assert _recovered(outcome) == [(0, "recover", 1, "validation_failed")]
