"""``engine pause|unpause|cancel``: steer a running engine from another terminal.

The request goes through :mod:`engine.run.control`: the state wanted is
written to ``control/control.json`` in the run directory; the engine holding
the run watches that file, records the request in the ledger (only the lock
holder writes it) and acts. The command waits for that record, so it
reports what the engine did, not what was asked. A run that no engine holds
can only be cancelled: ``run.aborted`` is then recorded under its lock.
"""

from __future__ import annotations

import click

from cli.app import Context, cli
from engine.run import control
from projections.replay import replay

__all__ = ["cancel_cmd", "pause_cmd", "unpause_cmd"]


@cli.command("pause")
@click.argument("run")
@click.pass_obj
def pause_cmd(obj: Context, run: str) -> None:
    """Stop starting attempts in a running run (running ones finish)."""
    ref = obj.run(run, allow_ledger_file=False)
    if control.holder(ref) is None:
        raise control.not_running(ref, "pause")
    if replay(ref.ledger).run.paused:
        click.echo(f"{ref.run_id} is paused already (engine unpause {ref.run_id} goes on)")
        return
    control.request(ref, {"paused": True}, by=control.who())
    click.echo(
        f"paused {ref.run_id}: no new attempts start; running ones finish "
        f"(engine unpause {ref.run_id} goes on)"
    )


@cli.command("unpause")
@click.argument("run")
@click.pass_obj
def unpause_cmd(obj: Context, run: str) -> None:
    """Let a paused run start attempts again."""
    ref = obj.run(run, allow_ledger_file=False)
    if control.holder(ref) is None:
        raise control.not_running(ref, "unpause")
    if not replay(ref.ledger).run.paused:
        click.echo(f"{ref.run_id} is not paused")
        return
    control.request(ref, {"paused": False}, by=control.who())
    click.echo(f"unpaused {ref.run_id}: attempts start again")


@cli.command("cancel")
@click.argument("run")
@click.option("--force", is_flag=True, help="Kill running attempts at once (no grace period).")
@click.pass_obj
def cancel_cmd(obj: Context, run: str, force: bool) -> None:
    """Stop a run: no new attempts, running ones terminated, `run.aborted`.

    A run no engine holds (interrupted) is marked aborted at once. Either way
    `engine resume RUN` can take it up again later.
    """
    ref = obj.run(run, allow_ledger_file=False)
    if control.holder(ref) is not None:
        control.request(ref, {"cancel": "force" if force else "graceful"}, by=control.who())
        click.echo(f"cancelled {ref.run_id}: running attempts were stopped")
        return
    control.cancel_unheld(ref, control.who())
    click.echo(f"cancelled {ref.run_id} (no engine was running it)")
