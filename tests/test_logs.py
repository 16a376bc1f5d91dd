"""`engine logs`: an attempt's output, read or followed; a killed engine's partial log kept.

Real runs (real processes, real files, real ledgers). An engine that must
hold a run while another command looks at it, or be killed with SIGKILL, is
a subprocess the test starts; every wait is on a condition with a deadline.
"""

from __future__ import annotations

import hashlib
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

from click.testing import CliRunner, Result

from cli.main import cli
from engine.store.logs import keep_partial_logs, log_paths
from ledger import LedgerReader
from ledger.events import ItemFailed, LogRef, Record
from ledger.lock import RunLock
from tests.engine_helpers import (
    DEADLINE,
    records,
    run_workflow,
    unique_run_id,
    wait_for,
    write_workflow,
)


def _logs(home: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--home", str(home), "logs", *args], catch_exceptions=False)


def _engine(home: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "cli", "--home", str(home), *args]


def _ledger(home: Path, run_id: str) -> list[Record]:
    return list(LedgerReader(home / "runs" / run_id / "ledger.ndjson").records())


def _hidden(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "logs").iterdir() if p.name.startswith("."))


# --- reading ---------------------------------------------------------------------------


RETRIED = """
name: logs
map:
  items: [{id: one}, {id: quiet}]
  id: "${item.id}"
  retry: {max_attempts: 2, initial: 10ms, jitter: false, retry_on: [command_failed]}
  agent_template:
    - run: |
        [ "$ENGINE_ITEM_ID" = quiet ] && exit 0
        echo "out of attempt $ENGINE_ATTEMPT"
        echo "err of attempt $ENGINE_ATTEMPT" >&2
        [ "$ENGINE_ATTEMPT" = 2 ]
"""


def test_logs_prints_an_attempts_stdout_or_stderr_the_last_attempt_by_default(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    result = run_workflow(write_workflow(tmp_path, RETRIED), home, run_id="r")
    assert result.status == "completed"
    cases = {
        (): "out of attempt 2\n",
        ("--stderr",): "err of attempt 2\n",
        ("--attempt", "1"): "out of attempt 1\n",
        ("--attempt", "1", "--stderr"): "err of attempt 1\n",
        ("--attempt", "2"): "out of attempt 2\n",
    }
    for args, expected in cases.items():
        shown = _logs(home, "r", "one", *args)
        assert (shown.exit_code, shown.stdout, shown.stderr) == (0, expected, ""), args
    # What it prints is the file the outcome record names.
    failed = records(result, "item.failed")[0].data
    assert isinstance(failed, ItemFailed) and failed.stderr is not None
    assert (result.run_dir / failed.stderr.path).read_text() == "err of attempt 1\n"
    # An attempt that printed nothing prints nothing, and says so on stderr.
    quiet = _logs(home, "latest", "quiet")
    assert (quiet.exit_code, quiet.stdout) == (0, "")
    assert quiet.stderr == "engine: attempt 1 of item 'quiet' wrote nothing to stdout\n"


NAMED_LIKE_STEPS = """
name: logs
setup:
  - run: echo "setup step"
map:
  items: [{id: setup-0}, {id: reduce-0}]
  id: "${item.id}"
  agent_template:
    - run: echo "item $ENGINE_ITEM_ID"
reduce:
  - run: echo "reduce step"
"""


def test_items_named_like_setup_or_reduce_steps_keep_logs_of_their_own(tmp_path: Path) -> None:
    home = tmp_path / "home"
    result = run_workflow(write_workflow(tmp_path, NAMED_LIKE_STEPS), home, run_id="r")
    assert result.status == "completed"
    shown = {}
    for kind in ("step.succeeded", "item.succeeded"):
        for record in records(result, kind):
            data = record.data
            assert data.stdout is not None  # type: ignore[union-attr]
            name = getattr(data, "item", None) or data.phase  # type: ignore[union-attr]
            shown[name] = (result.run_dir / data.stdout.path).read_text()  # type: ignore[union-attr]
    assert shown == {
        "setup": "setup step\n",
        "reduce": "reduce step\n",
        "setup-0": "item setup-0\n",
        "reduce-0": "item reduce-0\n",
    }
    assert _logs(home, "r", "setup-0").stdout == "item setup-0\n"


STOPPED = """
name: logs
map:
  items: [{id: bad}, {id: never}]
  id: "${item.id}"
  max_parallel: 1
  on_item_failure: fail
  agent_template:
    - run: exit 3
"""


def test_an_unknown_run_item_or_attempt_and_an_item_not_started_are_one_line_exit_2(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    result = run_workflow(write_workflow(tmp_path, STOPPED), home, run_id="r")
    assert result.status == "failed"
    said = {
        ("r", "nope"): "engine: error: run r has no item 'nope' "
        "(see the run's item ids: engine tail r --type item.enqueued --all)\n",
        ("r", "ba"): "engine: error: run r has no item 'ba' (did you mean 'bad'?)\n",
        ("r", "never"): "engine: error: item 'never' of run r has no attempt yet: it is "
        "pending (an attempt's log exists once it has started; `engine status` shows the run)\n",
        ("r", "bad", "--attempt", "2"): "engine: error: item 'bad' of run r has no attempt 2: "
        "it has had 1 attempt (give --attempt 1, or leave it out for the last one)\n",
    }
    for args, line in said.items():
        shown = _logs(home, *args)
        assert (shown.exit_code, shown.stdout, shown.stderr) == (2, "", line), args
    no_run = _logs(home, "nothere", "bad")
    assert no_run.exit_code == 2
    assert no_run.stderr.startswith("engine: error: no run 'nothere'")
    assert no_run.stderr.count("\n") == 1


def test_a_timed_out_attempts_log_is_final_named_by_item_failed_and_shown(tmp_path: Path) -> None:
    wf = write_workflow(
        tmp_path,
        """
        name: logs
        map:
          items: [{id: slow}]
          id: "${item.id}"
          timeout: 1s
          retry: {max_attempts: 1}
          agent_template:
            - run: echo "before the timeout"; exec sleep 300
        """,
    )
    result = run_workflow(wf, tmp_path / "home", run_id="t")
    failed = records(result, "item.failed")[0].data
    assert isinstance(failed, ItemFailed) and failed.error_type == "timeout"
    assert failed.stdout is not None
    assert (result.run_dir / failed.stdout.path).read_text() == "before the timeout\n"
    assert _hidden(result.run_dir) == []
    shown = _logs(tmp_path / "home", "t", "slow")
    assert (shown.exit_code, shown.stdout) == (0, "before the timeout\n")


# --- following -------------------------------------------------------------------------

GATED = """
name: logs
map:
  items: [{id: gated}]
  id: "${item.id}"
  agent_template:
    - run: |
        echo first
        i=0
        while [ ! -e "$GATE" ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done
        echo second
"""


def _lines(stream: IO[str]) -> tuple[queue.Queue[str], threading.Thread]:
    """The lines of ``stream`` as they come, read by a thread (joined once it ends)."""
    got: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in stream:
            got.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return got, reader


def test_follow_prints_a_running_attempts_output_until_it_ends_then_exits_0(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    gate = tmp_path / "go"
    wf = write_workflow(tmp_path, GATED)
    run_id = unique_run_id("logs-follow")
    env = {**os.environ, "GATE": str(gate)}
    engine = subprocess.Popen(
        _engine(home, "run", str(wf), "--run-id", run_id, "--no-progress"),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        stdout, _ = log_paths(home / "runs" / run_id, "gated", 1, "stdout")
        partial = stdout.with_name(f".{stdout.name}.tmp")
        wait_for(
            lambda: partial.is_file() and partial.read_bytes() == b"first\n",
            what="the attempt's first line in its partial log",
        )
        with subprocess.Popen(
            _engine(home, "logs", run_id, "gated", "-f"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as follower:
            assert follower.stdout is not None and follower.stderr is not None
            got, reader = _lines(follower.stdout)
            try:
                assert got.get(timeout=DEADLINE) == "first\n"
                gate.touch()  # only now does the attempt print its second line, and end
                assert got.get(timeout=DEADLINE) == "second\n"
                follower.wait(timeout=DEADLINE)  # it exits once the attempt has ended
            finally:
                if follower.poll() is None:
                    follower.kill()
                reader.join(DEADLINE)
            assert follower.returncode == 0
            assert follower.stderr.read() == ""
        assert engine.wait(timeout=DEADLINE) == 0
    finally:
        gate.touch()
        if engine.poll() is None:
            engine.kill()
        engine.wait()
        if engine.stderr is not None:
            engine.stderr.close()
    # An ended attempt is printed whole, and -f returns at once.
    again = subprocess.run(
        _engine(home, "logs", run_id, "gated", "-f"),
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )
    assert (again.returncode, again.stdout) == (0, "first\nsecond\n")


# --- an attempt killed with its engine --------------------------------------------------

KILLED = """
name: logs
map:
  items: [{id: victim}]
  id: "${item.id}"
  retry: {max_attempts: 2, initial: 10ms}
  agent_template:
    - run: |
        echo "out of attempt $ENGINE_ATTEMPT"
        echo "err of attempt $ENGINE_ATTEMPT" >&2
        if [ "$ENGINE_ATTEMPT" = 1 ]; then
          echo $$ > step.pid
          exec sleep 300
        fi
"""


def _sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_an_attempt_killed_with_the_engine_keeps_its_log_named_by_item_failed(
    tmp_path: Path, own_pids: list[int]
) -> None:
    home = tmp_path / "home"
    wf = write_workflow(tmp_path, KILLED)
    run_id = unique_run_id("logs-killed")
    run_dir = home / "runs" / run_id
    engine = subprocess.Popen(
        _engine(home, "run", str(wf), "--run-id", run_id, "--no-progress"),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    out, out_partial = log_paths(run_dir, "victim", 1, "stdout")
    err, err_partial = log_paths(run_dir, "victim", 1, "stderr")
    try:
        wait_for(
            lambda: (
                (tmp_path / "step.pid").is_file()
                and out_partial.is_file()
                and out_partial.read_bytes() == b"out of attempt 1\n"
                and err_partial.is_file()
                and err_partial.read_bytes() == b"err of attempt 1\n"
            ),
            what="the first attempt's output in its partial logs",
        )
    finally:
        engine.kill()  # SIGKILL: nothing in the engine can react
        engine.wait()
    wait_for(lambda: (tmp_path / "step.pid").read_text().strip(), what="the step's pid")
    own_pids.append(int((tmp_path / "step.pid").read_text()))
    # `engine logs` tells a running attempt from a cut-short one by the run's lock: the
    # killed engine's lock is gone before it is asked.
    wait_for(lambda: RunLock(run_dir).probe() is None, what="the dead engine's lock let go")

    # Before the resume: what it printed, from the partial file, said to be cut short.
    before = _logs(home, run_id, "victim")
    assert (before.exit_code, before.stdout) == (0, "out of attempt 1\n")
    assert "was cut short: its engine stopped before it ended" in before.stderr

    resumed = subprocess.run(
        _engine(home, "resume", run_id, "--no-progress"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr
    failed = [r.data for r in _ledger(home, run_id) if r.type == "item.failed"]
    assert len(failed) == 1
    interrupted = failed[0]
    assert isinstance(interrupted, ItemFailed)
    assert (interrupted.attempt, interrupted.error_type) == (1, "interrupted")
    # The record names the kept files, under their final names, by hash and size.
    assert interrupted.stdout is not None and interrupted.stderr is not None
    assert out.is_file() and err.is_file()
    assert interrupted.stdout == LogRef(path=f"logs/{out.name}", sha256=_sha256(out), size=17)
    assert interrupted.stderr == LogRef(path=f"logs/{err.name}", sha256=_sha256(err), size=17)
    assert _hidden(run_dir) == []  # no partial file is left behind
    shown = {
        args: _logs(home, run_id, "victim", *args).stdout
        for args in [("--attempt", "1"), ("--attempt", "1", "--stderr"), ()]
    }
    assert shown == {
        ("--attempt", "1"): "out of attempt 1\n",
        ("--attempt", "1", "--stderr"): "err of attempt 1\n",
        (): "out of attempt 2\n",
    }


def test_keeping_a_dead_engines_logs_takes_partial_or_final_files_and_skips_empty_ones(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "logs").mkdir(parents=True)
    # Killed mid-attempt: stdout partial; stderr opened, never written.
    out, out_partial = log_paths(run_dir, "a", 1, "stdout")
    _, err_partial = log_paths(run_dir, "a", 1, "stderr")
    out_partial.write_bytes(b"half a line")
    err_partial.write_bytes(b"")
    stdout, stderr = keep_partial_logs(run_dir, "a", 1)
    assert stdout == LogRef(path=f"logs/{out.name}", sha256=_sha256(out), size=11)
    assert stderr is None
    assert not out_partial.exists() and not err_partial.exists()
    # Killed after the logs were made final, before the outcome was recorded.
    _, err_b_partial = log_paths(run_dir, "b", 2, "stderr")
    err_b, _ = log_paths(run_dir, "b", 2, "stderr")
    err_b.write_bytes(b"all of it\n")
    assert keep_partial_logs(run_dir, "b", 2) == (
        None,
        LogRef(path=f"logs/{err_b.name}", sha256=_sha256(err_b), size=10),
    )
    assert not err_b_partial.exists()
    # An attempt that printed nothing at all.
    assert keep_partial_logs(run_dir, "c", 1) == (None, None)
