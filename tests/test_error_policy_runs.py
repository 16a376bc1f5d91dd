"""The error policy in real runs: a circuit that lets two probes through at once and
closes after two successes."""

from __future__ import annotations

from pathlib import Path

from ledger.events import Record
from projections.replay import replay
from tests.engine_helpers import MOCK, records, run_workflow, write_script, write_workflow


def _in_flight_while_half_open(events: list[Record], half: Record, closed: Record) -> list[int]:
    """How many attempts were in flight after each record from ``half`` to ``closed``."""
    running: set[tuple[str, int]] = set()
    counts: list[int] = []
    for r in events:
        if r.seq > closed.seq:
            break
        if r.type == "item.dispatched":
            running.add((r.data.item, r.data.attempt))
        elif r.type in ("item.succeeded", "item.failed"):
            running.discard((r.data.item, r.data.attempt))
        if r.seq >= half.seq:
            counts.append(len(running))
    return counts


def test_a_circuit_of_two_probes_closes_after_two_successes(tmp_path: Path) -> None:
    # r1, r2 are rate limited on their first attempt (their retries are due long after the
    # probes) and open the circuit; after the cooldown, two probes run at once, and only the
    # second success closes it.
    write_script(
        tmp_path,
        {
            "default": {"ok": "fine"},
            "match": [{"pattern": "^r", "do": [{"rate_limit": True}, {"ok": "recovered"}]}],
        },
    )
    wf = write_workflow(
        tmp_path,
        f"""
        name: probes
        agent: {{command: "{MOCK}"}}
        map:
          items: [r1, r2, ok1, ok2, ok3, ok4, ok5, ok6]
          id: "${{item}}"
          max_parallel: 2
          retry: {{max_attempts: 2, initial: 4s, jitter: false}}
          agent_template: [{{claude: "x"}}]
        circuit_breaker:
          threshold: 2
          cooldown: 1s
          on: [rate_limited]
          half_open_requests: 2
          success_threshold: 2
        """,
    )
    result = run_workflow(wf, tmp_path / "home")
    assert result.exit_code == 0
    events = records(result)
    opened = [r for r in events if r.type == "circuit.opened"]
    assert len(opened) == 1 and opened[0].data.failures == 2  # one opening, not one per failure
    half = next(r for r in events if r.type == "circuit.half_open")
    closed = next(r for r in events if r.type == "circuit.closed")
    assert (half.data.probes, half.data.success_threshold) == (2, 2)
    assert opened[0].seq < half.seq < closed.seq
    assert closed.data.reason.endswith("(2 of 2 probes passed)")
    # Nothing was dispatched while it was open.
    between = [r for r in events if opened[0].seq < r.seq < half.seq]
    assert not [r for r in between if r.type == "item.dispatched"]
    # Two probes at once, never more; and the first success did not close it.
    counts = _in_flight_while_half_open(events, half, closed)
    assert max(counts) == 2
    successes = [r for r in events if half.seq < r.seq < closed.seq and r.type == "item.succeeded"]
    assert len(successes) >= 2
    assert not [r for r in events if half.seq < r.seq < closed.seq and r.type == "item.failed"]
    p = replay(result.run_dir / "ledger.ndjson")
    assert p.circuit.state == "closed" and p.circuit.opened == 1
    assert p.circuit.to_json() == result.projections.circuit.to_json()


def test_a_qualifying_probe_failure_opens_the_circuit_again(tmp_path: Path) -> None:
    # Every r item is rate limited once: the probes after the first cooldown are r3, r4,
    # which fail too, and the circuit opens a second time before it closes.
    write_script(
        tmp_path,
        {
            "default": {"ok": "fine"},
            "match": [{"pattern": "^r", "do": [{"rate_limit": True}, {"ok": "recovered"}]}],
        },
    )
    wf = write_workflow(
        tmp_path,
        f"""
        name: reopen
        agent: {{command: "{MOCK}"}}
        map:
          items: [r1, r2, r3, r4, ok1, ok2, ok3]
          id: "${{item}}"
          max_parallel: 2
          retry: {{max_attempts: 2, initial: 4s, jitter: false}}
          agent_template: [{{claude: "x"}}]
        circuit_breaker:
          threshold: 2
          cooldown: 0.5s
          on: [rate_limited]
          half_open_requests: 2
          success_threshold: 2
        """,
    )
    result = run_workflow(wf, tmp_path / "home")
    assert result.exit_code == 0
    types = [r.type for r in records(result) if r.type.startswith("circuit.")]
    assert types[:3] == ["circuit.opened", "circuit.half_open", "circuit.opened"]
    assert types[-1] == "circuit.closed"
