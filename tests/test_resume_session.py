"""``retry.resume_session``: a retried ``claude:`` step continues the failed run's agent
session (``--resume SESSION``), and the ledger says which session each attempt continued."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.errors import WorkflowError
from engine.exec.program import AgentFlags, agent_words
from engine.workflow.load import load_workflow
from ledger.events import ItemDispatched, ItemFailed
from tests.engine_helpers import records, run_workflow, write_workflow

AGENT = "python -m engine.tools.mock_agent --script agent.json -p"
"""The mock agent, started the quick way (not through the whole CLI)."""


def _workflow(tmp_path: Path, script: dict[str, object], body: str) -> Path:
    (tmp_path / "agent.json").write_text(json.dumps(script))
    return write_workflow(
        tmp_path,
        f"""
        name: sessions
        env: {{ENGINE_MOCK_LOG: "{tmp_path / "mock.log"}"}}
        agent: {{command: "{AGENT}", output: claude-json}}
        map:
          items: [x, y]
          id: "${{item}}"
        """
        + body,
    )


def _starts(tmp_path: Path) -> dict[tuple[str, str], list[str]]:
    """Each start line of the mock agent: (ITEM, ATTEMPT) -> what follows its EPOCH."""
    lines = (tmp_path / "mock.log").read_text().splitlines()
    out: dict[tuple[str, str], list[str]] = {}
    for line in lines:
        if line.startswith("start "):
            words = line.split()
            out.setdefault((words[1], words[2]), []).append(" ".join(words[4:]))
    return out


SCRIPT = {
    "items": {"x": [{"fail": "lost the thread", "session": "sess-x-1"}, {"ok": "done"}]},
    "default": {"session": "sess-other"},
}


def test_a_retried_attempt_resumes_the_failed_attempts_session(tmp_path: Path) -> None:
    wf = _workflow(
        tmp_path,
        SCRIPT,
        """
          retry: {max_attempts: 2, initial: 10ms, jitter: false, resume_session: true}
          agent_template:
            - claude: "work on ${item}"
        """,
    )
    result = run_workflow(wf, tmp_path / "home")
    assert result.exit_code == 0, result.reason
    starts = _starts(tmp_path)
    assert starts[("x", "1")] == [""]
    assert starts[("x", "2")] == ["resume=sess-x-1"]
    assert starts[("y", "1")] == [""]
    dispatched = {
        (r.data.item, r.data.attempt): r.data.resumes_session
        for r in records(result, "item.dispatched")
        if isinstance(r.data, ItemDispatched)
    }
    assert dispatched == {("x", 1): None, ("x", 2): "sess-x-1", ("y", 1): None}


def test_without_resume_session_a_retry_starts_afresh(tmp_path: Path) -> None:
    wf = _workflow(
        tmp_path,
        SCRIPT,
        """
          retry: {max_attempts: 2, initial: 10ms, jitter: false}
          agent_template:
            - claude: "work on ${item}"
        """,
    )
    result = run_workflow(wf, tmp_path / "home")
    assert result.exit_code == 0, result.reason
    assert _starts(tmp_path)[("x", "2")] == [""]
    assert all(r.data.resumes_session is None for r in records(result, "item.dispatched"))


def test_a_steps_own_retry_resumes_its_failed_runs_session(tmp_path: Path) -> None:
    """Within one attempt: the step runs again, continuing the session its run reported."""
    script = {"default": [{"fail": "lost the thread", "session": "sess-run-1"}, {"ok": "done"}]}
    (tmp_path / "agent.json").write_text(json.dumps(script))
    # The mock acts by the attempt it is told: here, each run of the step is one.
    (tmp_path / "agent.sh").write_text(
        'n=$(( $(cat runs 2>/dev/null || echo 0) + 1 )); echo "$n" > runs\n'
        'exec python -m engine.tools.mock_agent --script agent.json --attempt "$n" "$@"\n'
    )
    wf = write_workflow(
        tmp_path,
        f"""
        name: step-sessions
        env: {{ENGINE_MOCK_LOG: "{tmp_path / "mock.log"}"}}
        agent: {{command: "sh agent.sh -p", output: claude-json}}
        map:
          items: [x]
          id: "${{item}}"
          retry: {{max_attempts: 1}}
          agent_template:
            - claude: "work on ${{item}}"
              retry: {{max_attempts: 2, initial: 10ms, jitter: false, resume_session: true}}
        """,
    )
    result = run_workflow(wf, tmp_path / "home")
    assert result.exit_code == 0, result.reason
    starts = _starts(tmp_path)
    assert starts == {("x", "1"): [""], ("x", "2"): ["resume=sess-run-1"]}
    assert len(records(result, "item.dispatched")) == 1  # one attempt, the step run twice


def test_two_claude_steps_with_resume_session_are_refused(tmp_path: Path) -> None:
    wf = _workflow(
        tmp_path,
        SCRIPT,
        """
          retry: {resume_session: true}
          agent_template:
            - claude: "plan ${item}"
            - claude: "do ${item}"
        """,
    )
    with pytest.raises(WorkflowError) as caught:
        load_workflow(wf)
    message = str(caught.value)
    assert "resume_session" in message and "2 claude: steps" in message
    assert "ambiguous" in message
    assert len(message.splitlines()) == 1


def test_the_agents_flags_go_after_its_command_unless_given() -> None:
    base = ["claude", "-p", "--output-format", "json"]
    flags = AgentFlags(resume="s-1", max_budget_usd=1.5)
    assert agent_words(base, flags) == [*base, "--resume", "s-1", "--max-budget-usd", "1.5"]
    assert agent_words(base, AgentFlags()) == base
    own = ["claude", "--resume=s-0", "--max-budget-usd", "3", "-p"]
    assert agent_words(own, flags) == own


def test_a_timed_out_stream_attempt_is_resumed_and_its_session_kept(tmp_path: Path) -> None:
    """A stream-json attempt cut by its timeout has no result, yet its events told its
    session, turns and tokens: recorded, and the retry resumes it; a retry that fails
    before its agent says any session leaves the session known for the next one."""
    script = {
        "items": {
            "x": [
                {
                    "turns": 20,
                    "turn_delay": 0.5,
                    "session": "S-a1",
                    "tokens": {"input": 200, "output": 40},
                    "cost": 0.5,
                    "ok": "fine",
                },
                {"ok": "fine"},
            ]
        }
    }
    (tmp_path / "agent.json").write_text(json.dumps(script))
    wf = write_workflow(
        tmp_path,
        f"""
        name: timed-out-sessions
        env: {{ENGINE_MOCK_LOG: "{tmp_path / "mock.log"}"}}
        agent: {{command: "{AGENT}", output: claude-stream-json}}
        map:
          items: [x]
          id: "${{item}}"
          timeout: 2s
          retry:
            max_attempts: 3
            initial: 10ms
            jitter: false
            resume_session: true
            retry_on: [timeout, command_failed]
          agent_template:
            - shell: test "$ENGINE_ATTEMPT" != 2
            - claude: "work on ${{item}}"
        """,
    )
    result = run_workflow(wf, tmp_path / "home")
    assert result.exit_code == 0, result.reason
    failed = [r.data for r in records(result, "item.failed") if isinstance(r.data, ItemFailed)]
    assert [f.error_type for f in failed] == ["timeout", "command_failed"]
    first = failed[0].usage
    assert first is not None
    assert first.session_id == "S-a1" and first.model == "claude-mock-1"
    assert first.calls == 1 and first.cost_usd == 0.0  # only a result reports a cost
    assert 1 <= first.turns < 20
    assert first.input_tokens == 10 * first.turns  # 200 spread over 20 turns
    assert failed[1].usage is None  # its agent did not run
    dispatched = {
        r.data.attempt: r.data.resumes_session
        for r in records(result, "item.dispatched")
        if isinstance(r.data, ItemDispatched)
    }
    assert dispatched == {1: None, 2: "S-a1", 3: "S-a1"}
    starts = _starts(tmp_path)
    assert starts == {("x", "1"): [""], ("x", "3"): ["resume=S-a1"]}
