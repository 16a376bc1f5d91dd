"""Commands that answer where runs are: status, runs.

They import only what reading a ledger needs: not the workflow spec, the
executors, nor rich's live display (``tests/test_cli_imports.py``).
"""

from __future__ import annotations

import time

import click

from cli.app import Context, cli, echo_json
from cli.render import human_duration, human_time, print_table
from cli.worktree_cmds import branch_line
from engine.home import list_runs
from engine.views.status import RunStatusView, agents_lines, items_line, status_view

__all__ = ["RUN_STATUSES", "runs_cmd", "status_cmd"]


@cli.command("status")
@click.argument("run", default="latest")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.pass_obj
def status_cmd(obj: Context, run: str, as_json: bool) -> None:
    """Show a run's status and item counts (RUN defaults to `latest`).

    `took` is the time engines spent on the run, as `engine stats` counts its
    wall time: each engine's session summed, so the time between a crash and
    its resume is not counted; a run an engine holds counts to now. With
    map.isolation: worktree, `branch` names the run's branch, how many items
    it holds and how many attempt worktrees are kept (JSON: `isolation`).
    Running items are listed with their agent's turns, last tool and spend
    (claude-stream-json; JSON: `running`), then a usage limit's reset waited
    for (`waiting`) and the spend against the budget (`budget`).
    """
    view = status_view(obj.run(run))
    if as_json:
        echo_json(view)
        return
    click.echo(f"run       {view.run_id}  workflow {view.workflow or '-'}  status {view.status}")
    click.echo(_times_line(view))
    click.echo(items_line(view))
    if view.reason:
        click.echo(f"reason    {view.reason}")
    if view.paused:
        click.echo(f"paused    no new attempts start (engine unpause {view.run_id} goes on)")
    if view.isolation is not None:
        click.echo(branch_line(view.isolation, view.run_id))
    click.echo("".join(f"{line}\n" for line in agents_lines(view)), nl=False)
    click.echo(f"dir       {view.run_dir}")


def _times_line(view: RunStatusView) -> str:
    """When a run started and finished, for people (``--json`` has the RFC 3339 times)."""
    started = view.started_at
    line = f"started   {human_time(started)}" + (f" ({started})" if started else "")
    line += f"  finished {human_time(view.finished_at)}"
    if view.took_s is not None:
        line += f"  took {human_duration(view.took_s)}"
    return line


RUN_STATUSES = ("created", "running", "paused", "interrupted", "completed", "failed", "aborted")


@cli.command("runs")
@click.option("--json", "as_json", is_flag=True, help="Print the runs as JSON.")
@click.option(
    "-n",
    "--limit",
    type=click.IntRange(min=1),
    help="Only the newest N runs (after --status).",
)
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(RUN_STATUSES),
    help="Only runs in this status (repeatable); paused: its engine starts nothing until unpaused.",
)
@click.pass_obj
def runs_cmd(obj: Context, as_json: bool, limit: int | None, statuses: tuple[str, ...]) -> None:
    """List the runs under the home directory, oldest first.

    TOOK is the time engines spent on each run, as `engine status` shows it
    (sessions summed; an interrupted run's ends at its last record).
    """
    views = _run_views(obj, set(statuses), limit)
    if as_json:
        echo_json(views)
        return
    if not views:
        click.echo(f"no runs under {obj.home / 'runs'}" + (" match" if statuses else ""))
        return
    now = time.time()
    rows = [
        [
            v.run_id,
            v.status,
            f"{v.items.total:,}",
            f"{v.items.succeeded + v.items.skipped:,}",
            f"{v.items.dead:,}",
            human_time(v.started_at, now),
            human_duration(v.took_s),
        ]
        for v in views
    ]
    columns = ["RUN", "STATUS", "ITEMS", "DONE", "DEAD", "STARTED", "TOOK"]
    print_table(columns, rows, keep={"RUN"}, right={"ITEMS", "DONE", "DEAD", "TOOK"})


def _run_views(obj: Context, statuses: set[str], limit: int | None) -> list[RunStatusView]:
    """The runs' views, oldest first: those in one of ``statuses`` (all when empty), the
    newest ``limit`` of them."""
    refs = list_runs(obj.home)
    if limit is not None and not statuses:
        refs = refs[-limit:]  # only those are read
    views = [status_view(ref) for ref in refs]
    views = [v for v in views if not statuses or v.status in statuses]
    return views[-limit:] if limit is not None else views
