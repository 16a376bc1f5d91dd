"""Render ``docs/cli.md`` from the commands' own ``--help`` (``make docs``)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from cli.main import cli

__all__ = ["render_cli_reference"]

HEADER = """\
# CLI reference

Generated from the commands' `--help` by `make docs`; a test fails when this
file is stale.

Exit codes for every command: 0 ok; 1 the run finished with failures (or a
ledger is corrupt); 2 bad input; 3 run locked; 4 stopped by its budget, resumable;
130 interrupted, resumable.
Errors are one line on stderr (`engine: error: ...`); with `--debug` the
traceback is printed before that line, and the exit code stays the same (bad
input still exits 2, an internal error 1).

What every command does alike:

* `--home` and `--debug` may come before or after the subcommand
  (`engine run wf.yml --home DIR`, `engine status latest --debug`).
* Standard output closed early by its reader (`engine tail latest --all | head -1`)
  ends the command quietly, with exit 0.
* `--json` (or `--format json`) prints JSON on stdout only when the command
  succeeds; an error is the one line on stderr and its exit code, with
  nothing on stdout (`pause`, `cancel`, `init`, `dlq show` alike). `engine
  validate --json` is a report: it prints its object, `ok` false and the
  problems listed, also when the workflow is invalid (exit 2).
* Tables fit the terminal's width: free text (messages) gives way first, and
  a value cut there ends in `…`; identifiers (item and run ids, what you type
  next) are never cut, and columns left out on a narrow terminal are named on
  stderr. When standard output is not a terminal (a pipe, a file) no value is
  ever cut, hashes and idempotency keys included (in tables, `tail` and
  `replay` alike).
* Tables show moments relative to now (`3m ago`) and lengths of time as
  `1m12s`; `--json` (or `--format json`) keeps RFC 3339 times and seconds.
* `engine run`, `resume` and `dlq retry` report progress on stderr: a live
  line on a terminal; elsewhere a plain line every `ENGINE_PROGRESS_INTERVAL`
  seconds (default 5) with done, failed, running, retrying, items/s and ETA.
  Both say `paused` while the run is paused (the ETA clock stops);
  `--no-progress` silences them.
"""


def _walk(command: click.Command, path: list[str]) -> list[tuple[list[str], click.Command]]:
    found = [(path, command)]
    if isinstance(command, click.Group):
        ctx = click.Context(command, info_name=" ".join(path))
        for name in sorted(command.list_commands(ctx)):
            sub = command.get_command(ctx, name)  # the top group's are loaded on use
            assert sub is not None, name
            found += _walk(sub, [*path, name])
    return found


def render_cli_reference() -> str:
    parts = [HEADER]
    for path, command in _walk(cli, ["engine"]):
        ctx = click.Context(
            command,
            info_name=" ".join(path),
            terminal_width=100,
            help_option_names=["-h", "--help"],
        )
        parts.append(f"## `{' '.join(path)}`\n\n```\n{command.get_help(ctx)}\n```\n")
    return "\n".join(parts)


def main() -> None:
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/cli.md")
    target.write_text(render_cli_reference())
    print(target)


if __name__ == "__main__":
    main()
