"""Budgets: the run's (``budget.max_cost_usd``, ``engine resume --budget``) and each item's
(``budget.max_item_cost_usd``, passed to the agent as ``--max-budget-usd``)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner, Result

from cli.main import cli
from engine.map import policy
from engine.workflow.spec import BudgetSpec
from ledger import LedgerReader
from ledger.events import (
    BudgetExhausted,
    Event,
    ItemDispatched,
    ItemEnqueued,
    ItemSucceeded,
    Record,
    RunResumed,
)
from ledger.payloads_steps import AgentUsage
from projections.replay import Projections, replay
from tests.engine_helpers import records, run_workflow, write_workflow

ITEMS = [f"i{n:02d}" for n in range(40)]


def _engine(home: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--home", str(home), *args], catch_exceptions=False)


def records_of(run_dir: Path) -> list[Record]:
    return list(LedgerReader(run_dir / "ledger.ndjson").records())


def _budget_workflow(
    tmp_path: Path,
    budget: str,
    script: dict[str, object],
    items: list[str] = ITEMS,
    agent: str = "python -m engine.tools.mock_agent --script agent.json -p",
) -> Path:
    """``agent``: the mock agent, started the quick way (not through the whole CLI)."""
    (tmp_path / "agent.json").write_text(json.dumps(script))
    return write_workflow(
        tmp_path,
        f"""
        name: budget
        env: {{ENGINE_MOCK_LOG: "{tmp_path / "mock.log"}"}}
        agent: {{command: "{agent}", output: claude-json}}
        budget: {budget}
        map:
          items: {json.dumps(items)}
          id: "${{item}}"
          retry: {{max_attempts: 3, initial: 10ms, max: 10ms, jitter: false}}
          agent_template:
            - claude: "work on ${{item}}"
        """,
    )


def test_a_spent_budget_stops_the_run_and_resume_budget_finishes_it(tmp_path: Path) -> None:
    wf = _budget_workflow(tmp_path, "{max_cost_usd: 2.0}", {"default": {"cost": 0.1}})
    home = tmp_path / "home"
    first = run_workflow(wf, home, max_parallel=2)
    assert first.exit_code == 4, first.reason
    assert first.status == "aborted"
    assert first.reason is not None and "budget spent" in first.reason
    assert f"engine resume {first.run_id} --budget USD" in first.reason
    ledger = records(first)
    exhausted = [r for r in ledger if r.type == "budget.exhausted"]
    assert len(exhausted) == 1
    data = exhausted[0].data
    assert isinstance(data, BudgetExhausted)
    assert data.max_cost_usd == 2.0 and data.spent_usd >= 2.0
    after = [r for r in ledger if r.seq > exhausted[0].seq]
    assert not [r for r in after if r.type == "item.dispatched"]
    assert [r.type for r in after][-1] == "run.aborted"
    succeeded = len(records(first, "item.succeeded"))
    assert 20 <= succeeded <= 22  # what -j 2 had running when it was spent finished
    assert replay(first.run_dir / "ledger.ndjson").run.status == "aborted"
    status = _engine(home, "status", first.run_id).stdout
    assert "budget    budget spent: $" in status, status
    assert status.count(f"engine resume {first.run_id} --budget USD") == 1, status  # said once

    # A plain resume of the exhausted run starts nothing and stops again.
    again = _engine(home, "resume", first.run_id, "--no-progress")
    assert again.exit_code == 4, again.stderr
    assert f"engine resume {first.run_id} --budget USD" in again.stdout
    ledger = records_of(first.run_dir)
    resumed_at = [r.seq for r in ledger if r.type == "run.resumed"][-1]
    assert not [r for r in ledger if r.seq > resumed_at and r.type == "item.dispatched"]
    assert [r.type for r in ledger].count("budget.exhausted") == 1  # told once

    # --budget raises it: recorded, and the run finishes.
    raised = _engine(home, "resume", first.run_id, "--budget", "10", "--no-progress")
    assert raised.exit_code == 0, raised.stderr + raised.stdout
    ledger = records_of(first.run_dir)
    last_resume = [r.data for r in ledger if isinstance(r.data, RunResumed)][-1]
    assert last_resume.max_cost_usd == 10.0
    done = {r.data.item for r in ledger if isinstance(r.data, ItemSucceeded)}
    assert done == set(ITEMS)
    assert ledger[-1].type == "run.completed"
    p = replay(first.run_dir / "ledger.ndjson")
    assert p.run.status == "completed" and p.budget.spent_usd == 4.0


def test_resume_budget_must_be_an_amount_over_zero(tmp_path: Path) -> None:
    for bad in ("0", "-1", "nan", "inf", "lots"):
        got = _engine(tmp_path / "home", "resume", "some-run", "--budget", bad)
        assert got.exit_code == 2, (bad, got.stderr)
        assert len(got.stderr.strip().splitlines()) == 1
        assert "--budget" in got.stderr
        assert ("over 0" if bad != "lots" else "not a valid float") in got.stderr


def test_a_budget_spent_by_the_last_attempt_completes_the_run(tmp_path: Path) -> None:
    """Nothing waits for an attempt: the run is done, not stopped by its budget."""
    wf = _budget_workflow(
        tmp_path, "{max_cost_usd: 1.0}", {"default": {"cost": 0.25}}, items=ITEMS[:4]
    )
    result = run_workflow(wf, tmp_path / "home", max_parallel=2)
    assert result.exit_code == 0, result.reason
    assert not records(result, "budget.exhausted")


def _projections(spent: list[tuple[str, float]], pending: list[str]) -> Projections:
    """Items that succeeded having spent their cost, and items pending."""
    events: list[Event] = [
        ItemEnqueued(item=item, index=n) for n, item in enumerate([*dict(spent), *pending])
    ]
    for item, cost in spent:
        events.append(ItemDispatched(item=item, attempt=1, idempotency_key="k", worker="local"))
        events.append(
            ItemSucceeded(item=item, attempt=1, duration=0.1, usage=AgentUsage(cost_usd=cost))
        )
    p = Projections()
    p.enable_scheduling()
    ts = "2026-01-01T00:00:00.000000Z"
    p.apply_all(
        [Record(v=1, seq=n, ts=ts, run="r", data=e, hash="0" * 64) for n, e in enumerate(events)]
    )
    return p


def test_the_budget_decision() -> None:
    spec = BudgetSpec(max_cost_usd=1.0)
    p = _projections([("a", 0.6)], ["b"])
    assert policy.budget_exhausted(spec, p) is None  # room left
    assert policy.budget_exhausted(BudgetSpec(), p) is None  # no budget
    # An outcome about to be recorded counts.
    success = ItemSucceeded(item="a2", attempt=1, duration=0.1, usage=AgentUsage(cost_usd=0.4))
    assert policy.budget_exhausted(spec, p, [success]) == [
        BudgetExhausted(spent_usd=1.0, max_cost_usd=1.0)
    ]
    # Nothing waits for an attempt: nothing to stop.
    assert policy.budget_exhausted(spec, _projections([("a", 0.6), ("c", 0.5)], [])) is None
    p = _projections([("a", 0.6), ("c", 0.5)], ["b"])
    assert policy.budget_exhausted(spec, p) == [BudgetExhausted(spent_usd=1.1, max_cost_usd=1.0)]
    ts = "2026-01-01T00:00:01.000000Z"
    told = BudgetExhausted(spent_usd=1.1, max_cost_usd=1.0)
    p.apply_all([Record(v=1, seq=p.seq + 1, ts=ts, run="r", data=told, hash="0" * 64)])
    assert policy.budget_exhausted(spec, p) == []  # recorded once: stops, tells nothing
    raised = RunResumed(pid=1, host="h", max_cost_usd=5.0)
    p.apply_all([Record(v=1, seq=p.seq + 1, ts=ts, run="r", data=raised, hash="0" * 64)])
    assert policy.budget_exhausted(spec, p) is None  # the resume's budget is in force


def _starts(tmp_path: Path) -> list[list[str]]:
    """The mock agent's start lines: ITEM ATTEMPT EPOCH [resume=S] [budget=USD]."""
    lines = (tmp_path / "mock.log").read_text().splitlines()
    return [line.split()[1:] for line in lines if line.startswith("start ")]


def test_each_attempt_gets_what_is_left_of_its_items_budget(tmp_path: Path) -> None:
    script = {
        "items": {"x": [{"fail": "broke", "cost": 0.5}, {"ok": "fixed", "cost": 0.25}]},
        "default": {"cost": 0.1},
    }
    wf = _budget_workflow(tmp_path, "{max_item_cost_usd: 2.0}", script, items=["x", "y"])
    result = run_workflow(wf, tmp_path / "home")
    assert result.exit_code == 0, result.reason
    starts = {(s[0], s[1]): s[3:] for s in _starts(tmp_path)}
    assert starts == {
        ("x", "1"): ["budget=2.0"],
        ("x", "2"): ["budget=1.5"],  # 2.0 less what attempt 1 spent
        ("y", "1"): ["budget=2.0"],
    }


def test_an_agent_command_with_its_own_budget_flag_keeps_it(tmp_path: Path) -> None:
    agent = "python -m engine.tools.mock_agent --script agent.json --max-budget-usd 9 -p"
    wf = _budget_workflow(
        tmp_path, "{max_item_cost_usd: 2.0}", {"default": {}}, items=["x"], agent=agent
    )
    result = run_workflow(wf, tmp_path / "home")
    assert result.exit_code == 0, result.reason
    assert [s[3:] for s in _starts(tmp_path)] == [["budget=9"]]


def test_an_item_that_spent_its_budget_is_dead_lettered(tmp_path: Path) -> None:
    script = {"items": {"x": {"fail": "still broken", "cost": 1.25}}, "default": {}}
    wf = _budget_workflow(tmp_path, "{max_item_cost_usd: 2.0}", script, items=["x", "y"])
    result = run_workflow(wf, tmp_path / "home")
    assert result.exit_code == 1, result.reason
    dead = records(result, "item.dead_lettered")
    assert [(r.data.item, r.data.attempt, r.data.reason) for r in dead] == [
        ("x", 2, "item budget spent")  # 1.25 + 1.25 passed 2.0; 3 attempts were allowed
    ]
    assert [s[:2] + s[3:] for s in _starts(tmp_path) if s[0] == "x"] == [
        ["x", "1", "budget=2.0"],
        ["x", "2", "budget=0.75"],
    ]
    assert replay(result.run_dir / "ledger.ndjson").budget.by_item["x"] == 2.5
    listed = _engine(tmp_path / "home", "dlq", "list", result.run_id, "--json")
    (entry,) = json.loads(listed.stdout)
    assert entry["reason"] == "item budget spent"
    assert entry["needs_review"] and not entry["reprocessable"]  # raise its budget first


def test_no_setup_or_reduce_agent_step_starts_once_the_budget_is_spent(tmp_path: Path) -> None:
    (tmp_path / "agent.json").write_text(json.dumps({"default": {"ok": "fine", "cost": 0.3}}))
    log = tmp_path / "mock.log"
    wf = write_workflow(
        tmp_path,
        f"""
        name: steps-budget
        env: {{ENGINE_MOCK_LOG: "{log}"}}
        agent: {{command: "python -m engine.tools.mock_agent --script agent.json -p",
                 output: claude-json}}
        budget: {{max_cost_usd: 0.5}}
        setup:
          - claude: "setup one"
          - claude: "setup two"
          - claude: "setup three"
        map: {{items: [a], id: "${{item}}", agent_template: [{{claude: "do ${{item}}"}}]}}
        reduce:
          - run: echo reduced
          - claude: "reduce it"
        """,
    )
    home = tmp_path / "home"
    first = run_workflow(wf, home)
    assert first.exit_code == 4, first.reason
    assert first.status == "aborted" and first.reason is not None
    assert "budget spent: $0.60 of $0.50" in first.reason
    assert log.read_text().count("start ") == 2  # the third setup step never started
    started = [r.data.index for r in records(first, "step.started")]
    assert started == [0, 1]
    assert len(records(first, "budget.exhausted")) == 1

    # A budget that lets setup and the map through stops again before reduce's agent step,
    # after its plain step ran; the run then finishes with more.
    again = _engine(home, "resume", first.run_id, "--budget", "1.1", "--no-progress")
    assert again.exit_code == 4, again.stderr + again.stdout
    ledger = records_of(first.run_dir)
    assert {r.data.item for r in ledger if isinstance(r.data, ItemSucceeded)} == {"a"}
    reduce_started = [r.data.index for r in ledger if r.type == "step.started"]
    assert reduce_started[-1] == 0 and ledger[-1].type == "run.aborted"
    assert log.read_text().count("start ") == 4  # setup three, the item; not reduce's
    done = _engine(home, "resume", first.run_id, "--budget", "5", "--no-progress")
    assert done.exit_code == 0, done.stderr + done.stdout
    assert records_of(first.run_dir)[-1].type == "run.completed"
    assert "reduced" in done.stdout


def test_budget_settings_an_unread_agent_cannot_act_on_are_warned_of(tmp_path: Path) -> None:
    wf = write_workflow(
        tmp_path,
        """
        name: unread
        budget: {max_cost_usd: 2, max_item_cost_usd: 0.5}
        map:
          items: [a]
          id: "${item}"
          retry: {resume_session: true}
          agent_template: [{run: "echo ${item}"}]
        """,
    )
    shown = _engine(tmp_path, "validate", str(wf))
    assert shown.exit_code == 0, shown.stderr
    warned = [line for line in shown.stderr.splitlines() if "has no effect" in line]
    assert [line.split(": ")[1] for line in warned] == [
        "budget.max_cost_usd",
        "budget.max_item_cost_usd",
        "map.retry.resume_session",
    ], shown.stderr
    assert all("agent.output is text" in line for line in warned)
    read = wf.read_text().replace("name: unread", "name: unread\nagent: {output: claude-json}")
    wf.write_text(read)
    quiet = _engine(tmp_path, "validate", str(wf))
    assert quiet.exit_code == 0 and "has no effect" not in quiet.stderr, quiet.stderr


def test_a_budget_that_is_not_an_amount_is_one_line(tmp_path: Path) -> None:
    for value, said in [
        ('"2"', "'2' is not an amount"),
        ("true", "true is not an amount"),
        ("0", "greater than 0"),
        ("-1.5", "greater than 0"),
        (".inf", "finite number"),
    ]:
        wf = write_workflow(
            tmp_path,
            f"""
            name: amounts
            agent: {{output: claude-json}}
            budget: {{max_cost_usd: {value}}}
            map: {{items: [a], id: "${{item}}", agent_template: [{{run: "echo ${{item}}"}}]}}
            """,
        )
        shown = _engine(tmp_path, "validate", str(wf))
        assert shown.exit_code == 2, (value, shown.stderr)
        lines = [line for line in shown.stderr.splitlines() if "budget" in line]
        assert len(lines) == 1 and said in lines[0], (value, shown.stderr)
