"""Children die with the engine; a resume stops what survived anyway."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from engine.exec.local.executor import LocalExecutor
from engine.exec.local.procfs import run_processes
from tests.conftest import alive
from tests.engine_helpers import DEADLINE, wait_for

ROOT = Path(__file__).parent.parent

ENGINE = """
import asyncio, os, signal, sys
from pathlib import Path
from engine.exec.executor import AttemptRequest
from engine.exec.local.executor import LocalExecutor
from engine.exec.local.guardian_client import GUARDIAN
from engine.workflow.spec import Step
from tests.engine_helpers import wait_for_async

async def main():
    run_dir = Path(sys.argv[1])
    request = AttemptRequest(
        run_id="guarded", item_id="i", attempt=1, idempotency_key="ik:x",
        steps=[Step.model_validate({"run": f"echo $$ > {run_dir}/pid; exec sleep 60"})],
        context={}, env={"PATH": "/usr/bin:/bin", "ENGINE_RUN_ID": "guarded"},
        cwd=run_dir, run_dir=run_dir,
    )
    await LocalExecutor().start(request)
    await wait_for_async(lambda: (run_dir / "pid").exists(), what="the attempt to start")
    await wait_for_async(GUARDIAN.told, what="the guardian to be told")
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


def test_an_engine_killed_by_sigkill_takes_its_attempts_with_it(tmp_path: Path) -> None:
    engine = subprocess.run(
        [sys.executable, "-c", ENGINE, str(tmp_path)],
        cwd=ROOT,
        check=False,
        timeout=DEADLINE,
    )
    assert engine.returncode == -signal.SIGKILL
    pid = int((tmp_path / "pid").read_text())
    wait_for(lambda: not alive(pid), what="the attempt to end with its engine")


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
        run_dir = Path(mine["ENGINE_RUN_DIR"])
        # Until exec has put the environment in place.
        wait_for(lambda: leftover.pid in run_processes("left", run_dir), what="the leftover")
        assert run_processes("left", run_dir) == {leftover.pid: (leftover.pid, "item-7")}
        stopped = asyncio.run(LocalExecutor().reclaim("left", run_dir, grace=2.0))
        assert stopped == {"item-7": 1}
        assert leftover.wait(DEADLINE) == -signal.SIGTERM
        assert all(p.poll() is None for p in others)
    finally:
        for proc in (leftover, *others):
            proc.kill()
            proc.wait()
