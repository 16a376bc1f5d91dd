"""Retries run when they are due: before items not started yet, not after all of them.

A real run of 200 items (real processes, a real ledger): one early item is
rate limited on its first attempt, with a fixed 100 ms backoff. Its retry is
dispatched within a second of its ``not_before``, while most fresh items have
not started yet; the order itself (due retries, fresh items, the DLQ) is
unit-tested in tests/test_policy.py.
"""

from __future__ import annotations

import json
from pathlib import Path

from ledger.times import epoch
from tests.engine_helpers import records, run_workflow, write_workflow

ITEMS = [f"i{n:03d}" for n in range(200)]
FLAKY = "i002"


def test_a_due_retry_runs_before_fresh_items(tmp_path: Path) -> None:
    wf = write_workflow(
        tmp_path,
        f"""
        name: retry-order
        map:
          items: {json.dumps(ITEMS)}
          id: "${{item}}"
          max_parallel: 4
          retry: {{max_attempts: 3, backoff: fixed, initial: 100ms, jitter: false}}
          agent_template:
            - run: >-
                if [ "${{item}}" = {FLAKY} ] && [ "$ENGINE_ATTEMPT" = 1 ]; then
                echo "429 Too Many Requests" >&2; exit 1; fi; sleep 0.05
        """,
    )
    result = run_workflow(wf, tmp_path / "home")
    assert (result.status, result.exit_code) == ("completed", 0)
    assert result.projections.items.counts["succeeded"] == len(ITEMS)
    ledger = records(result)
    (scheduled,) = [r for r in ledger if r.type == "item.retry_scheduled"]
    assert scheduled.data.item == FLAKY and scheduled.data.delay == 0.1
    (retry,) = [
        r
        for r in ledger
        if r.type == "item.dispatched" and r.data.item == FLAKY and r.data.attempt == 2
    ]
    late = epoch(retry.ts) - epoch(scheduled.data.not_before)
    assert 0.0 <= late < 1.0, f"the retry was dispatched {late:.3f} s after it was due"
    started = {r.data.item for r in ledger if r.type == "item.dispatched" and r.seq < retry.seq}
    fresh_left = len(set(ITEMS) - started)
    assert fresh_left >= 100, f"only {fresh_left} fresh items were left when the retry ran"
