"""An agent's stream-json read while it runs: heartbeats with its activity, hung detection
counting its events, `engine status` and the progress line showing its turns, tool and
spend, a usage limit's wait and the budget."""

from __future__ import annotations

import io
import json
import subprocess
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from cli.progress import Progress
from engine.exec.agent_stream import MAX_LINE, AgentStream
from ledger import LedgerWriter
from ledger.events import (
    AgentActivity,
    AgentUsage,
    BudgetExhausted,
    CircuitOpened,
    Heartbeat,
    ItemDispatched,
    ItemEnqueued,
    ItemFailed,
    ItemRetryScheduled,
    ItemSucceeded,
    MapEnqueued,
    RunCreated,
)
from ledger.times import rfc3339
from projections.replay import Projections
from tests.conftest import ENGINE
from tests.engine_helpers import (
    DEADLINE,
    engine_in_process,
    records,
    run_workflow,
    unique_run_id,
    wait_for,
    write_script,
    write_workflow,
)

STREAM_AGENT = "engine mock-agent --script agent.json -p"


def _line(event: dict[str, Any]) -> bytes:
    return json.dumps(event).encode() + b"\n"


def _assistant(*tools: str, text: str = "") -> dict[str, Any]:
    blocks: list[dict[str, Any]] = [{"type": "tool_use", "name": t, "input": {}} for t in tools]
    if text:
        blocks.append({"type": "text", "text": text})
    return {"type": "assistant", "message": {"content": blocks}}


# --- the reader ----------------------------------------------------------------------


def test_events_turns_the_last_tool_and_the_cost_are_read_across_chunks() -> None:
    data = b"".join(
        [
            _line({"type": "system", "subtype": "init"}),
            _line(_assistant("Read", "Grep")),
            _line({"type": "user", "message": {"content": []}}),
            _line(_assistant(text="thinking")),  # a turn without a tool keeps the last one
            _line({"type": "result", "total_cost_usd": 0.125}),
        ]
    )
    stream = AgentStream()
    counted = sum(stream.feed(data[i : i + 7]) for i in range(0, len(data), 7))
    assert counted == 5
    assert stream.activity == AgentActivity(events=5, turns=2, tool="Grep", cost_usd=0.125)
    # A second agent call of the attempt adds to the same activity.
    stream.feed(_line(_assistant("Edit")) + _line({"type": "result", "total_cost_usd": 0.5}))
    assert stream.activity == AgentActivity(events=7, turns=3, tool="Edit", cost_usd=0.625)


def test_what_is_not_an_event_is_not_counted_and_a_too_long_line_is_dropped() -> None:
    stream = AgentStream()
    assert stream.feed(b"plain text\n[1, 2]\n\n{not json\n") == 0
    assert stream.feed(b'{"type": "assistant", "message": {"content": "' + b"x" * MAX_LINE) == 0
    assert stream.feed(b'x"}}\n') == 0  # the end of the dropped line
    assert stream.feed(_line(_assistant("Bash"))) == 1  # reading goes on at the next line
    assert stream.activity.events == 1 and stream.activity.tool == "Bash"
    assert len(stream._partial) == 0  # nothing of the long line was kept


def test_an_unterminated_last_line_is_read_at_the_end_and_secrets_are_masked() -> None:
    stream = AgentStream(redact=["s3cret"])
    assert stream.feed(json.dumps(_assistant("tool-s3cret")).encode()) == 0
    assert stream.end() == 1
    assert stream.activity.tool == "tool-***"
    assert stream.changed and stream.taken().turns == 1 and not stream.changed


def test_a_result_with_a_cost_that_is_not_a_number_adds_nothing() -> None:
    stream = AgentStream()
    for cost in ("1", True, -1, None, float("nan")):
        stream.feed(json.dumps({"type": "result", "total_cost_usd": cost}).encode() + b"\n")
    assert stream.activity.cost_usd == 0.0 and stream.activity.events == 5


# --- a run: heartbeats, status, hung detection ------------------------------------------


def _stream_workflow(tmp_path: Path, items: list[str], **map_keys: str) -> Path:
    extra = "".join(f"\n          {k}: {v}" for k, v in map_keys.items())
    return write_workflow(
        tmp_path,
        f"""
        name: stream
        agent: {{command: "{STREAM_AGENT}", output: claude-stream-json}}
        map:
          items: {json.dumps(items)}
          id: "${{item}}"
          max_parallel: 2
          retry: {{max_attempts: 1}}{extra}
          agent_template:
            - claude: "work on ${{item}}"
        """,
    )


def _running_turns(home: Path, run_id: str) -> int | None:
    shown = engine_in_process("--home", str(home), "status", run_id, "--json")
    if shown.returncode != 0:
        return None
    view = json.loads(shown.stdout)
    for running in view.get("running", []):
        if running["item"] == "a" and running.get("agent"):
            return int(running["agent"]["turns"])
    return None


def test_status_json_shows_a_running_agents_turns_growing(tmp_path: Path) -> None:
    write_script(tmp_path, {"items": {"a": {"turns": 12, "turn_delay": 0.3, "cost": 0.75}}})
    _stream_workflow(tmp_path, ["a"], heartbeat="{interval: 1h}")
    home, run_id = tmp_path / "home", unique_run_id("stream")
    engine = subprocess.Popen(
        [ENGINE, "--home", str(home), "run", "wf.yml", "--run-id", run_id, "--no-progress"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )

    def turns() -> int | None:
        if engine.poll() is not None:
            raise AssertionError("the run ended before its agent's turns were seen growing")
        return _running_turns(home, run_id)

    try:
        first = wait_for(turns, what="a first turn count")
        later = wait_for(
            lambda: (n := turns()) is not None and n > first and n,
            what=f"a turn count above {first}",
        )
        assert later > first
        human = engine_in_process("--home", str(home), "status", run_id).stdout
        assert "running   a (attempt 1): " in human and "last tool Bash" in human, human
    finally:
        _, err = engine.communicate(timeout=DEADLINE)
    assert engine.returncode == 0, err
    beats = [r.data for r in records_of(home, run_id, "heartbeat")]
    turns = [b.agent.turns for b in beats if isinstance(b, Heartbeat) and b.agent]
    assert turns == sorted(turns) and len(turns) >= 2
    # At most about one heartbeat a second, not one per event (14 events in ~3.3 s).
    assert len(beats) <= 8, len(beats)
    assert not any(b.agent and b.agent.turns > 12 for b in beats if isinstance(b, Heartbeat))
    after = json.loads(engine_in_process("--home", str(home), "status", run_id, "--json").stdout)
    assert "running" not in after and after["budget"]["spent_usd"] == 0.75


def records_of(home: Path, run_id: str, type_: str) -> list[Any]:
    from ledger import LedgerReader

    reader = LedgerReader(home / "runs" / run_id / "ledger.ndjson")
    return [r for r in reader.records() if r.type == type_]


AGENT_SH = """\
assistant='{"type":"assistant","message":{"content":[{"type":"tool_use","name":"Bash"}]}}'
if [ "$ENGINE_ITEM_ID" = busy ]; then
  echo '{"type":"system","subtype":"init"}'
  for turn in 1 2 3 4 5 6 7 8 9 10; do sleep 0.3; echo "$assistant"; done
else
  sleep 3
fi
echo '{"type":"result","subtype":"success","is_error":false,"result":"done"}'
"""
"""An agent in the shell (it starts at once, whatever the load): ``busy`` prints an event
every 0.3 s for 3 s, ``silent`` nothing for as long."""


def test_an_agent_printing_events_is_not_hung_and_a_silent_one_is(tmp_path: Path) -> None:
    # Each event comes well within hung_after, all of them take longer: only the events
    # show the busy agent alive. The silent one waits as long, printing nothing.
    (tmp_path / "agent.sh").write_text(AGENT_SH)
    wf = write_workflow(
        tmp_path,
        """
        name: hung
        agent: {command: "sh agent.sh", output: claude-stream-json}
        map:
          items: [busy, silent]
          id: "${item}"
          max_parallel: 2
          heartbeat: {interval: 0.25s, hung_after: 1.5s}
          retry: {max_attempts: 1}
          agent_template:
            - claude: "work on ${item}"
        """,
    )
    result = run_workflow(wf, tmp_path / "home")
    failed = {r.data.item: r.data.error_type for r in records(result, "item.failed")}
    assert failed == {"silent": "hung"}
    succeeded = records(result, "item.succeeded")
    assert [r.data.item for r in succeeded] == ["busy"]
    assert succeeded[0].data.duration > 1.5 * 2  # it ran twice as long as hung_after
    agents = [r.data.agent for r in records(result, "heartbeat") if r.data.item == "busy"]
    assert any(a is not None and a.turns >= 2 and a.tool == "Bash" for a in agents)


# --- status and progress of usage limits and budgets, from real records ---------------------


WORKFLOW = "name: limits\nbudget: {max_cost_usd: 2.5}\nmap: {items: [a, b, c, d]}\n"


def _ledger(tmp_path: Path, events: list[Any]) -> tuple[Path, Projections]:
    run_dir = tmp_path / "runs" / "limits"
    writer = LedgerWriter.open(run_dir, "limits", create=True)
    p = Projections()
    head: list[Any] = [
        RunCreated(
            workflow_name="limits", workflow_path="wf.yml", workflow_hash="x", workflow=WORKFLOW
        ),
        *(ItemEnqueued(item=i, index=n) for n, i in enumerate("abcd")),
        MapEnqueued(total=4),
    ]
    for event in [*head, *events]:
        p.apply(writer.append(event))
    writer.close()
    return run_dir, p


def _usage(cost: float) -> AgentUsage:
    return AgentUsage(calls=1, cost_usd=cost, turns=2)


def test_status_says_the_usage_limit_waited_for_and_the_spend_against_the_budget(
    tmp_path: Path,
) -> None:
    reset = rfc3339(time.time() + 130)
    run_dir, _ = _ledger(
        tmp_path,
        [
            ItemDispatched(item="a", attempt=1, idempotency_key="ik:a"),
            ItemSucceeded(item="a", attempt=1, usage=_usage(0.5)),
            ItemDispatched(item="b", attempt=1, idempotency_key="ik:b"),
            ItemFailed(
                item="b",
                attempt=1,
                error_type="rate_limited",
                signature="s",
                usage=_usage(0.25),
                resets_at=reset,
            ),
            CircuitOpened(
                failures=1, error_type="rate_limited", cooldown=130, until=reset, item="b"
            ),
            ItemDispatched(item="c", attempt=1, idempotency_key="ik:c"),
            Heartbeat(item="c", attempt=1, agent=AgentActivity(events=9, turns=4, tool="Edit")),
        ],
    )
    shown = engine_in_process("status", str(run_dir), "--json")
    view = json.loads(shown.stdout)
    assert view["waiting"] == {
        "reason": "usage_limit",
        "until": reset,
        "item": "b",
        "error_type": "rate_limited",
    }
    assert view["budget"] == {"spent_usd": 0.75, "max_cost_usd": 2.5, "exhausted": False}
    assert view["running"][0]["agent"] == {
        "events": 9,
        "turns": 4,
        "tool": "Edit",
        "cost_usd": 0.0,
    }
    human = engine_in_process("status", str(run_dir)).stdout
    clock = reset[11:19]
    # (the reset's date is said too when it falls on another day than now)
    assert "waiting   waiting for the usage limit to reset at " in human, human
    assert f"{clock} UTC (in 2m" in human, human
    assert "reported by item b" in human, human
    assert "budget    spent $0.75 of the budget $2.50" in human, human
    assert "running   c (attempt 1): 4 turns · last tool Edit · $0.00" in human, human


def test_status_says_a_spent_budget_and_how_to_raise_it(tmp_path: Path) -> None:
    run_dir, _ = _ledger(
        tmp_path,
        [
            ItemDispatched(item="a", attempt=1, idempotency_key="ik:a"),
            ItemSucceeded(item="a", attempt=1, usage=_usage(3.0)),
            BudgetExhausted(spent_usd=3.0, max_cost_usd=2.5),
        ],
    )
    view = json.loads(engine_in_process("status", str(run_dir), "--json").stdout)
    assert view["budget"] == {"spent_usd": 3.0, "max_cost_usd": 2.5, "exhausted": True}
    human = engine_in_process("status", str(run_dir)).stdout
    line = "budget    budget spent: $3.00 of $2.50; raise it: engine resume limits --budget USD"
    assert line in human, human


def _progress(p: Projections) -> Progress:
    console = Console(file=io.StringIO(), width=160, force_terminal=False)
    progress = Progress(console, mode="plain", stream=io.StringIO())
    progress.update(p)
    return progress


def _rendered(progress: Progress, p: Projections) -> str:
    console = Console(file=io.StringIO(), width=160, force_terminal=False)
    console.print(progress.render(p))
    return console.file.getvalue()  # type: ignore[attr-defined]


def test_the_progress_line_shows_the_spend_and_the_whole_runs_projection(
    tmp_path: Path,
) -> None:
    _, before = _ledger(tmp_path / "none", [])
    assert "spent" not in _progress(before).plain_line(before)  # nothing spent: not shown
    _, p = _ledger(
        tmp_path / "spent",
        [
            ItemDispatched(item="a", attempt=1, idempotency_key="ik:a"),
            ItemDispatched(item="b", attempt=1, idempotency_key="ik:b"),
            ItemFailed(
                item="b", attempt=1, error_type="api_error", signature="s", usage=_usage(0.2)
            ),
            ItemRetryScheduled(item="b", attempt=1, delay=60, not_before=rfc3339(time.time())),
        ],
    )
    line = _progress(p).plain_line(p)
    assert "$0.20 spent" in line and "for the run" not in line, line  # no item finished yet
    _, p = _ledger(
        tmp_path / "done",
        [
            ItemDispatched(item="a", attempt=1, idempotency_key="ik:a"),
            ItemSucceeded(item="a", attempt=1, usage=_usage(0.5)),
            ItemDispatched(item="b", attempt=1, idempotency_key="ik:b"),
            Heartbeat(item="b", attempt=1, agent=AgentActivity(events=3, turns=7, tool="Read")),
        ],
    )
    progress = _progress(p)
    line = progress.plain_line(p)
    assert "1/4 done" in line and "$0.50 spent · ~$2.00 for the run" in line, line
    drawn = _rendered(progress, p)
    assert "$0.50 spent" in drawn and "~$2.00 for the run" in drawn, drawn
    assert "agent b (attempt 1): 7 turns · last tool Read · $0.00" in drawn, drawn


def test_the_progress_says_the_usage_limit_waited_for_and_a_spent_budget(
    tmp_path: Path,
) -> None:
    reset = rfc3339(time.time() + 65)
    _, p = _ledger(
        tmp_path,
        [
            ItemDispatched(item="a", attempt=1, idempotency_key="ik:a"),
            ItemSucceeded(item="a", attempt=1, usage=_usage(3.0)),
            BudgetExhausted(spent_usd=3.0, max_cost_usd=2.5),
            ItemDispatched(item="b", attempt=1, idempotency_key="ik:b"),
            ItemFailed(item="b", attempt=1, error_type="rate_limited", signature="s"),
            CircuitOpened(
                failures=1, error_type="rate_limited", cooldown=65, until=reset, item="b"
            ),
        ],
    )
    progress = _progress(p)
    wait = "waiting for the usage limit to reset at "
    clock = f"{reset[11:19]} UTC (in 1m"  # after the reset's date when it is another day's
    spent = "budget spent: $3.00 of $2.50; raise it: engine resume limits --budget USD"
    plain = progress.plain_line(p)
    assert f"engine: {wait}" in plain and f"engine: {spent}" in plain, plain
    assert clock in plain, plain
    assert "ETA after the reset" in plain, plain  # not a rate's guess through the wait
    drawn = _rendered(progress, p)
    assert wait in drawn and clock in drawn and spent in drawn, drawn
    assert "ETA after the reset" in drawn, drawn
