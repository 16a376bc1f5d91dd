"""One writer per run: a second is refused naming the holder; a dead holder frees it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from cli.app import EngineGroup
from ledger import LedgerLocked, LedgerReader, LedgerWriter, RunLock, verify_ledger
from ledger.events import ItemEnqueued
from tests.conftest import ENGINE, HELPERS
from tests.engine_helpers import DEADLINE, wait_for


def _start_holder(run_dir: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, str(HELPERS / "holder.py"), str(run_dir)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "held"
    return proc


def _kill(holder: subprocess.Popen[str]) -> None:
    """The holder killed outright (its lock dies with it), reaped, its pipe closed."""
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert holder.stdout is not None
    holder.stdout.close()


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
        _kill(holder)
    # Taken at once: the lock is never waited for (a held one is refused), so a
    # stale lock left by the dead holder would raise LedgerLocked here.
    with LedgerWriter.open(run_dir, "locked") as w:
        assert w.lock.held
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
        "import sys\n"
        "from ledger import RunLock, LedgerLocked\n"
        "lock = RunLock(sys.argv[1])\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"  # the start: every racer is ready
        "try:\n"
        "    lock.acquire(command='racer')\n"
        "except LedgerLocked:\n"
        "    print('refused', flush=True); sys.exit(0)\n"
        "print('won', flush=True)\n"
        "sys.stdin.readline()\n"  # held until every racer has tried
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    try:
        # However slowly they start, they all race: each waits for the start.
        assert all(_line(p) == "ready" for p in procs)
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        outs = [_line(p) for p in procs]
    finally:
        for p in procs:
            p.communicate(timeout=DEADLINE)
    assert sorted(outs) == ["refused"] * 7 + ["won"]


def _line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    return proc.stdout.readline().strip()


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
        _kill(holder)
    assert RunLock(tmp_path / "run").probe() is None


def test_deleting_or_replacing_the_lock_file_does_not_free_the_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    holder = _start_holder(run_dir)
    try:
        (run_dir / "lock").unlink()
        with pytest.raises(LedgerLocked) as info:
            LedgerWriter.open(run_dir, "locked")
        if Path("/proc/locks").exists():  # the details come from the live lock instead
            assert info.value.holder["pid"] == holder.pid
            assert "holder.py" in str(info.value.holder.get("command"))
        assert RunLock(run_dir).probe() is not None
        (run_dir / "lock").write_text('{"pid": 1, "host": "elsewhere"}\n')  # a stale card
        with pytest.raises(LedgerLocked) as info:
            LedgerWriter.open(run_dir, "locked")
        if Path("/proc/locks").exists():
            assert info.value.holder["pid"] == holder.pid
    finally:
        _kill(holder)
    with LedgerWriter.open(run_dir, "locked") as w:
        assert w.lock.held


def test_one_ledger_reached_through_two_run_directories_has_one_writer(tmp_path: Path) -> None:
    """The ledger's own inode is locked too: a hard link (or a moved file) does not
    let a second writer append to a ledger a first one is appending to."""
    first_dir = tmp_path / "a"
    with LedgerWriter.open(first_dir, "r", create=True) as first:
        second_dir = tmp_path / "b"
        second_dir.mkdir()
        os.link(first_dir / "ledger.ndjson", second_dir / "ledger.ndjson")
        with pytest.raises(LedgerLocked):
            LedgerWriter.open(second_dir, "r")
        first.append(ItemEnqueued(item="a", index=0))
    assert verify_ledger(first_dir / "ledger.ndjson").records == 2


def test_a_live_run_whose_lock_file_was_deleted_refuses_a_second_engine(tmp_path: Path) -> None:
    """A real engine mid-item; its lock file deleted; a second engine on the same run
    exits 3 naming the first; the first finishes and its ledger is intact."""
    started, release = tmp_path / "started", tmp_path / "release"
    wf = tmp_path / "wf.yml"
    wf.write_text(
        "name: slow\n"
        "map:\n"
        "  items: [slow]\n"
        "  agent_template:\n"
        f"    - run: touch {started}; while [ ! -f {release} ]; do sleep 0.05; done\n"
    )
    home = tmp_path / "home"
    run_dir = home / "runs" / "live"
    first = subprocess.Popen(
        [ENGINE, "--home", str(home), "run", str(wf), "--run-id", "live", "--no-progress"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(
            lambda: started.exists() or first.poll() is not None, what="the slow item to start"
        )
        assert first.poll() is None, first.communicate()[1]
        (run_dir / "lock").unlink()
        for second in (
            [ENGINE, "--home", str(home), "resume", "live", "--no-progress"],
            [ENGINE, "--home", str(home), "run", str(wf), "--run-id", "live", "--no-progress"],
        ):
            proc = subprocess.run(
                second, capture_output=True, text=True, timeout=DEADLINE, check=False
            )
            assert proc.returncode == 3, proc.stderr
            assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
            if Path("/proc/locks").exists():
                assert f"run is locked by pid {first.pid} " in proc.stderr
        release.touch()
        _, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, err
    ledger = run_dir / "ledger.ndjson"
    assert verify_ledger(ledger).torn is None
    records = list(LedgerReader(ledger).records())
    assert [r.type for r in records].count("lock.acquired") == 1
    assert records[-1].type == "run.completed"
