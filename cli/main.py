"""Entry point of the ``engine`` console script."""

from __future__ import annotations

from cli import ledger_cmds, run_cmds  # noqa: F401  (registers the commands)
from cli.app import cli

__all__ = ["cli", "main"]


def main() -> None:
    cli(prog_name="engine")


if __name__ == "__main__":  # pragma: no cover
    main()
