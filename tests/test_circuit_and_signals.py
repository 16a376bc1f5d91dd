"""The circuit breaker pauses dispatching; SIGINT stops the engine cleanly (exit 130)."""

from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
from pathlib import Path

from ledger import LedgerReader
from projections.replay import replay
from tests.conftest import ENGINE
from tests.engine_helpers import (
    DEADLINE,
    MOCK,
    dying,
    ledger_has,
    records,
    run_workflow,
    wait_for,
    write_script,
    write_workflow,
)


def _ts(value: str) -> float:
    return dt.datetime.fromisoformat(value).timestamp()


def test_circuit_opens_waits_probes_and_closes(tmp_path: Path) -> None:
    # Items r1..r3 are rate limited on their first attempt; everything else is fine. The
    # backoff outlasts the three failures and the cooldown: a retry that is due would run
    # before the fresh items, and its success would end the streak.
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
        name: circuit
        agent: {{command: "{MOCK}"}}
        map:
          items: [r1, r2, r3, ok1, ok2, ok3]
          id: "${{item}}"
          max_parallel: 1
          retry: {{max_attempts: 3, initial: 5s, jitter: false}}
          agent_template: [{{claude: "x"}}]
        circuit_breaker: {{threshold: 3, cooldown: 1s, on: [rate_limited]}}
        """,
    )
    result = run_workflow(wf, tmp_path / "home")
    assert result.exit_code == 0
    events = records(result)
    types = [r.type for r in events]
    assert types.count("circuit.opened") == 1
    opened = next(r for r in events if r.type == "circuit.opened")
    half = next(r for r in events if r.type == "circuit.half_open")
    closed = next(r for r in events if r.type == "circuit.closed")
    assert opened.data.failures == 3 and opened.data.error_type == "rate_limited"
    assert opened.seq < half.seq < closed.seq
    # Nothing was dispatched while the circuit was open, and it waited the cooldown.
    between = [r for r in events if opened.seq < r.seq < half.seq and r.type == "item.dispatched"]
    assert not between
    assert _ts(half.ts) - _ts(opened.ts) >= 0.99
    # One probe while half open: the next dispatch after the probe comes after it closed.
    probes = [r for r in events if half.seq < r.seq < closed.seq and r.type == "item.dispatched"]
    assert len(probes) == 1


def test_sigint_stops_terminates_attempts_and_exits_130(tmp_path: Path) -> None:
    write_script(tmp_path, {"default": {"sleep": 30, "ok": "never"}})
    wf = write_workflow(
        tmp_path,
        f"""
        name: interrupt
        agent: {{command: "{MOCK}"}}
        map:
          items: [1, 2, 3, 4, 5, 6]
          max_parallel: 3
          heartbeat: {{interval: 0.2s}}
          agent_template: [{{claude: "x"}}]
        """,
    )
    home = tmp_path / "home"
    proc = subprocess.Popen(
        [ENGINE, "--home", str(home), "run", str(wf), "--run-id", "sig", "--no-progress"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    ledger = home / "runs" / "sig" / "ledger.ndjson"
    wait_for(lambda: ledger_has(ledger, "heartbeat", 3), what="three heartbeats")
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 130, err
    recs = list(LedgerReader(ledger).records())
    pids = {r.data.pid for r in recs if r.type == "heartbeat"}
    assert pids
    for pid in pids:  # every attempt's process is gone (or a zombie, or exiting)
        assert dying(pid), f"attempt process {pid} still running"
    failed = [r.data for r in recs if r.type == "item.failed"]
    assert len(failed) == 3 and {f.error_type for f in failed} == {"interrupted"}
    assert len([r for r in recs if r.type == "item.retry_scheduled"]) == 3
    assert not [
        r
        for r in recs
        if r.type.startswith("run.") and r.type not in ("run.created", "run.started")
    ]
    status = json.loads(
        subprocess.run(
            [ENGINE, "--home", str(home), "status", "sig", "--json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert status["status"] == "interrupted"
    assert status["items"]["pending"] == 6
    p = replay(ledger)
    assert p.items.counts["running"] == 0
