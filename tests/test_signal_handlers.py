"""After a run, SIGINT and SIGTERM are handled as they were before it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import FrameType

import pytest

from engine.exec.executor import Attempt, AttemptRequest
from engine.exec.local.executor import LocalExecutor
from engine.run import RunOptions, RunResult, execute_run
from engine.workflow.load import load_workflow
from tests.engine_helpers import DEADLINE, records, run_workflow, within, write_workflow

AFTER_A_RUN = textwrap.dedent(
    """
    import asyncio, signal, sys
    from pathlib import Path


    def terminated(_signum, _frame):
        sys.stderr.write("engine: interrupted\\n")
        sys.exit(130)


    signal.signal(signal.SIGTERM, terminated)

    from engine.run import RunOptions, execute_run
    from engine.workflow.load import load_workflow

    loaded = load_workflow(Path(sys.argv[1]))
    result = asyncio.run(execute_run(loaded, Path(sys.argv[2]), RunOptions()))
    print("done", result.exit_code, flush=True)
    sys.stdin.read()  # until SIGTERM
    """
)


def test_a_run_puts_back_the_signal_handlers_it_found(tmp_path: Path) -> None:
    # The CLI handles SIGTERM before and after a run (exit 130); without its
    # handler back, a SIGTERM just after the run would kill the engine outright.
    def before(_signum: int, _frame: FrameType | None) -> None:
        pass

    wf = write_workflow(
        tmp_path,
        """
        name: handlers
        map:
          items: [1]
          agent_template:
            - run: "true"
        """,
    )
    old = {s: signal.signal(s, before) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        result = run_workflow(wf, tmp_path / "home")
        assert result.exit_code == 0
        assert signal.getsignal(signal.SIGTERM) is before
        assert signal.getsignal(signal.SIGINT) is before
    finally:
        for signum, handler in old.items():
            signal.signal(signum, handler)


def test_sigterm_after_a_run_reaches_the_handler_from_before_it(tmp_path: Path) -> None:
    # A process that ran a workflow to its end through the engine's API, then
    # gets SIGTERM: its own handler runs (here as the CLI's: exit 130 and a
    # line on stderr), not the default action (killed, -15, nothing said).
    wf = write_workflow(
        tmp_path,
        """
        name: after
        setup:
          - run: "true"
        map:
          items: [1, 2]
          agent_template:
            - run: "true"
        """,
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", AFTER_A_RUN, str(wf), str(tmp_path / "home")],
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "done 0\n"
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=DEADLINE)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130, err
    assert err.endswith("engine: interrupted\n"), err


def test_a_signal_while_a_step_starts_stops_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SIGTERM lands after step.started is recorded, before the step is known
    # as the running one: it must still be stopped, not left to run its course.
    real_start = LocalExecutor.start

    async def start_with_a_signal(self: LocalExecutor, request: AttemptRequest) -> Attempt:
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.sleep(0.05)  # the loop hands the signal to the engine's handler
        return await real_start(self, request)

    monkeypatch.setattr(LocalExecutor, "start", start_with_a_signal)
    wf = write_workflow(
        tmp_path,
        """
        name: stopped
        setup:
          - run: sleep 300
        map:
          items: [1]
          agent_template:
            - run: "true"
        """,
    )
    loaded = load_workflow(wf)

    async def main() -> RunResult:
        return await within(execute_run(loaded, tmp_path / "home", RunOptions()), what="the run")

    result = asyncio.run(main())
    assert result.exit_code == 130
    failed = [r.data for r in records(result, "step.failed")]
    assert [f.error_type for f in failed] == ["interrupted"]
