"""After a run, SIGINT and SIGTERM are handled as they were before it."""

from __future__ import annotations

import signal
from pathlib import Path
from types import FrameType

from tests.engine_helpers import run_workflow, write_workflow


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
