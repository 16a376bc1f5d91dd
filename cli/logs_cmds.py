"""``engine logs``: what an item's attempt printed, read or followed."""

from __future__ import annotations

import sys

import click

from cli.app import Context, cli, stdout_closed
from engine.views.logs import AttemptLog, find_log, follow_log, read_log

__all__ = ["logs_cmd"]


@cli.command("logs")
@click.argument("run")
@click.argument("item")
@click.option(
    "--attempt",
    type=click.IntRange(min=1),
    metavar="N",
    help="This attempt (1, 2, ...) [default: the last one].",
)
@click.option("--stderr", "use_stderr", is_flag=True, help="Print its stderr instead of stdout.")
@click.option(
    "-f",
    "--follow",
    is_flag=True,
    help="Follow a running attempt's output; exit once the attempt ends.",
)
@click.pass_obj
def logs_cmd(
    obj: Context, run: str, item: str, attempt: int | None, use_stderr: bool, follow: bool
) -> None:
    """Print what an item's attempt wrote to stdout (or stderr).

    RUN is a run id, `latest`, or a path to a run directory; ITEM is the
    item's id, as `engine tail` and `engine dlq list` show it. A running
    attempt prints what it has written so far, and with -f goes on until
    the attempt ends. An attempt cut short by a killed engine prints what it
    wrote until then; `engine resume` keeps that log under its final name.
    Exit 2 for an unknown item or attempt, or an item with no attempt yet.
    """
    ref = obj.run(run, allow_ledger_file=False)
    log = find_log(ref, item, attempt=attempt, stream="stderr" if use_stderr else "stdout")
    chunks = follow_log(ref, log) if follow else read_log(log)
    out = sys.stdout.buffer
    printed = False
    try:
        for chunk in chunks:
            out.write(chunk)
            out.flush()
            printed = True
    except BrokenPipeError:  # the reader went away (`| head`): that is the end
        stdout_closed()
    except KeyboardInterrupt:  # -f stopped by hand
        return
    if follow and log.state == "running":
        log = find_log(ref, item, attempt=log.attempt, stream=log.stream)  # how it ended
    _note(ref.run_id, log, printed=printed, followed=follow)


def _note(run_id: str, log: AttemptLog, *, printed: bool, followed: bool) -> None:
    """A line on stderr when what was printed is not the attempt's whole log, or nothing."""
    which = f"attempt {log.attempt} of item {log.item!r}"
    if log.state == "interrupted":
        click.echo(
            f"engine: {which} was cut short: its engine stopped before it ended "
            f"(`engine resume {run_id}` records it, keeps this log and runs the item again)",
            err=True,
        )
    elif log.state == "running" and not followed:
        click.echo(f"engine: {which} is running: its output so far (-f follows it)", err=True)
    elif log.state == "ended" and not printed:
        click.echo(f"engine: {which} wrote nothing to {log.stream}", err=True)
