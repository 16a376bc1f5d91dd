"""`engine pause|unpause|cancel` from another process, acting on a live engine."""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from engine.exec.executor import AttemptRequest
from ledger import LedgerReader
from projections.replay import Projections, replay
from tests.engine_helpers import DEADLINE, ledger_has, poll, wait_for, write_workflow

RUN = "steer"

# An item command that runs until the test opens its gate (the file "open").
GATED = "while [ ! -e open ]; do sleep 0.02; done"


def _engine(home: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "cli", "--home", str(home), *args]


def _wait_for(ledger: Path, predicate: Callable[[Projections], bool], what: str) -> None:
    wait_for(lambda: ledger.exists() and predicate(replay(ledger, verify=False)), what=what)


def _start(tmp_path: Path, items: int, command: str) -> tuple[subprocess.Popen[bytes], Path, Path]:
    wf = write_workflow(
        tmp_path,
        f"""
        name: steer
        map:
          command: seq 1 {items}
          max_parallel: 2
          agent_template:
            - run: '{command}'
        """,
    )
    home = tmp_path / "home"
    proc = subprocess.Popen(
        _engine(home, "run", str(wf), "--run-id", RUN, "--no-progress"),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, home, home / "runs" / RUN / "ledger.ndjson"


def test_pause_unpause_cancel_then_resume(tmp_path: Path) -> None:
    gate = tmp_path / "open"
    proc, home, ledger = _start(tmp_path, 40, GATED)
    try:
        _wait_for(ledger, lambda p: p.items.counts["running"] == 2, "two running attempts")
        paused = subprocess.run(
            _engine(home, "pause", RUN), capture_output=True, text=True, check=False
        )
        assert paused.returncode == 0, paused.stderr
        assert f"paused {RUN}" in paused.stdout
        # The running ones finish; had it not paused, their slots would be refilled.
        gate.touch()
        _wait_for(
            ledger,
            lambda p: p.items.counts["succeeded"] >= 2 and p.items.counts["running"] == 0,
            "the running attempts to finish while paused",
        )
        gate.unlink()
        unpaused = subprocess.run(
            _engine(home, "unpause", RUN), capture_output=True, text=True, check=False
        )
        assert unpaused.returncode == 0, unpaused.stderr
        _wait_for(ledger, lambda p: p.items.counts["running"] == 2, "dispatch to go on")
        cancelled = subprocess.run(
            _engine(home, "cancel", RUN), capture_output=True, text=True, check=False
        )
        assert cancelled.returncode == 0, cancelled.stderr
        assert proc.wait(DEADLINE) == 130
    finally:
        proc.kill()
        proc.wait()  # reaped even when the test fails: no warning in a later test
    records = list(LedgerReader(ledger).records())
    types = [r.type for r in records]
    paused_at = types.index("run.paused")
    unpaused_at = types.index("run.unpaused")
    assert "item.dispatched" not in types[paused_at:unpaused_at]  # nothing started while paused
    assert types[paused_at:unpaused_at].count("item.succeeded") == 2  # running ones finished
    assert types.index("run.cancel_requested") < types.index("run.aborted")
    assert "item.dispatched" not in types[types.index("run.cancel_requested") :]
    assert replay(ledger).run.status == "aborted"
    again = subprocess.run(_engine(home, "pause", RUN), capture_output=True, text=True, check=False)
    assert again.returncode == 2 and "is not running (it is aborted)" in again.stderr
    gate.touch()
    resumed = subprocess.run(
        _engine(home, "resume", RUN, "--no-progress"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr
    p = replay(ledger)
    assert p.run.status == "completed" and p.items.counts["succeeded"] == 40


def test_cancel_force_kills_at_once(tmp_path: Path) -> None:
    # Attempts that ignore SIGTERM: a graceful cancel ends them only once the
    # grace period is over; --force (SIGKILL at once) does not wait it out.
    proc, home, ledger = _start(tmp_path, 4, 'trap "" TERM; sleep 300')
    try:
        _wait_for(ledger, lambda p: p.items.counts["running"] == 2, "two running attempts")
        forced = subprocess.run(
            _engine(home, "cancel", RUN, "--force"), capture_output=True, text=True, check=False
        )
        assert forced.returncode == 0, forced.stderr
        assert proc.wait(DEADLINE) == 130
    finally:
        proc.kill()
        proc.wait()  # reaped even when the test fails: no warning in a later test
    records = list(LedgerReader(ledger).records())
    failed = [r for r in records if r.type == "item.failed"]
    assert len(failed) == 2 and all(f.data.error_type == "interrupted" for f in failed)
    # Timed by the engine's own records, not by this test's clock: a graceful
    # stop records these no sooner than the grace period after the request.
    asked = next(r for r in records if r.type == "run.cancel_requested")
    grace = AttemptRequest.__dataclass_fields__["kill_grace"].default
    assert all(_ts(f.ts) - _ts(asked.ts) < grace for f in failed)
    done = subprocess.run(_engine(home, "cancel", RUN), capture_output=True, text=True, check=False)
    assert done.returncode == 0 and "aborted already" in done.stdout  # as pause when paused


def test_cancel_of_a_run_no_engine_holds(tmp_path: Path) -> None:
    proc, home, ledger = _start(tmp_path, 4, "sleep 300")
    _wait_for(ledger, lambda p: p.items.counts["running"] == 2, "two running attempts")
    proc.kill()
    proc.wait()
    cancelled = subprocess.run(
        _engine(home, "cancel", RUN), capture_output=True, text=True, check=False
    )
    assert cancelled.returncode == 0, cancelled.stderr
    assert "no engine was running it" in cancelled.stdout
    p = replay(ledger)
    assert p.run.status == "aborted" and "while no engine ran it" in (p.run.reason or "")


def _start_with(tmp_path: Path, text: str) -> tuple[subprocess.Popen[bytes], Path, Path]:
    wf = write_workflow(tmp_path, text)
    home = tmp_path / "home"
    proc = subprocess.Popen(
        _engine(home, "run", str(wf), "--run-id", RUN, "--no-progress"),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, home, home / "runs" / RUN / "ledger.ndjson"


SLOW_PHASES = """
name: phases
setup:
  - run: {setup}
map:
  items: [1, 2]
  agent_template:
    - run: "true"
reduce:
  - run: {reduce}
"""


def test_sigterm_during_the_reduce_stops_it_and_exits_130(tmp_path: Path) -> None:
    proc, _home, ledger = _start_with(
        tmp_path, SLOW_PHASES.format(setup="'true'", reduce="sleep 300")
    )
    try:
        _wait_for(ledger, lambda p: _reduce_started(ledger), "the reduce step to start")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(DEADLINE) == 130  # long before the step would end
    finally:
        proc.kill()
        proc.wait()  # reaped even when the test fails: no warning in a later test
    types = [r.type for r in LedgerReader(ledger).records()]
    assert "run.completed" not in types and types[-1] == "step.failed"
    failed = [r.data for r in LedgerReader(ledger).records() if r.type == "step.failed"]
    assert failed[-1].error_type == "interrupted" and failed[-1].phase == "reduce"


def test_cancel_during_setup_stops_the_step(tmp_path: Path) -> None:
    proc, home, ledger = _start_with(
        tmp_path, SLOW_PHASES.format(setup="sleep 300", reduce="'true'")
    )
    try:
        _wait_for(ledger, lambda p: _setup_started(ledger), "the setup step to start")
        cancelled = subprocess.run(
            _engine(home, "cancel", RUN), capture_output=True, text=True, check=False
        )
        assert cancelled.returncode == 0, cancelled.stderr
        assert proc.wait(DEADLINE) == 130  # long before the step would end
    finally:
        proc.kill()
        proc.wait()  # reaped even when the test fails: no warning in a later test
    p = replay(ledger)
    assert p.run.status == "aborted" and not p.items.items  # the map never began


def test_pause_asked_while_the_engine_starts_is_not_lost(tmp_path: Path) -> None:
    # The setup step runs until the test opens its gate: the pause is asked
    # while it runs, however slowly the pause command starts.
    proc, home, ledger = _start_with(
        tmp_path, SLOW_PHASES.format(setup=f"'{GATED}'", reduce="'true'")
    )
    try:
        _wait_for(ledger, lambda p: p.run.status == "running", "the run to start")
        paused = subprocess.run(
            _engine(home, "pause", RUN), capture_output=True, text=True, check=False
        )
        assert paused.returncode == 0, paused.stderr
        (tmp_path / "open").touch()
        # Setup ends and the map's items are enqueued: the map must not start.
        wait_for(lambda: ledger_has(ledger, "item.enqueued", 2), what="the items to be enqueued")
        dispatched = poll(lambda: ledger_has(ledger, "item.dispatched"), timeout=1.0)
        assert not dispatched  # a window for a wrong dispatch to show (load can only hide it)
        assert (
            replay(ledger).items.counts["running"] + replay(ledger).items.counts["succeeded"] == 0
        )
        again = subprocess.run(
            _engine(home, "pause", RUN), capture_output=True, text=True, check=False
        )
        assert again.returncode == 0 and "paused already" in again.stdout
        subprocess.run(_engine(home, "unpause", RUN), capture_output=True, check=True)
        assert proc.wait(DEADLINE) == 0
    finally:
        proc.kill()
        proc.wait()  # reaped even when the test fails: no warning in a later test


def _ts(value: str) -> float:
    return dt.datetime.fromisoformat(value).timestamp()


def _reduce_started(ledger: Path) -> bool:
    return any(
        r.type == "step.started" and r.data.phase == "reduce"
        for r in LedgerReader(ledger).records()
    )


def _setup_started(ledger: Path) -> bool:
    return any(r.type == "step.started" for r in LedgerReader(ledger).records())
