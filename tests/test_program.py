"""The step semantics every executor shares, without any process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine.exec.program import (
    ARG_LIMIT,
    CANCELLED,
    OutputRedactor,
    StepResult,
    Unpassable,
    ValueFiles,
    check_passable,
    output_secrets,
    step_command,
    step_limit,
)
from engine.exec.sequence import StepSequence
from engine.workflow.spec import Step


def _steps(*specs: dict[str, Any]) -> list[Step]:
    return [Step.model_validate(s) for s in specs]


def _drive(
    sequence: StepSequence, results: list[StepResult], *, cancelled: bool = False
) -> list[tuple[str, bool]]:
    """Run the sequence on scripted results; what it asked for: (command, deadline applies)."""
    asked = []
    while (planned := sequence.next(cancelled=cancelled)) is not None:
        step, timed = planned
        asked.append((step.text, timed))
        sequence.record(results[len(asked) - 1], stopped=cancelled)
    return asked


def _outcome(sequence: StepSequence, **kw: Any) -> Any:
    args: dict[str, Any] = {
        "duration": 1.0, "cancelled": False, "hung": False, "logs_lost": False,
        "stderr_tail": "", "stdout_tail": "", "stdout": None, "stderr": None, "redact": (),
    }  # fmt: skip
    return sequence.outcome(**{**args, **kw})


def test_captures_feed_the_next_step_and_the_last_step_is_the_result() -> None:
    sequence = StepSequence(
        _steps(
            {"run": "a", "capture_output": "found", "capture_format": "lines"},
            {"run": "b", "output": "json"},
        ),
        {"item": 1},
    )
    results = [
        StepResult(exit_code=0, stdout=b"x\n\ntok-9 y\n"),
        StepResult(exit_code=0, stdout=b'{"n": "tok-9"}'),
    ]
    asked = _drive(sequence, results)
    assert asked == [("a", True), ("b", True)]
    assert sequence.context["found"] == ["x", "tok-9 y"] and sequence.context["item"] == 1
    assert sequence.context["last"] == {"output": '{"n": "tok-9"}', "stderr": "", "exit_code": 0}
    outcome = _outcome(sequence, redact=("tok-9",))  # what is recorded is redacted
    assert outcome.ok and outcome.exit_code == 0
    assert outcome.result == {"n": "***"} and outcome.captures == {"found": ["x", "*** y"]}


def test_a_failed_step_runs_its_handlers_without_the_deadline_and_ends_the_sequence() -> None:
    steps = _steps({"run": "a", "on_failure": [{"run": "h1"}, {"run": "h2"}]}, {"run": "b"})
    sequence = StepSequence(steps, {})
    results = [StepResult(exit_code=3, stdout=b"out"), *[StepResult(exit_code=0)] * 3]
    asked = _drive(sequence, results)
    assert asked == [("a", True), ("h1", False), ("h2", False)]
    assert sequence.failed == 0
    assert sequence.context["last"] == {
        "output": "out",
        "stderr": "",
        "exit_code": 3,
    }  # not the handlers'
    outcome = _outcome(sequence)
    assert not outcome.ok and outcome.exit_code == 3 and not outcome.interrupted


def test_a_failure_is_what_the_failed_step_left_in_the_logs_not_its_handlers_output() -> None:
    logs = {"stderr": "", "stdout": ""}  # what an executor's logs hold as the steps run

    def tails() -> tuple[str, str]:
        return logs["stderr"], logs["stdout"]

    steps = _steps({"run": "a", "on_failure": [{"run": "h"}]})
    sequence = StepSequence(steps, {}, tails=tails)
    logs.update(stderr="ok so far\ndisk quota exceeded", stdout="partial")
    sequence.record(StepResult(exit_code=1, stdout=b"partial"), stopped=False)
    logs.update(stderr=logs["stderr"] + '\n{"sent": 1}', stdout='partial\n{"sent": 1}')
    sequence.record(StepResult(exit_code=0, stdout=b'{"sent": 1}'), stopped=False)  # the handler
    outcome = _outcome(sequence, stderr_tail=logs["stderr"], stdout_tail=logs["stdout"])
    assert (outcome.stderr_tail, outcome.stdout_tail) == (
        "ok so far\ndisk quota exceeded",
        "partial",
    )
    # Lost logs: the executor's note that says so ends the final tails, which win.
    lost = _outcome(sequence, logs_lost=True, stderr_tail="engine: cannot write the log")
    assert lost.stderr_tail == "engine: cannot write the log"
    # Without handlers the final tails are the failure's: they are not read early.
    read: list[str] = []

    def counted() -> tuple[str, str]:
        read.append("tails")
        return "", ""

    bare = StepSequence(_steps({"run": "a"}), {}, tails=counted)
    bare.record(StepResult(exit_code=1), stopped=False)
    assert read == [] and _outcome(bare, stderr_tail="boom").stderr_tail == "boom"


def test_a_cancel_stops_the_handlers_and_the_outcome_is_interrupted() -> None:
    steps = _steps({"run": "a", "on_failure": [{"run": "h1"}]})
    sequence = StepSequence(steps, {})
    assert _drive(sequence, [CANCELLED], cancelled=True) == [("a", True)]
    outcome = _outcome(sequence, cancelled=True)
    assert outcome.interrupted and not outcome.ok and not outcome.timed_out
    assert outcome.exit_code is None and outcome.error == "cancelled before it started"


def test_what_ends_an_attempt_badly() -> None:
    def ended(result: StepResult, **kw: Any) -> Any:
        sequence = StepSequence(_steps({"run": "a", "output": "json"}), {})
        _drive(sequence, [result])
        return _outcome(sequence, **kw)

    assert ended(StepResult(exit_code=0, stdout=b"NaN")).invalid_output == (
        "output is not JSON: NaN is not a JSON value"
    )
    assert not ended(StepResult(exit_code=0, stdout=b"1"), logs_lost=True).ok
    killed = ended(StepResult.exited(-9, timed_out=True, stdout=b""), hung=True)
    assert (killed.signal, killed.exit_code, killed.hung, killed.timed_out) == (
        9,
        None,
        True,
        False,
    )
    refused = ended(StepResult.not_started("no"))
    assert refused.error_type == "validation_failed" and refused.error == "no"
    assert _outcome(StepSequence([], {})).ok  # no steps: nothing failed


def test_commands_of_each_kind(tmp_path: Path) -> None:
    files = ValueFiles(str(tmp_path / "values"), "base-1")
    common: dict[str, Any] = {
        "env": {"A": "1"}, "agent_command": ("agent", "-p"), "heartbeat_file": "/hb",
        "files": files,
    }  # fmt: skip
    argv, env = step_command(Step.model_validate({"claude": "do ${item}"}), {"item": "x"}, **common)
    assert argv == ["agent", "-p", "do x"] and env["ENGINE_HEARTBEAT_FILE"] == "/hb"
    argv, env = step_command(Step.model_validate({"run": "echo ${item}"}), {"item": "y"}, **common)
    assert argv[:2] == ["/bin/sh", "-c"] and "y" not in argv[2] and "y" in env.values()
    big = "z" * ARG_LIMIT
    argv, env = step_command(Step.model_validate({"run": "echo ${item}"}), {"item": big}, **common)
    assert Path(env["ENGINE_ITEM_FILE"]).read_text() == big
    assert not any(len(v) >= ARG_LIMIT for v in env.values())
    check_passable(argv, env)
    files.remove()
    assert not list((tmp_path / "values").iterdir())
    with pytest.raises(Unpassable, match="NUL byte"):
        check_passable(["echo", "a\0b"], {})


def test_a_step_limit_is_its_timeout_within_the_attempts_deadline() -> None:
    step = Step.model_validate({"run": "a", "timeout": "10s"})
    assert step_limit(step, None, 0.0) == 10.0
    assert step_limit(step, 4.0, 1.0) == 3.0
    assert step_limit(Step.model_validate({"run": "a"}), 1.0, 5.0) == 0.0


def test_a_secret_cut_across_chunks_is_still_masked() -> None:
    redactor = OutputRedactor(output_secrets(["s3cret"]))
    written = redactor.feed(b"one s3") + redactor.feed(b"cret two") + redactor.end()
    assert written == b"one *** two"
