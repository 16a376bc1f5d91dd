"""The error policy in real runs: a circuit that lets two probes through at once and
closes after two successes, and failures told on stderr as ``map.error_collection`` says."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
from pathlib import Path

from ledger.events import Record
from projections.replay import replay
from tests.conftest import ENGINE
from tests.engine_helpers import (
    DEADLINE,
    MOCK,
    ledger_has,
    read_terminal,
    records,
    run_workflow,
    wait_for,
    write_script,
    write_workflow,
)


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


def _gated_workflow(tmp_path: Path, collection: str, pause: str = "") -> tuple[Path, Path]:
    """f1, f2, f3 fail (dead-lettered: no retries), then `gate` waits for a file: the map
    cannot end before the test lets it."""
    gate = tmp_path / "release"
    wf = write_workflow(
        tmp_path,
        f"""
        name: told
        env: {{GATE: "{gate}"}}
        map:
          items: [f1, f2, f3, gate]
          id: "${{item}}"
          max_parallel: 1
          retry: {{max_attempts: 1}}
          error_collection: "{collection}"
          agent_template:
            - run: >-
                if [ "${{item}}" = gate ]; then
                while [ ! -e "$GATE" ]; do sleep 0.05; done; exit 0; fi;
                {pause} echo "broken ${{item}}" >&2; exit 3
        """,
    )
    return wf, gate


def _start(tmp_path: Path, wf: Path, *extra: str) -> tuple[subprocess.Popen[str], Path, Path]:
    home = tmp_path / "home"
    stderr = tmp_path / "stderr.txt"
    with stderr.open("w") as err:  # the child holds its own copy
        proc = subprocess.Popen(
            [ENGINE, "--home", str(home), "run", str(wf), "--run-id", "told", *extra],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    return proc, stderr, home / "runs" / "told" / "ledger.ndjson"


def _told(stderr: Path) -> list[str]:
    """The failure lines on stderr (progress lines left out)."""
    lines = stderr.read_text().splitlines()
    return [line for line in lines if "failed" in line and "done" not in line]


def test_immediate_tells_each_failure_on_stderr_as_it_is_recorded(tmp_path: Path) -> None:
    wf, gate = _gated_workflow(tmp_path, "immediate")
    proc, stderr, _ledger = _start(tmp_path, wf, "--json")
    try:
        # All three are told while the map still runs (the gate holds it).
        told = wait_for(lambda: len(_told(stderr)) == 3 and _told(stderr), what="3 lines")
        assert proc.poll() is None
    finally:
        gate.touch()
        out, _ = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 1
    assert [line.split(",")[0] for line in told] == [
        f"engine: item f{n} attempt 1 failed" for n in (1, 2, 3)
    ]
    for n, line in enumerate(told, 1):
        assert line.startswith(f"engine: item f{n} attempt 1 failed, command_failed: ")
        assert f"broken f{n}" in line and line.endswith("(dead-lettered)")
    assert _told(stderr) == told  # nothing more at the end
    assert json.loads(out)["items"]["dead"] == 3  # stdout stays JSON


def test_batched_tells_a_block_every_two_failures_and_the_rest_at_the_end(
    tmp_path: Path,
) -> None:
    wf, gate = _gated_workflow(tmp_path, "batched:2")
    proc, stderr, ledger = _start(tmp_path, wf, "--no-progress")
    try:
        wait_for(lambda: "(2 in all):" in stderr.read_text(), what="the first block")
        wait_for(lambda: ledger_has(ledger, "item.failed", 3), what="the third failure")
        wait_for(lambda: ledger_has(ledger, "item.dispatched", 4), what="the gate's dispatch")
        # The third failure is recorded, but waits for a second one or the map's end.
        assert proc.poll() is None
        assert "f3" not in stderr.read_text()
    finally:
        gate.touch()
        proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 1
    text = stderr.read_text()
    first, rest = text.index("engine: 2 more failed attempts (2 in all):"), text.index("f3")
    assert first < text.index("item f1 attempt 1") < text.index("item f2 attempt 1") < rest
    assert "engine: 1 more failed attempt (3 in all):\n  item f3 attempt 1 failed" in text


def test_on_a_terminal_each_failure_is_a_line_of_its_own_above_the_live_line(
    tmp_path: Path,
) -> None:
    # Each failing attempt takes a little while, so the live line is redrawn between them:
    # a failure written past it (not above it) would be glued to its end.
    wf, gate = _gated_workflow(tmp_path, "immediate", pause="sleep 0.4;")
    home = tmp_path / "home"
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [ENGINE, "--home", str(home), "run", str(wf), "--run-id", "tty"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=slave,
        env={**os.environ, "COLUMNS": "200", "TERM": "xterm"},
    )
    os.close(slave)
    drawn, reader = read_terminal(master)
    try:
        wait_for(lambda: drawn.count(b"failed, command_failed") == 3, what="three failure lines")
        wait_for(lambda: b"items/s" in drawn, what="the live line")
    finally:
        gate.touch()
        proc.wait(timeout=DEADLINE)
        reader.join(timeout=DEADLINE)
        os.close(master)
        assert proc.stdout is not None
        proc.stdout.close()
    assert proc.returncode == 1
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", drawn.decode(errors="replace"))
    told = [line for line in re.split(r"[\r\n]+", text) if "failed, command_failed" in line]
    assert len(told) == 3, told
    for n, line in enumerate(told, 1):
        assert line.startswith(f"engine: item f{n} attempt 1 failed, command_failed:"), line
