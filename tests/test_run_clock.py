"""A run's one clock: the scheduler decides by it and the ledger's times are its readings.

The run is given a clock set years ahead of the real one. Every record's
time is on that clock, a retry's ``not_before`` is its record's time plus
the backoff, and the circuit, opened at a record's time, half-opens after
its cooldown on the same clock. Were the ledger's times on another clock
than the scheduler's, the circuit would half-open at once (opened "years
ago") or never.
"""

from __future__ import annotations

import time
from pathlib import Path

from ledger.times import epoch
from tests.engine_helpers import records, run_workflow, write_workflow

START = epoch("2030-06-01T12:00:00.000000Z")


def test_the_scheduler_and_the_ledger_share_the_run_clock(tmp_path: Path) -> None:
    t0 = time.monotonic()

    def clock() -> float:
        return START + (time.monotonic() - t0)

    marks = tmp_path / "marks"
    marks.mkdir()
    wf = write_workflow(
        tmp_path,
        f"""
        name: clock
        circuit_breaker: {{threshold: 2, cooldown: 2s, on: [rate_limited]}}
        map:
          items: [a, b, c]
          max_parallel: 1
          retry: {{max_attempts: 2, backoff: fixed, initial: 1s, jitter: false}}
          agent_template:
            - run: |
                if [ -e "{marks}/$ENGINE_ITEM_ID" ]; then exit 0; fi
                touch "{marks}/$ENGINE_ITEM_ID"; echo "429 too many requests" >&2; exit 1
        """,
    )
    result = run_workflow(wf, tmp_path / "home", clock=clock)
    assert result.status == "completed", result
    recs = records(result)
    assert all(epoch(r.ts) >= START for r in recs), "a record's time is not on the run's clock"
    retries = [r for r in recs if r.type == "item.retry_scheduled"]
    assert retries
    for r in retries:
        # The backoff counts from when the failure was decided, a moment before
        # its record was staged; with a clock of its own the writer would be years off.
        assert -60 < epoch(r.data.not_before) - epoch(r.ts) <= 1.0 + 1e-3, r
    opened = next(r for r in recs if r.type == "circuit.opened")
    half = next(r for r in recs if r.type == "circuit.half_open" and r.seq > opened.seq)
    assert epoch(half.ts) - epoch(opened.ts) >= 2.0
