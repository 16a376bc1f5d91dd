"""What an attempt leaves running: found on resume, stopped at the end of a step.

Real engines (``python -m cli``) and real processes; every wait is on a
condition (a file, a ledger record, a process state) with a deadline, and a
test only ever looks at, or signals, processes it started itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ledger import LedgerReader

WORKER = """\
import os, pathlib, sys, time

here = pathlib.Path(sys.argv[0]).parent
pids = here / "worker.pid"
witness = here / "witness.log"


def alive(pid: int) -> bool:
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


if pids.exists() and alive(int(pids.read_text())):
    with witness.open("a") as f:
        f.write(f"overlap attempt {os.environ['ENGINE_ATTEMPT']}\\n")
if os.environ["ENGINE_ATTEMPT"] == "1" and os.fork() == 0:
    # A worker in a session of its own: the guardian, which stops the
    # attempt's process group when the engine dies, does not know it.
    os.setsid()
    tmp = here / "worker.pid.tmp"
    tmp.write_text(str(os.getpid()))
    tmp.rename(pids)
    time.sleep(120)
    os._exit(0)
if os.environ["ENGINE_ATTEMPT"] == "1":
    time.sleep(120)
with witness.open("a") as f:
    f.write(f"done attempt {os.environ['ENGINE_ATTEMPT']}\\n")
"""


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


@pytest.fixture
def own_pids() -> Iterator[list[int]]:
    """Pids this test caused to exist; any still alive at the end are killed."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli", *args, "--no-progress"]


def test_resume_with_the_home_spelled_differently_stops_the_dead_engines_leftovers(
    tmp_path: Path, own_pids: list[int]
) -> None:
    first_cwd = tmp_path / "a"
    other_cwd = tmp_path / "b"
    first_cwd.mkdir()
    other_cwd.mkdir()
    (first_cwd / "worker.py").write_text(WORKER)
    (first_cwd / "wf.yml").write_text(
        "name: leftovers\n"
        "map:\n"
        "  items: [one]\n"
        "  retry: {max_attempts: 3}\n"
        "  agent_template:\n"
        f"    - argv: [{sys.executable}, worker.py]\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    env.pop("ENGINE_HOME", None)
    engine = subprocess.Popen(
        _cli("--home", "h", "run", "wf.yml", "--run-id", "r"),
        cwd=first_cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    pid_file = first_cwd / "worker.pid"
    try:
        _wait_for(pid_file.exists, "the first attempt's worker to start")
    finally:
        engine.kill()  # SIGKILL: nothing in the engine can react
        engine.wait()
    worker = int(pid_file.read_text())
    own_pids.append(worker)
    assert _alive(worker)

    # Another working directory, the same home spelled relative to it.
    resumed = subprocess.run(
        _cli("--home", "../a/h", "resume", "r"),
        check=False,
        cwd=other_cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert resumed.returncode == 0, resumed.stderr
    witness = (first_cwd / "witness.log").read_text()
    assert "overlap" not in witness, witness
    assert witness == "done attempt 2\n"
    assert not _alive(worker)
    records = list(LedgerReader(first_cwd / "h" / "runs" / "r" / "ledger.ndjson").records())
    interrupted = [r.data for r in records if r.type == "item.failed"]
    assert len(interrupted) == 1
    assert "1 leftover process stopped" in interrupted[0].message
