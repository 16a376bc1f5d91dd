"""Entry point of the ``engine`` console script."""

from __future__ import annotations

import signal
import sys

_early = {"armed": False, "pending": False}


def _terminated(signum: int, _frame: object) -> None:
    # Until a run installs its own handlers (and after it removes them), SIGTERM
    # ends the engine as SIGINT does: exit 130, with nothing half-written
    # (every ledger append is atomic on disk) and the run resumable. During
    # the imports below it is only noted, and acted on once they are done.
    if _early["armed"]:
        raise KeyboardInterrupt
    _early["pending"] = True


if sys.argv[1:2] == ["mock-agent"]:
    # The scripted agent stands in for a program the engine starts many times: it
    # starts without the engine's commands (a fraction of the time), and dies by
    # SIGTERM as a program does.
    from engine.tools.mock_agent import main as _mock_agent

    try:
        sys.exit(_mock_agent(sys.argv[2:]))
    except KeyboardInterrupt:
        sys.exit(130)

signal.signal(signal.SIGTERM, _terminated)

# The commands' modules are imported on use (cli/commands.py): a help text or a
# status starts without the workflow spec, the executors, DuckDB or rich's live display.
from cli.app import cli, quiet_on_closed_stdout  # noqa: E402

__all__ = ["cli", "main"]


def main() -> None:
    try:
        _early["armed"] = True
        if _early["pending"]:
            raise KeyboardInterrupt
        with quiet_on_closed_stdout():
            try:
                cli(prog_name="engine")
            finally:
                # What is still buffered goes out now, where a closed pipe ends the
                # command quietly, not in the interpreter's flush at exit.
                sys.stdout.flush()
    except KeyboardInterrupt:  # outside a command's own handling (start-up)
        sys.stderr.write("engine: interrupted\n")
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
