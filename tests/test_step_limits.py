"""A step's limits: an agent's usage limit hit by a step, and the item's budget its retries spend.

A setup or reduce step that hits a usage limit waits for the reset and runs
again; a map step's own retry does not retry against it (the map waits, for
every item); a step's retries stop once the item's budget is spent, and a
``claude:`` step with nothing left of it is not started. Real runs of the
mock agent, behind a gate that answers the usage limit until its reset has
passed (as Claude does).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner, Result

from cli.main import cli
from engine.exec.limits import usage_limit_note
from engine.exec.program import StepResult
from engine.exec.sequence import StepSequence
from engine.workflow.spec import Step
from ledger import LedgerReader
from ledger.events import Record
from ledger.times import epoch
from projections.replay import replay
from tests.conftest import ENGINE
from tests.engine_helpers import DEADLINE, records, run_workflow, wait_for, write_workflow

GATE = """\
import json, pathlib, re, subprocess, sys, time

# Claude behind its usage limit: the first call hits it (the mock's usage_limit, a
# reset SECONDS ahead), every call before the reset is refused the same way, and
# the calls after it do BEHAVIOUR.
here = pathlib.Path(__file__).parent
state = here / "reset"
if not state.exists():
    behaviour = {"usage_limit": SECONDS}
elif time.time() < float(state.read_text()):
    behaviour = {"fail": "Claude AI usage limit reached|" + state.read_text()}
else:
    behaviour = BEHAVIOUR
mock = [sys.executable, "-m", "engine.tools.mock_agent", "--behavior", json.dumps(behaviour)]
got = subprocess.run([*mock, *sys.argv[1:]], capture_output=True)
if not state.exists():
    said = re.search(rb"usage limit reached\\|(\\d+)", got.stdout + got.stderr)
    state.write_text(said.group(1).decode())
sys.stdout.buffer.write(got.stdout)
sys.stderr.buffer.write(got.stderr)
sys.exit(got.returncode)
"""


def _gate(tmp_path: Path, seconds: int = 2, behaviour: object = None) -> str:
    """The agent command: the mock agent behind a usage limit ``seconds`` ahead."""
    after = behaviour or {"ok": "done after the reset", "cost": 0.1}
    script = GATE.replace("SECONDS", str(seconds)).replace("BEHAVIOUR", repr(after))
    (tmp_path / "gate.py").write_text(script)
    return f"{sys.executable} {tmp_path / 'gate.py'} -p"


def _starts(tmp_path: Path) -> list[list[str]]:
    """The mock agent's start lines: ITEM ATTEMPT EPOCH [resume=S] [budget=USD]."""
    lines = (tmp_path / "mock.log").read_text().splitlines()
    return [line.split()[1:] for line in lines if line.startswith("start ")]


def _reset(tmp_path: Path) -> float:
    return float((tmp_path / "reset").read_text())


def _phase_workflow(tmp_path: Path, phase: str, retry: str) -> Path:
    steps = f"""
        {phase}:
          - claude: "{phase} it"
            {retry}
        """
    return write_workflow(
        tmp_path,
        f"""
        name: steplimits
        env: {{ENGINE_MOCK_LOG: "{tmp_path / "mock.log"}"}}
        agent: {{command: "{_gate(tmp_path)}", output: claude-json}}
        map:
          items: [a]
          agent_template: [{{run: "true"}}]
        {steps}
        """,
    )


def _check_waited(tmp_path: Path, phase: str, warnings: list[str], retry: str) -> None:
    result = run_workflow(
        _phase_workflow(tmp_path, phase, retry), tmp_path / "home", warn=warnings.append
    )
    assert result.exit_code == 0, result.reason
    reset = _reset(tmp_path)
    starts = [float(s[2]) for s in _starts(tmp_path)]
    assert len(starts) == 2, starts  # the limit hit, then one run after the reset
    assert starts[0] < reset <= starts[1]
    done = [r for r in records(result, "step.succeeded") if r.data.phase == phase]
    assert len(done) == 1
    waited = done[0].data.recovered
    assert [(w.by, w.runs, w.error_type) for w in waited] == [("retry", 1, "rate_limited")]
    assert done[0].data.usage is not None and done[0].data.usage.calls == 2
    said = [w for w in warnings if "usage limit" in w]
    assert said == [f"engine: {usage_limit_note(f'{phase} step 1', reset)}"]
    log = (result.run_dir / done[0].data.stderr.path).read_text()
    assert "engine: the step hit a usage limit; waiting until" in log


def test_a_reduce_step_waits_for_its_usage_limit_to_reset(tmp_path: Path) -> None:
    """Its retry's 0.1 s backoff would burn every attempt against the closed door."""
    _check_waited(tmp_path, "reduce", [], "retry: {max_attempts: 3, initial: 0.1s}")


def test_a_setup_step_without_a_retry_waits_for_its_usage_limit_too(tmp_path: Path) -> None:
    _check_waited(tmp_path, "setup", [], "name: prepare")


def test_a_counted_usage_limit_uses_up_the_step_s_attempts(tmp_path: Path) -> None:
    """``count_usage_limits: true``: the wait is one of ``max_attempts`` (here the only)."""
    retry = "retry: {max_attempts: 1, count_usage_limits: true}"
    result = run_workflow(_phase_workflow(tmp_path, "reduce", retry), tmp_path / "home")
    assert result.exit_code == 1
    failed = records(result, "step.failed")
    assert [(r.data.phase, r.data.error_type) for r in failed] == [("reduce", "rate_limited")]
    assert len(_starts(tmp_path)) == 1


def test_a_map_step_s_retry_leaves_a_usage_limit_to_the_map(tmp_path: Path) -> None:
    wf = write_workflow(
        tmp_path,
        f"""
        name: steplimits
        env: {{ENGINE_MOCK_LOG: "{tmp_path / "mock.log"}"}}
        agent: {{command: "{_gate(tmp_path)}", output: claude-json}}
        map:
          items: [a]
          id: "${{item}}"
          retry: {{max_attempts: 1}}
          agent_template:
            - claude: "work on ${{item}}"
              retry: {{max_attempts: 3, initial: 0.1s}}
              on_failure: {{steps: [{{claude: "tell someone"}}], recover: true}}
        """,
    )
    result = run_workflow(wf, tmp_path / "home")
    assert result.exit_code == 0, result.reason
    reset = _reset(tmp_path)
    # One call in the first attempt: no retry in place, no handler.
    assert [s[:2] for s in _starts(tmp_path)] == [["a", "1"], ["a", "2"]]
    failed = records(result, "item.failed")
    assert [(r.data.attempt, r.data.error_type) for r in failed] == [(1, "rate_limited")]
    assert failed[0].data.resets_at is not None and epoch(failed[0].data.resets_at) == reset
    second = [r for r in records(result, "item.dispatched") if r.data.attempt == 2]
    assert len(second) == 1 and epoch(second[0].ts) >= reset
    state = result.projections.items.items["a"]
    assert (state.status, state.attempts, state.waits) == ("succeeded", 2, 1)


# --- the item's budget ---------------------------------------------------------------------


def _engine(home: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--home", str(home), *args], catch_exceptions=False)


def test_the_item_budget_stops_step_retries_and_a_dlq_retry_starts_nothing(
    tmp_path: Path,
) -> None:
    (tmp_path / "agent.json").write_text(json.dumps({"default": {"fail": "x", "cost": 0.2}}))
    agent = f"python -m engine.tools.mock_agent --script {tmp_path / 'agent.json'} -p"
    wf = write_workflow(
        tmp_path,
        f"""
        name: steplimits
        env: {{ENGINE_MOCK_LOG: "{tmp_path / "mock.log"}"}}
        agent: {{command: "{agent}", output: claude-json}}
        budget: {{max_item_cost_usd: 1.0}}
        map:
          items: [x]
          id: "${{item}}"
          retry: {{max_attempts: 2, initial: 10ms, max: 10ms, jitter: false}}
          agent_template:
            - claude: "work on ${{item}}"
              retry: {{max_attempts: 3, initial: 10ms, max: 10ms, jitter: false}}
        """,
    )
    home = tmp_path / "home"
    result = run_workflow(wf, home)
    assert result.exit_code == 1
    assert [(s[1], s[3]) for s in _starts(tmp_path)] == [
        ("1", "budget=1.0"),
        ("1", "budget=0.8"),
        ("1", "budget=0.6"),
        ("2", "budget=0.4"),
        ("2", "budget=0.2"),  # all spent: not retried again
    ]
    # The second attempt ended with the agent's failure: no retry was even refused.
    failed = records(result, "item.failed")
    assert [(r.data.attempt, r.data.error_type) for r in failed] == [
        (1, "api_error"),
        (2, "api_error"),
    ]
    dead = records(result, "item.dead_lettered")
    assert [(r.data.attempt, r.data.reason) for r in dead] == [(2, "item budget spent")]

    again = _engine(home, "dlq", "retry", result.run_id, "x", "--no-progress")
    assert again.exit_code == 1, again.output
    assert len(_starts(tmp_path)) == 5  # no agent call
    ledger: list[Record] = list(LedgerReader(result.run_dir / "ledger.ndjson").records())
    failed = [r for r in ledger if r.type == "item.failed" and r.data.attempt == 3]
    assert [(r.data.error_type, r.data.message) for r in failed] == [
        ("resource_exhausted", "item budget spent: $1.00 of budget.max_item_cost_usd $1.00")
    ]
    dead = [r for r in ledger if r.type == "item.dead_lettered"]
    assert [(r.data.attempt, r.data.reason) for r in dead][-1] == (3, "item budget spent")
    assert replay(result.run_dir / "ledger.ndjson").budget.by_item["x"] == 1.0


def test_a_claude_step_is_refused_with_nothing_left_and_a_shell_step_is_not() -> None:
    steps = [Step.model_validate(s) for s in ({"run": "true"}, {"claude": "c"})]
    seq = StepSequence(steps, {}, agent_output="claude-json", max_budget_usd=0.0)
    assert seq.next(cancelled=False) is not None and seq.refused() is None
    seq.record(StepResult(exit_code=0), stopped=False)
    assert seq.next(cancelled=False) is not None
    refused = seq.refused()
    assert refused is not None and refused.error_type == "resource_exhausted"
    assert refused.error == "item budget spent: nothing left of budget.max_item_cost_usd"
    seq.record(refused, stopped=False)
    assert seq.next(cancelled=False) is None
    outcome = seq.outcome(
        duration=0,
        cancelled=False,
        hung=False,
        logs_lost=False,
        stderr_tail="",
        stdout_tail="",
        stdout=None,
        stderr=None,
        redact=(),
    )
    assert (outcome.ok, outcome.error_type) == (False, "resource_exhausted")


def test_a_signal_ends_a_step_s_wait_for_a_usage_limit_at_once(tmp_path: Path) -> None:
    wf = write_workflow(
        tmp_path,
        f"""
        name: steplimits
        agent: {{command: "{_gate(tmp_path, seconds=40)}", output: claude-json}}
        map:
          items: [a]
          agent_template: [{{run: "true"}}]
        reduce:
          - claude: "reduce it"
        """,
    )
    env = {**os.environ, "ENGINE_HOME": str(tmp_path / "home")}
    err = tmp_path / "engine.err"
    run = [ENGINE, "run", str(wf), "--run-id", "wait", "--no-progress"]
    with err.open("wb") as sink:
        proc = subprocess.Popen(run, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=sink)
        try:
            wait_for(lambda: "hit a usage limit" in err.read_text(), what="the wait said")
            signalled = time.monotonic()
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=DEADLINE)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 130, err.read_text()
    assert time.monotonic() - signalled < 20, "the wait went on to the reset"
    assert time.time() < _reset(tmp_path)
    ledger = list(LedgerReader(tmp_path / "home" / "runs" / "wait" / "ledger.ndjson").records())
    failed = [r for r in ledger if r.type == "step.failed"]
    assert [(r.data.phase, r.data.error_type) for r in failed] == [("reduce", "interrupted")]
