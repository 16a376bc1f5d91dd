"""One writer per run: a second is refused naming the holder; a dead holder frees it."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from cli.app import EngineGroup
from ledger import LedgerLocked, LedgerWriter, RunLock
from tests.conftest import HELPERS


def _start_holder(run_dir: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, str(HELPERS / "holder.py"), str(run_dir)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_writer_refused_then_free_at_once_after_holder_dies(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    holder = _start_holder(run_dir)
    try:
        with pytest.raises(LedgerLocked) as info:
            LedgerWriter.open(run_dir, "locked")
        err = info.value
        assert err.exit_code == 3
        assert err.holder["pid"] == holder.pid
        assert err.holder["command"] == "holder --test"
        assert f"run is locked by pid {holder.pid} on " in str(err)
        assert RunLock(run_dir).probe() is not None
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()
    started = time.monotonic()
    with LedgerWriter.open(run_dir, "locked") as w:
        assert w.lock.held
    assert time.monotonic() - started < 1.0  # no stale lock to wait out
    assert RunLock(run_dir).probe() is None


def test_lock_in_the_same_process_is_exclusive(tmp_path: Path) -> None:
    first = RunLock(tmp_path)
    first.acquire(command="one")
    with pytest.raises(LedgerLocked):
        RunLock(tmp_path).acquire(command="two")
    first.release()
    second = RunLock(tmp_path)
    second.acquire(command="two")
    assert second.holder["command"] == "two"
    second.release()


def test_racing_acquirers_exactly_one_wins(tmp_path: Path) -> None:
    """Many processes race for one lock (with the file replaced under them)."""
    code = (
        "import sys, time\n"
        "from ledger import RunLock, LedgerLocked\n"
        "lock = RunLock(sys.argv[1])\n"
        "while time.time() < float(sys.argv[2]): pass\n"
        "try:\n"
        "    lock.acquire(command='racer')\n"
        "except LedgerLocked:\n"
        "    print('refused'); sys.exit(0)\n"
        "print('won', flush=True); time.sleep(4.0)\n"
    )
    go = time.time() + 1.5
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path), str(go)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(8)
    ]
    outs = [p.communicate(timeout=30)[0].strip() for p in procs]
    assert sorted(outs) == ["refused"] * 7 + ["won"]


def test_locked_error_exits_3_with_one_line() -> None:
    @click.group(cls=EngineGroup)
    def app() -> None:
        pass

    @app.command()
    def write() -> None:
        raise LedgerLocked(
            "runs/r1", holder={"pid": 77, "host": "h", "started_at": "t", "command": "engine run"}
        )

    result = CliRunner().invoke(app, ["write"])
    assert result.exit_code == 3
    assert result.output == (
        "engine: error: runs/r1: run is locked by pid 77 on h since t (engine run) "
        "(wait for it to finish, or stop that process; a dead holder releases the lock by itself)\n"
    )


def test_probe_never_takes_the_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Asking whether a run is held must not make a starting writer fail."""
    import ledger.lock as lock_module

    if not Path("/proc/locks").exists():
        pytest.skip("no /proc/locks on this system: probe falls back to trying the lock")
    holder = _start_holder(tmp_path / "run")
    try:

        def no_flock(fd: int, op: int) -> None:
            raise AssertionError("probe tried to take the lock")

        monkeypatch.setattr(lock_module.fcntl, "flock", no_flock)
        found = RunLock(tmp_path / "run").probe()
        assert found is not None and found["pid"] == holder.pid
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()
    assert RunLock(tmp_path / "run").probe() is None
