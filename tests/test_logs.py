"""`engine logs`: an attempt's output, read or followed; a killed engine's partial log kept.

Real runs (real processes, real files, real ledgers). An engine that must
hold a run while another command looks at it, or be killed with SIGKILL, is
a subprocess the test starts; every wait is on a condition with a deadline.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
from click.testing import CliRunner, Result

from cli.main import cli
from engine.store.logs import log_paths
from ledger import LedgerReader
from ledger.events import ItemFailed, Record
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


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


@pytest.fixture
def own_pids() -> Iterator[list[int]]:
    """Pids of processes this test's steps started; any still alive at the end are killed."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


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
        '(`engine query r "attempts by item"` lists the items that ran)\n',
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
