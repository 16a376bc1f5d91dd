"""A step's ``validate``: the loop's rounds, its result read, ``${validation.*}``, without
any process (the sequence is driven on scripted results)."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from engine.exec.executor import AttemptOutcome
from engine.exec.program import StepResult
from engine.exec.sequence import StepSequence
from engine.exec.validation import RESULT_LIMIT, ROUNDS_RECORDED, ValidationLoop, parse_result
from engine.map.outcomes import outcome_events
from engine.workflow.checks import check_document
from engine.workflow.spec import MapSpec, Step
from ledger.events import ItemFailed, ItemSucceeded, ValidationRound

Script = Callable[[Step, dict[str, Any]], StepResult]


def _ok(text: str = "") -> StepResult:
    return StepResult(exit_code=0, stdout=text.encode())


def _step(**spec: Any) -> Step:
    return Step.model_validate(spec)


def _drive(sequence: StepSequence, script: Script) -> list[str]:
    """Run the sequence, each step's result from ``script`` (given the step and its context)."""
    asked = []
    while (planned := sequence.next(cancelled=False)) is not None:
        step, _timed = planned
        asked.append(step.text)
        sequence.record(script(step, dict(sequence.context)), stopped=False)
        assert len(asked) < 10_000, "the loop does not end"
    return asked


def _outcome(sequence: StepSequence) -> AttemptOutcome:
    return sequence.outcome(
        duration=1.0,
        cancelled=False,
        hung=False,
        logs_lost=False,
        stderr_tail="",
        stdout_tail="",
        stdout=None,
        stderr=None,
        redact=[],
    )


def _rounds(outcome: AttemptOutcome) -> list[tuple[int, float, bool]]:
    return [(r.round, r.completion, r.complete) for r in outcome.validations]


class Work:
    """A validator that reports how far a repair counter got (as its stdout)."""

    def __init__(self, percentages: list[float]) -> None:
        self.percentages = percentages
        self.repairs = 0
        self.seen: list[dict[str, Any]] = []

    def __call__(self, step: Step, context: dict[str, Any]) -> StepResult:
        if step.text == "check":
            value = self.percentages[min(self.repairs, len(self.percentages) - 1)]
            return _ok(json.dumps({"completion_percentage": value, "missing": ["b.py"]}))
        if step.text == "repair":
            self.repairs += 1
            self.seen.append(context["validation"])
        return _ok(f"{step.text} output\n")


def _validated(**validate: Any) -> list[Step]:
    validate.setdefault("steps", [{"run": "check"}])
    return [
        _step(run="work", validate=validate, capture_output="made"),
        _step(run="after"),
    ]


def test_an_incomplete_round_is_repaired_then_validated_again_and_each_round_kept() -> None:
    work = Work([50, 100])
    steps = _validated(on_incomplete={"steps": [{"run": "repair"}]})
    sequence = StepSequence(steps, {})
    asked = _drive(sequence, work)
    assert asked == ["work", "check", "repair", "check", "after"]
    outcome = _outcome(sequence)
    assert outcome.ok
    assert _rounds(outcome) == [(1, 50.0, False), (2, 100.0, True)]
    assert outcome.validations[0] == ValidationRound(
        step=0, round=1, completion=50.0, threshold=100.0, complete=False
    )
    # The repair saw the round's result; values are what `${validation.*}` renders.
    assert work.seen == [
        {
            "completion": 50,
            "threshold": 100,
            "status": "incomplete",
            "missing": ["b.py"],
            "gaps": {},
            "reason": "",
            "round": 1,
        }
    ]
    # The step's capture is its own output, not the validator's; so is ${last} after it.
    assert outcome.captures == {"made": "work output"}
    assert "validation" not in sequence.context


def test_still_incomplete_after_the_last_round_fails_the_step_validation_failed() -> None:
    work = Work([50, 80])
    steps = _validated(on_incomplete={"steps": [{"run": "repair"}], "max_attempts": 2})
    sequence = StepSequence(steps, {})
    assert _drive(sequence, work) == ["work", "check", "repair", "check"]
    outcome = _outcome(sequence)
    assert not outcome.ok
    assert outcome.error_type == "validation_failed"
    assert outcome.error == "step 1 incomplete: 80% < 100% after 2 rounds (validate)"
    assert outcome.exit_code == 0  # the step itself ran fine
    assert _rounds(outcome) == [(1, 50.0, False), (2, 80.0, False)]


def test_fail_false_carries_on_incomplete() -> None:
    work = Work([10])
    steps = _validated(
        on_incomplete={"steps": [{"run": "repair"}], "max_attempts": 3, "fail": False}
    )
    sequence = StepSequence(steps, {})
    assert _drive(sequence, work) == [
        "work",
        "check",
        "repair",
        "check",
        "repair",
        "check",
        "after",
    ]
    outcome = _outcome(sequence)
    assert outcome.ok
    assert _rounds(outcome) == [(1, 10.0, False), (2, 10.0, False), (3, 10.0, False)]


def test_without_on_incomplete_one_round_then_the_step_fails() -> None:
    sequence = StepSequence(_validated(threshold=90), {})
    assert _drive(sequence, Work([89.5])) == ["work", "check"]
    outcome = _outcome(sequence)
    assert outcome.error == "step 1 incomplete: 89.5% < 90% after 1 round (validate)"
    assert outcome.validations[0].threshold == 90.0


def test_a_failed_validation_runs_the_steps_on_failure_handlers() -> None:
    steps = [
        _step(run="work", validate={"steps": [{"run": "check"}]}, on_failure=[{"run": "cleanup"}])
    ]
    sequence = StepSequence(steps, {})
    assert _drive(sequence, Work([0])) == ["work", "check", "cleanup"]
    assert sequence.failed == 0


def test_the_threshold_is_reached_and_completion_is_accepted_for_completion_percentage() -> None:
    def script(step: Step, _context: dict[str, Any]) -> StepResult:
        return _ok('{"completion": 80, "status": "ok"}' if step.text == "check" else "x")

    sequence = StepSequence(_validated(threshold=80), {})
    assert _drive(sequence, script) == ["work", "check", "after"]
    assert _rounds(_outcome(sequence)) == [(1, 80.0, True)]


@pytest.mark.parametrize(
    ("printed", "reason"),
    [
        ("", "the validation output is empty"),
        ("not json at all", "the validation output is not JSON"),
        ("[1, 2]", "the validation output is not a JSON object"),
        ('{"status": "done"}', "the validation output has no completion_percentage"),
        ('{"completion_percentage": true}', "the validation output has no completion_percentage"),
        ('{"completion_percentage": "90"}', "the validation output has no completion_percentage"),
    ],
)
def test_a_result_that_cannot_be_read_is_a_round_at_zero_with_its_reason(
    printed: str, reason: str
) -> None:
    def script(step: Step, _context: dict[str, Any]) -> StepResult:
        return _ok(printed if step.text == "check" else "")

    sequence = StepSequence(_validated(threshold=0), {})  # even 0% needs a result
    _drive(sequence, script)
    outcome = _outcome(sequence)
    [one] = outcome.validations
    assert (one.completion, one.complete) == (0.0, False)
    assert one.reason is not None and one.reason.startswith(reason)
    assert outcome.error is not None and outcome.error.endswith(f"(validate): {one.reason}")


def test_the_last_line_of_a_validators_output_is_its_result_after_its_log() -> None:
    reading = parse_result(b'checking...\n3 of 4 done\n{"completion_percentage": 75}\n', "out")
    assert (reading.completion, reading.reason) == (75.0, None)


def test_the_result_file_is_read_relative_to_the_steps_cwd_and_must_be_written_each_round(
    tmp_path: Path,
) -> None:
    (tmp_path / "sub").mkdir()
    result = tmp_path / "sub" / "check.json"
    result.write_text('{"completion_percentage": 100}')  # left before: not this round's
    writes = iter([None, '{"completion_percentage": 40}', '{"completion_percentage": 100}'])

    def script(step: Step, context: dict[str, Any]) -> StepResult:
        if step.text == "check" and (text := next(writes)) is not None:
            result.write_text(text)
        return _ok("ignored stdout" if step.text == "check" else "")

    steps = [
        _step(
            run="work",
            cwd="sub",
            validate={
                "steps": [{"run": "check"}],
                "result_file": "check.json",
                "on_incomplete": {"steps": [{"run": "repair"}], "max_attempts": 3},
            },
        )
    ]
    sequence = StepSequence(steps, {}, cwd=tmp_path)
    _drive(sequence, script)
    outcome = _outcome(sequence)
    assert outcome.ok
    assert _rounds(outcome) == [(1, 0.0, False), (2, 40.0, False), (3, 100.0, True)]
    assert outcome.validations[0].reason == (
        "result_file check.json was not written by the validation steps"
    )


def test_a_missing_or_oversized_result_file_is_said(tmp_path: Path) -> None:
    step = _step(run="work", validate={"steps": [{"run": "check"}], "result_file": "r.json"})
    loop = ValidationLoop(0, step, _ok(), {}, cwd=tmp_path)
    assert loop.next() is not None
    loop.record(_ok(), stopped=False)
    assert loop.next() is None
    assert loop.rounds[0].reason == "result_file r.json was not found"

    loop = ValidationLoop(0, step, _ok(), {}, cwd=tmp_path)
    loop.next()
    (tmp_path / "r.json").write_bytes(b" " * (RESULT_LIMIT + 1))
    loop.record(_ok(), stopped=False)
    assert loop.next() is None
    assert loop.rounds[0].reason == f"result_file r.json is over {RESULT_LIMIT:,} bytes"


def test_the_result_file_is_a_template(tmp_path: Path) -> None:
    step = _step(
        run="work", validate={"steps": [{"run": "check"}], "result_file": "r-${item_id}.json"}
    )
    loop = ValidationLoop(0, step, _ok(), {"item_id": "a7"}, cwd=tmp_path)
    loop.next()
    (tmp_path / "r-a7.json").write_text('{"completion_percentage": 100}')
    loop.record(_ok(), stopped=False)
    assert loop.next() is None and loop.failure is None and loop.rounds[0].complete


def test_a_validator_that_exits_non_zero_is_read_and_else_named_in_the_reason() -> None:
    def script(step: Step, _context: dict[str, Any]) -> StepResult:
        if step.text == "check":
            return StepResult(exit_code=1, stdout=b'{"completion_percentage": 60}')
        if step.text == "check2":
            return StepResult(exit_code=2)
        return _ok()

    sequence = StepSequence(_validated(threshold=50, steps=[{"run": "check"}]), {})
    _drive(sequence, script)
    assert _rounds(_outcome(sequence)) == [(1, 60.0, True)]

    sequence = StepSequence(_validated(steps=[{"run": "check2"}, {"run": "never runs"}]), {})
    assert _drive(sequence, script) == ["work", "check2"]
    assert _outcome(sequence).validations[0].reason == (
        "validation step 1 exited with code 2; the validation output is empty"
    )


def test_a_repair_step_that_fails_is_the_steps_failure() -> None:
    def script(step: Step, _context: dict[str, Any]) -> StepResult:
        if step.text == "repair":
            return StepResult(exit_code=3)
        return Work([10])(step, _context)

    sequence = StepSequence(_validated(on_incomplete={"steps": [{"run": "repair"}]}), {})
    assert _drive(sequence, script) == ["work", "check", "repair"]
    outcome = _outcome(sequence)
    assert (outcome.ok, outcome.exit_code, outcome.error_type) == (False, 3, None)
    assert _rounds(outcome) == [(1, 10.0, False)]


def test_a_stopped_or_unstartable_validation_step_fails_the_step() -> None:
    step = _step(run="work", validate={"steps": [{"run": "check"}]})
    loop = ValidationLoop(0, step, _ok(), {}, cwd=Path("."))
    loop.next()
    loop.record(StepResult(signal=15), stopped=True)
    assert loop.next() is None and loop.failure is not None and loop.failure.signal == 15
    assert loop.rounds == []

    loop = ValidationLoop(0, step, _ok(), {}, cwd=Path("."))
    loop.next()
    loop.record(StepResult.not_started("unknown variable ${x}"), stopped=False)
    assert loop.failure is not None and loop.failure.error_type == "validation_failed"


def test_validate_timeout_bounds_each_round_of_validation_steps() -> None:
    now = [100.0]
    step = _step(
        run="work",
        validate={
            "steps": [{"run": "one", "timeout": 60}, {"run": "two"}],
            "timeout": 10,
            "on_incomplete": {"steps": [{"run": "repair"}]},
        },
    )
    loop = ValidationLoop(0, step, _ok(), {}, cwd=Path("."), clock=lambda: now[0])
    first = loop.next()
    assert first is not None and first.timeout == 10.0  # the round's time, under its own
    now[0] += 4
    loop.record(_ok(), stopped=False)
    second = loop.next()
    assert second is not None and second.timeout == 6.0
    now[0] += 6
    loop.record(StepResult(signal=9, timed_out=True), stopped=False)
    repair = loop.next()
    assert repair is not None and repair.text == "repair"
    assert loop.rounds[0].reason is not None
    assert loop.rounds[0].reason.startswith("the validation timed out after 10s (validate.timeout)")
    # A timeout of the step's own (the round has time left) is the step's failure.
    loop.record(_ok(), stopped=False)
    assert loop.next() is not None
    loop.record(StepResult(signal=9, timed_out=True), stopped=False)
    assert loop.next() is None and loop.failure is not None and loop.failure.timed_out


def test_the_rounds_of_every_validated_step_are_kept_in_order() -> None:
    steps = [
        _step(run="a", validate={"steps": [{"run": "check"}]}),
        _step(run="b", validate={"steps": [{"run": "check"}], "threshold": 30}),
    ]
    sequence = StepSequence(steps, {})
    _drive(sequence, Work([40]))
    outcome = _outcome(sequence)
    assert [(r.step, r.complete) for r in outcome.validations] == [(0, False)]
    sequence = StepSequence(steps[1:] * 2, {})
    _drive(sequence, Work([40]))
    assert [(r.step, r.complete) for r in _outcome(sequence).validations] == [(0, True), (1, True)]


def test_the_outcome_events_record_the_rounds() -> None:
    rounds = (
        ValidationRound(step=0, round=1, completion=50, threshold=100, complete=False),
        ValidationRound(step=0, round=2, completion=100, threshold=100, complete=True),
    )
    spec = MapSpec.model_validate({"items": [1], "agent_template": [{"run": "x"}]})
    common: dict[str, Any] = {"stopping": False, "now": 0.0, "rng": random.Random(1)}
    ok = outcome_events(
        spec,
        "i",
        1,
        AttemptOutcome(ok=True, duration=1, validations=rounds),
        resources={},
        **common,
    )
    assert isinstance(ok[0], ItemSucceeded) and ok[0].validations == list(rounds)
    failed = outcome_events(
        spec,
        "i",
        1,
        AttemptOutcome(
            ok=False,
            duration=1,
            error_type="validation_failed",
            error="step 1 incomplete",
            validations=rounds[:1],
        ),
        resources={},
        **common,
    )
    assert isinstance(failed[0], ItemFailed)
    assert failed[0].error_type == "validation_failed"
    assert failed[0].validations == list(rounds[:1])


# --- the variables, checked ------------------------------------------------------------


def _problems(step: dict[str, Any]) -> list[str]:
    checks = check_document({"name": "x", "map": {"items": [1], "agent_template": [step]}})
    return [f"{'.'.join(map(str, f.loc))}: {f.message}" for f in checks.findings]


def test_validation_variables_are_known_only_in_on_incomplete_steps() -> None:
    good = {
        "run": "work",
        "validate": {
            "steps": [{"run": "check ${last.output}"}],
            "on_incomplete": {
                "steps": [
                    {"claude": "finish: ${validation.missing} at ${validation.completion}%"},
                    {"run": 'echo "${validation.gaps} ${validation.status}"'},
                ]
            },
        },
    }
    assert _problems(good) == []
    bad = {
        "run": "echo ${validation.completion}",
        "validate": {
            "steps": [{"run": "check ${validation.status}"}],
            "on_incomplete": {"steps": [{"run": "fix ${validation.missin}"}]},
        },
    }
    found = _problems(bad)
    assert len(found) == 3, found
    assert found[0].startswith(
        "map.agent_template.0.run: unknown variable ${validation.completion}"
    )
    assert "known only in validate.on_incomplete steps" in found[0]
    assert found[1].startswith("map.agent_template.0.validate.steps.0.run: unknown variable")
    assert "did you mean ${validation.missing}?" in found[2]


def test_what_a_validation_step_would_not_use_is_a_warning() -> None:
    checks = check_document(
        {
            "name": "x",
            "map": {
                "items": [1],
                "agent_template": [
                    {"run": "w", "validate": {"steps": [{"run": "c", "capture_output": "n"}]}},
                    {"run": "echo ${n}"},
                ],
            },
        }
    )
    found = [(f.message, f.warning) for f in checks.findings]
    assert found[0][1] and found[0][0].startswith("not used in a validate or on_incomplete step")
    assert found[1][0].startswith("unknown variable ${n}")  # its capture is not kept


def test_what_an_outcome_records_of_many_rounds_is_bounded() -> None:
    validate = {
        "steps": [{"run": "check"}],
        "on_incomplete": {"steps": [{"run": "repair"}], "max_attempts": 100, "fail": False},
    }
    sequence = StepSequence([_step(run="work", validate=validate)] * 3, {})
    _drive(sequence, Work([0]))
    assert len(sequence.validations) == 300
    recorded = _outcome(sequence).validations
    assert len(recorded) == ROUNDS_RECORDED
    assert recorded[-1] == sequence.validations[-1]
