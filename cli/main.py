"""Entry point of the ``engine`` console script."""

from __future__ import annotations

import signal
import sys


def _terminated(signum: int, _frame: object) -> None:
    # Until a run installs its own handlers (and after it removes them), SIGTERM
    # ends the engine as SIGINT does: exit 130, nothing half-written (every
    # ledger append is atomic on disk), the run resumable.
    raise KeyboardInterrupt


signal.signal(signal.SIGTERM, _terminated)

from cli import ledger_cmds, run_cmds  # noqa: E402, F401  (registers the commands)
from cli.app import cli  # noqa: E402

__all__ = ["cli", "main"]


def main() -> None:
    try:
        cli(prog_name="engine")
    except KeyboardInterrupt:  # outside a command's own handling (start-up)
        sys.stderr.write("engine: interrupted\n")
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
