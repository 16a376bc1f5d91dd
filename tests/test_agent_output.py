"""Claude Code's output read: the result, its errors, and what the agent spent, recorded."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import msgspec
import pytest

from engine.exec.agent_output import agent_command, read_envelope, read_run, used
from engine.exec.program import StepResult, parse_output
from engine.exec.sequence import StepSequence
from engine.views.query import connect, run_named
from engine.views.stats import run_stats
from engine.workflow.spec import Step
from ledger.payloads_steps import AgentUsage
from tests.engine_helpers import records, run_workflow, write_workflow


def _envelope(**over: Any) -> dict[str, Any]:
    data = {
        "type": "result",
        "subtype": "success",
        "is_error": False,
        "duration_ms": 1200,
        "duration_api_ms": 1000,
        "num_turns": 3,
        "result": "done",
        "session_id": "s-1",
        "total_cost_usd": 0.0125,
        "usage": {
            "input_tokens": 10,
            "output_tokens": 20,
            "cache_read_input_tokens": 30,
            "cache_creation_input_tokens": 40,
        },
        "model": "claude-x",
    }
    data.update(over)
    return data


def test_the_command_line_gets_the_format_flags() -> None:
    assert agent_command(["claude", "-p"], "claude-json") == [
        "claude",
        "-p",
        "--output-format",
        "json",
    ]
    assert agent_command(["claude", "-p"], "claude-stream-json")[-3:] == [
        "--output-format",
        "stream-json",
        "--verbose",
    ]
    assert agent_command(["claude", "-p"], "text") == ["claude", "-p"]
    given = ["claude", "--output-format", "json", "-p"]
    assert agent_command(given, "claude-json") == given


def test_a_json_envelope_is_read() -> None:
    envelope = read_envelope(json.dumps(_envelope()).encode())
    assert envelope is not None
    assert (envelope.result, envelope.is_error) == ("done", False)
    u = envelope.usage
    assert (u.cost_usd, u.input_tokens, u.output_tokens) == (0.0125, 10, 20)
    assert (u.cache_read_input_tokens, u.cache_creation_input_tokens, u.turns) == (30, 40, 3)
    assert (u.session_id, u.model, u.calls) == ("s-1", "claude-x", 1)


def test_a_stream_is_read_to_its_result() -> None:
    lines = [
        {"type": "system", "subtype": "init", "session_id": "s-2", "model": "claude-y"},
        {"type": "assistant", "message": {"content": [{"type": "tool_use", "name": "Bash"}]}},
        {"type": "assistant", "message": {"content": [{"type": "text", "text": "ok"}]}},
        _envelope(session_id="s-2", num_turns=None, model=None),
    ]
    envelope = read_envelope("\n".join(json.dumps(x) for x in lines).encode())
    assert envelope is not None
    assert (envelope.usage.turns, envelope.usage.model, envelope.usage.session_id) == (
        2,
        "claude-y",
        "s-2",
    )


@pytest.mark.parametrize(
    ("over", "error_type"),
    [
        ({"is_error": True, "result": "API Error: 500"}, "api_error"),
        ({"subtype": "error_max_turns", "is_error": True}, "resource_exhausted"),
        ({"subtype": "error_max_budget_usd"}, "resource_exhausted"),
        ({"subtype": "error_during_execution"}, "api_error"),
        ({"is_error": True, "result": "Claude AI usage limit reached|1767225600"}, "rate_limited"),
        ({"is_error": True, "result": "5-hour limit reached ∙ resets 3pm"}, "rate_limited"),
        ({"is_error": True, "result": "You've hit your limit · resets Dec 3, 9am"}, "rate_limited"),
    ],
)
def test_an_error_fails_the_step_even_with_exit_code_0(
    over: dict[str, Any], error_type: str
) -> None:
    stdout = json.dumps(_envelope(**over)).encode()
    fields, spent = read_run(StepResult(exit_code=0, stdout=stdout), stdout)
    assert fields["error_type"] == error_type
    assert spent is not None and spent.cost_usd == 0.0125


def test_no_envelope_from_a_success_is_a_failure() -> None:
    fields, spent = read_run(StepResult(exit_code=0, stdout=b"hello"), b"hello")
    assert fields["error_type"] == "validation_failed" and spent is None
    assert read_run(StepResult(exit_code=1, stdout=b""), b"") == ({}, None)


def test_usages_add_up_to_the_cent() -> None:
    one = read_envelope(json.dumps(_envelope(total_cost_usd=0.1)).encode())
    two = read_envelope(json.dumps(_envelope(total_cost_usd=0.2, session_id="s-9")).encode())
    assert one is not None and two is not None
    total = used(used(None, one.usage), two.usage)
    assert total is not None
    assert (total.calls, total.cost_usd, total.turns, total.session_id) == (2, 0.3, 6, "s-9")


def test_a_fenced_json_block_is_the_result() -> None:
    answer = 'Here it is:\n```json\n{"verdict": "ok"}\n```\nbye'
    assert parse_output(answer, "json") == ({"verdict": "ok"}, None)
    assert parse_output("", "json")[1] is not None  # an empty result: invalid output


# --- a run without a result: what its events told --------------------------------------

STREAM = [
    {"type": "system", "subtype": "init", "session_id": "S-a1", "model": "claude-y"},
    {
        "type": "assistant",
        "session_id": "S-a1",
        "message": {
            "id": "msg_1",
            "model": "claude-z",
            "content": [{"type": "tool_use", "name": "Bash"}],
            "usage": {"input_tokens": 10, "output_tokens": 2, "cache_read_input_tokens": 5},
        },
    },
    {  # a second content block of the same message repeats its usage: counted once
        "type": "assistant",
        "session_id": "S-a1",
        "message": {
            "id": "msg_1",
            "content": [{"type": "text", "text": "thinking"}],
            "usage": {"input_tokens": 10, "output_tokens": 2, "cache_read_input_tokens": 5},
        },
    },
    {"type": "user", "message": {"content": [{"type": "tool_result", "content": "ok"}]}},
    {
        "type": "assistant",
        "session_id": "S-a1",
        "message": {
            "id": "msg_2",
            "usage": {"input_tokens": 7, "output_tokens": 3, "cache_creation_input_tokens": 4},
        },
    },
]


def _lines(*events: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(e).encode() + b"\n" for e in events) + b'{"type": "assist'


def test_a_stream_cut_before_its_result_spent_what_its_events_say() -> None:
    """Timed out, killed or crashed: the session, model, turns and tokens its events
    told; one call; no cost (only a result says it)."""
    stdout = _lines(*STREAM)
    failed = StepResult(exit_code=None, error="timed out", error_type="timeout", stdout=stdout)
    fields, spent = read_run(failed, stdout, stream=True)
    assert fields == {}
    assert spent == AgentUsage(
        calls=1,
        input_tokens=17,
        output_tokens=5,
        cache_read_input_tokens=5,
        cache_creation_input_tokens=4,
        turns=3,
        session_id="S-a1",
        model="claude-z",
    )
    just_started = _lines(STREAM[0])
    fields, spent = read_run(
        StepResult(exit_code=0, stdout=just_started), just_started, stream=True
    )
    assert fields["error_type"] == "validation_failed"  # exit 0 without a result
    assert spent == AgentUsage(calls=1, session_id="S-a1", model="claude-y")
    assert read_run(StepResult(exit_code=1, stdout=b"oops"), b"oops", stream=True) == ({}, None)


def test_a_json_run_without_a_result_spent_nothing_known() -> None:
    stdout = _lines(*STREAM)
    assert read_run(StepResult(exit_code=1, stdout=stdout), stdout) == ({}, None)


def test_a_stopped_stream_run_keeps_its_error_and_records_its_session() -> None:
    """A hung or cancelled run is recorded as stopped, what its events said spent."""
    steps = [
        Step.model_validate(
            {"claude": "work", "retry": {"max_attempts": 2, "resume_session": True}}
        )
    ]
    sequence = StepSequence(steps, {}, agent_output="claude-stream-json")
    assert sequence.next(cancelled=False) is not None
    hung = StepResult(exit_code=None, error="hung", error_type="hung", stdout=_lines(*STREAM))
    sequence.record(hung, stopped=True)
    assert sequence.usage is not None and sequence.usage.session_id == "S-a1"
    assert sequence.usage.turns == 3


# --- figures that are no figures ---------------------------------------------------------


@pytest.mark.parametrize(
    "cost", ["1e999", "-1e999", "NaN", "-0.5", "true", '"0.5"', "1" * 400, "1e308"]
)
def test_a_cost_that_is_no_finite_amount_is_read_as_nothing(cost: str) -> None:
    """JSON reads 1e999 as infinity: recorded as 0, so the success is not lost."""
    raw = json.dumps(_envelope()).replace('"total_cost_usd": 0.0125', f'"total_cost_usd": {cost}')
    assert cost in raw
    envelope = read_envelope(raw.encode())
    assert envelope is not None and envelope.usage.cost_usd == 0.0
    again = msgspec.json.decode(msgspec.json.encode(envelope.usage), type=AgentUsage)
    assert again == envelope.usage  # as a ledger record would read it back


@pytest.mark.parametrize("count", ["1e999", "NaN", "-3", "2.5", "true", "null", str(1 << 63)])
def test_a_token_count_that_is_no_whole_number_is_read_as_nothing(count: str) -> None:
    usage = {"input_tokens": "IN", "output_tokens": 8.0}
    raw = json.dumps(_envelope(usage=usage, num_turns="T")).replace('"IN"', count)
    stream = "\n".join(
        [
            json.dumps({"type": "assistant", "message": {"usage": usage}}).replace('"IN"', count),
            raw.replace('"T"', count),
        ]
    )
    for text in (raw.replace('"T"', count), stream):
        envelope = read_envelope(text.encode())
        assert envelope is not None
        assert (envelope.usage.input_tokens, envelope.usage.output_tokens) == (0, 8)
        assert envelope.usage.turns == (1 if text is stream else 0)
    events = stream.splitlines()[0].encode()  # no result: the events' counts
    _fields, spent = read_run(StepResult(exit_code=1), events, stream=True)
    assert spent is not None and spent.input_tokens == 0 and spent.output_tokens == 8


AGENT = """#!/usr/bin/env python3
# A stand-in for `claude -p --output-format json PROMPT`: its arguments logged, the
# envelope the test scripted printed (exit 0 even for an error, as the flag allows).
import json, os, sys
with open(os.environ["AGENT_LOG"], "a") as log:
    log.write(" ".join(sys.argv[1:]) + "\\n")
item = os.environ["ENGINE_ITEM_ID"]
if item == "bad":
    out = {"type": "result", "subtype": "error_during_execution", "is_error": True,
           "result": "boom", "total_cost_usd": 0.5, "num_turns": 1, "session_id": "s-bad",
           "usage": {"input_tokens": 1, "output_tokens": 2}}
else:
    answer = "```json\\n" + json.dumps({"item": item}) + "\\n```"
    out = {"type": "result", "subtype": "success", "is_error": False, "result": answer,
           "total_cost_usd": 0.25, "num_turns": 2, "session_id": "s-" + item,
           "usage": {"input_tokens": 100, "output_tokens": 50,
                     "cache_read_input_tokens": 7, "cache_creation_input_tokens": 3}}
print(json.dumps(out))
"""


def test_a_run_records_what_each_attempt_spent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = tmp_path / "agent.sh"
    agent.write_text(AGENT)
    agent.chmod(0o755)
    log = tmp_path / "agent.log"
    monkeypatch.setenv("AGENT_LOG", str(log))
    wf = write_workflow(
        tmp_path,
        textwrap.dedent(
            f"""
            name: spend
            agent: {{command: "{agent} -p", output: claude-json}}
            map:
              items: [a, b, bad]
              id: "${{item}}"
              retry: {{max_attempts: 1}}
              agent_template:
                - claude: "review ${{item}}"
                  output: json
            """
        ),
    )
    result = run_workflow(wf, tmp_path / "home")
    assert result.exit_code == 1
    assert all(
        line.startswith("-p --output-format json review ") for line in log.read_text().splitlines()
    )
    succeeded = {r.data.item: r.data for r in records(result, "item.succeeded")}
    assert {item: e.result for item, e in succeeded.items()} == {
        "a": {"item": "a"},
        "b": {"item": "b"},
    }
    usage = succeeded["a"].usage
    assert usage is not None
    assert (usage.cost_usd, usage.input_tokens, usage.output_tokens, usage.turns) == (
        0.25,
        100,
        50,
        2,
    )
    assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (7, 3)
    assert usage.session_id == "s-a"
    (failed,) = records(result, "item.failed")
    assert (failed.data.item, failed.data.error_type) == ("bad", "api_error")
    assert failed.data.exit_code == 0
    assert failed.data.usage is not None and failed.data.usage.cost_usd == 0.5
    spent = sum(r.data.usage.cost_usd for r in records(result) if getattr(r.data, "usage", None))
    assert round(spent, 2) == 1.0
    stats = run_stats(result.run_dir / "ledger.ndjson")
    assert (stats.agent_calls, stats.cost_usd, stats.wasted_usd) == (3, 1.0, 0.5)
    assert (stats.cost_per_item_p50_usd, stats.cost_per_item_max_usd) == (0.25, 0.25)
    assert (stats.input_tokens, stats.output_tokens) == (201, 102)
    assert (stats.cache_read_input_tokens, stats.cache_creation_input_tokens) == (14, 6)
    assert stats.cache_hit_ratio == round(14 / 221, 4)
    assert (stats.turns, stats.turns_per_item_p50, stats.turns_per_item_max) == (5, 2.0, 2)
    con = connect([result.run_dir / "ledger.ndjson"])
    by_item = {r["item"]: r for r in run_named(con, "cost by item").records()}
    assert {i: r["cost_usd"] for i, r in by_item.items()} == {"a": 0.25, "b": 0.25, "bad": 0.5}
    assert by_item["bad"]["wasted_usd"] == 0.5 and by_item["a"]["wasted_usd"] == 0
    assert [
        (r["error_type"], r["cost_usd"]) for r in run_named(con, "cost by error type").records()
    ] == [("api_error", 0.5)]
    assert [r["cost_usd"] for r in run_named(con, "cost by signature").records()] == [0.5]
    assert run_named(con, "spend over time").records()[-1]["total_usd"] == 1.0


def test_fifty_items_of_the_mock_agent_cost_what_it_said(tmp_path: Path) -> None:
    """What `engine stats --json` and `cost by item` say the run spent is, to the cent,
    what the mock agent reported for each attempt, retries included."""
    costs = {f"i{n:02d}": round(0.01 + n * 0.003, 3) for n in range(50)}
    script = {
        "items": {
            item: (
                [{"is_error": True, "subtype": "error_during_execution", "cost": 0.02}]
                if n % 10 == 3
                else []
            )
            + [
                {
                    "ok": "done {item}",
                    "cost": cost,
                    "turns": 1 + n % 4,
                    "tokens": {"input": 100 + n, "output": 10, "cache_read": n},
                }
            ]
            for n, (item, cost) in enumerate(costs.items())
        }
    }
    (tmp_path / "agent.json").write_text(json.dumps(script))
    wf = write_workflow(
        tmp_path,
        f"""
        name: fifty
        agent: {{command: "engine mock-agent --script agent.json -p", output: claude-json}}
        map:
          items: {json.dumps(list(costs))}
          id: "${{item}}"
          max_parallel: 8
          retry: {{max_attempts: 2, initial: 10ms, max: 10ms, jitter: false}}
          agent_template:
            - claude: "review ${{item}}"
        """,
    )
    result = run_workflow(wf, tmp_path / "home")
    assert result.exit_code == 0, result.reason
    retried = [item for n, item in enumerate(costs) if n % 10 == 3]
    expected = {i: round(c + (0.02 if i in retried else 0), 6) for i, c in costs.items()}
    stats = run_stats(result.run_dir / "ledger.ndjson")
    assert round(stats.cost_usd, 2) == round(sum(expected.values()), 2)
    assert stats.wasted_usd == round(0.02 * len(retried), 6)
    con = connect([result.run_dir / "ledger.ndjson"])
    by_item = {r["item"]: r["cost_usd"] for r in run_named(con, "cost by item").records()}
    assert by_item == expected
