"""What an attempt leaves running: found on resume, stopped at the end of a step.

Real engines (``python -m cli``) and real processes; every wait is on a
condition (a file, a ledger record, a process state) with a deadline, and a
test only ever looks at, or signals, processes it started itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ledger import LedgerReader
from tests.conftest import alive
from tests.engine_helpers import records, run_workflow, wait_for, write_workflow

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
    # A worker that left the attempt's process group (setsid): the guardian, which stops the
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
        wait_for(pid_file.exists, what="the first attempt's worker to start")
    finally:
        engine.kill()  # SIGKILL: nothing in the engine can react
        engine.wait()
    worker = int(pid_file.read_text())
    own_pids.append(worker)
    assert alive(worker)

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
    assert not alive(worker)
    records = list(LedgerReader(first_cwd / "h" / "runs" / "r" / "ledger.ndjson").records())
    interrupted = [r.data for r in records if r.type == "item.failed"]
    assert len(interrupted) == 1
    # The setsid worker, and the attempt's own process too when the guardian had
    # not stopped it yet (on a loaded machine the engine may be killed before its
    # guardian hears of the attempt, or the guardian be slower than the resume).
    message = interrupted[0].message
    assert "(1 leftover process stopped)" in message or "(2 leftover processes stopped)" in message


# --- what a successful step leaves behind ----------------------------------------------

SETSID = (
    f"{sys.executable} -c 'import os, sys, time; os.setsid(); "
    'open(sys.argv[1], "w").write(str(os.getpid())); time.sleep(300)\' setsid.pid'
)


def _pid(path: Path) -> int:
    wait_for(lambda: path.exists() and path.read_text().strip() != "", what=path.name)
    return int(path.read_text())


@pytest.mark.parametrize(
    ("command", "pid_file"),
    [
        # A background job with its output redirected: the pipes close, it lives on.
        ("sleep 300 > /dev/null 2>&1 & echo $! > bg.pid", "bg.pid"),
        # A double fork: reparented to init, still in the step's process group.
        ("sh -c 'sleep 300 > /dev/null 2>&1 & echo $! > dbl.pid'", "dbl.pid"),
    ],
)
def test_what_a_successful_step_leaves_in_its_group_is_stopped_when_it_ends(
    tmp_path: Path, own_pids: list[int], command: str, pid_file: str
) -> None:
    wf = write_workflow(
        tmp_path,
        f"""
        name: bg
        map:
          items: [one]
          agent_template:
            - run: "{command}"
        """,
    )
    result = run_workflow(wf, tmp_path / "home")
    pid = _pid(tmp_path / pid_file)
    own_pids.append(pid)
    assert (result.status, result.exit_code) == ("completed", 0)
    assert not alive(pid), "the background process outlived its step"
    (succeeded,) = records(result, "item.succeeded")
    assert succeeded.data.stderr is not None
    log = (result.run_dir / succeeded.data.stderr.path).read_text()
    assert "engine: stopped 1 process the step left running in the background" in log
    assert records(result, "run.leftovers") == []


def test_a_process_that_left_its_group_is_stopped_and_reported_at_the_end_of_the_run(
    tmp_path: Path, own_pids: list[int]
) -> None:
    wf = write_workflow(
        tmp_path,
        """
        name: setsid
        map:
          items: [one]
          id: "${item}"
          agent_template:
            - run: |
                COMMAND &
                while ! test -s setsid.pid; do sleep 0.01; done
        """.replace("COMMAND", SETSID),
    )
    warnings: list[str] = []
    result = run_workflow(wf, tmp_path / "home", warn=warnings.append)
    pid = _pid(tmp_path / "setsid.pid")
    own_pids.append(pid)
    assert (result.status, result.exit_code) == ("completed", 0)
    assert not alive(pid)
    (leftovers,) = records(result, "run.leftovers")
    assert leftovers.data.stopped is True
    assert [(p.pid, p.item) for p in leftovers.data.processes] == [(pid, "one")]
    assert len(warnings) == 1 and f"pid {pid} (one:" in warnings[0], warnings
    assert "1 process of run" in warnings[0] and "stopped" in warnings[0]


def test_allow_background_keeps_them_and_the_end_of_the_run_says_so(
    tmp_path: Path, own_pids: list[int]
) -> None:
    wf = write_workflow(
        tmp_path,
        """
        name: keep
        map:
          items: [one]
          id: "${item}"
          allow_background: true
          agent_template:
            - run: sleep 300 > /dev/null 2>&1 & echo $! > bg.pid
        """,
    )
    warnings: list[str] = []
    result = run_workflow(wf, tmp_path / "home", warn=warnings.append)
    pid = _pid(tmp_path / "bg.pid")
    own_pids.append(pid)
    assert (result.status, result.exit_code) == ("completed", 0)
    assert alive(pid)
    (leftovers,) = records(result, "run.leftovers")
    assert leftovers.data.stopped is False
    assert [p.pid for p in leftovers.data.processes] == [pid]
    assert "left running (map.allow_background)" in warnings[0]


def test_an_orphan_that_left_its_session_and_cleared_its_environment_is_stopped(
    tmp_path: Path, own_pids: list[int]
) -> None:
    # (setsid env -i ... &): no process group, no session, no ENGINE_RUN_ID leads back to
    # the run, and its parent is gone. The engine adopts its attempts' orphans, so it is
    # still found, stopped and reported when the run ends, in a failing step as well.
    wf = write_workflow(
        tmp_path,
        """
        name: orphan
        map:
          items: [ok, fails]
          id: "${item}"
          retry: {max_attempts: 1}
          agent_template:
            - run: |
                (setsid env -i sh -c 'echo $$ > "$0.pid"; exec sleep 300' "$PWD/${item}" \\
                  > /dev/null 2>&1 < /dev/null &)
                while ! test -s "${item}.pid"; do sleep 0.01; done
                test "${item}" = ok
        """,
    )
    run = subprocess.run(
        _cli("--home", str(tmp_path / "home"), "run", str(wf), "--run-id", "orphan"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    pids = [_pid(tmp_path / f"{item}.pid") for item in ("ok", "fails")]
    own_pids.extend(pids)
    assert run.returncode == 1, run.stderr  # one item failed, as written
    assert [pid for pid in pids if alive(pid)] == [], "an orphan outlived the run"
    assert "2 processes of run orphan outlived their steps, stopped" in run.stderr
    ledger = tmp_path / "home" / "runs" / "orphan" / "ledger.ndjson"
    (leftovers,) = [r for r in LedgerReader(ledger).records() if r.type == "run.leftovers"]
    assert sorted(p.pid for p in leftovers.data.processes) == sorted(pids)
