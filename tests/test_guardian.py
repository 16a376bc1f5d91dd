"""Children die with the engine; a resume stops what survived anyway."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from engine.local import LocalExecutor, run_processes

ENGINE = """
import asyncio, os, signal, sys
from pathlib import Path
from engine.executor import AttemptRequest
from engine.local import LocalExecutor
from engine.spec import Step

async def main():
    run_dir = Path(sys.argv[1])
    request = AttemptRequest(
        run_id="guarded", item_id="i", attempt=1, idempotency_key="ik:x",
        steps=[Step.model_validate({"run": f"echo $$ > {run_dir}/pid; exec sleep 60"})],
        context={}, env={"PATH": "/usr/bin:/bin", "ENGINE_RUN_ID": "guarded"},
        cwd=run_dir, run_dir=run_dir,
    )
    await LocalExecutor().start(request)
    while not (run_dir / "pid").exists():
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)  # the guardian has heard of the attempt by now
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_an_engine_killed_by_sigkill_takes_its_attempts_with_it(tmp_path: Path) -> None:
    engine = subprocess.run([sys.executable, "-c", ENGINE, str(tmp_path)], check=False)
    assert engine.returncode == -signal.SIGKILL
    pid = int((tmp_path / "pid").read_text())
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(pid), "the attempt outlived its engine"


def test_reclaim_stops_a_leftover_of_the_run_and_only_that(tmp_path: Path) -> None:
    env = {**os.environ, "ENGINE_RUN_ID": "left", "ENGINE_ITEM_ID": "item-7"}
    leftover = subprocess.Popen(["sleep", "60"], env=env, start_new_session=True)
    other = subprocess.Popen(
        ["sleep", "60"], env={**os.environ, "ENGINE_RUN_ID": "another"}, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 5
        while leftover.pid not in run_processes("left") and time.monotonic() < deadline:
            time.sleep(0.01)  # until exec has put the environment in place
        assert run_processes("left") == {leftover.pid: (leftover.pid, "item-7")}
        stopped = asyncio.run(LocalExecutor().reclaim("left", grace=2.0))
        assert stopped == {"item-7": 1}
        assert leftover.wait(5) == -signal.SIGTERM
        assert other.poll() is None  # another run's process is left alone
    finally:
        for proc in (leftover, other):
            proc.kill()
            proc.wait()
