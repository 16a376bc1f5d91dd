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
    mine = {"ENGINE_RUN_ID": "left", "ENGINE_RUN_DIR": str(tmp_path / "a" / "runs" / "left")}
    leftover = subprocess.Popen(
        ["sleep", "60"], env={**os.environ, **mine, "ENGINE_ITEM_ID": "item-7"},
        start_new_session=True,
    )  # fmt: skip
    # The same run id under another home, and another run: neither is touched.
    same_id = {"ENGINE_RUN_ID": "left", "ENGINE_RUN_DIR": str(tmp_path / "b" / "runs" / "left")}
    others = [
        subprocess.Popen(["sleep", "60"], env={**os.environ, **env}, start_new_session=True)
        for env in (same_id, {"ENGINE_RUN_ID": "another"})
    ]
    try:
        deadline = time.monotonic() + 5
        while leftover.pid not in run_processes("left") and time.monotonic() < deadline:
            time.sleep(0.01)  # until exec has put the environment in place
        run_dir = Path(mine["ENGINE_RUN_DIR"])
        assert run_processes("left", run_dir) == {leftover.pid: (leftover.pid, "item-7")}
        stopped = asyncio.run(LocalExecutor().reclaim("left", run_dir, grace=2.0))
        assert stopped == {"item-7": 1}
        assert leftover.wait(5) == -signal.SIGTERM
        assert all(p.poll() is None for p in others)
    finally:
        for proc in (leftover, *others):
            proc.kill()
            proc.wait()
