"""``engine pause|unpause|cancel``: steer a running engine from another terminal.

The command writes what the user wants to ``control/control.json`` in the
run directory; the engine holding the run watches that file, records the
request in the ledger (only the lock holder writes it) and acts. The
command then waits for that record, so it reports what the engine did, not
what was asked. A run that no engine holds can only be cancelled: the
command then takes the lock itself and records ``run.aborted``.
"""

from __future__ import annotations

import getpass
import os
import socket
import time

import click
import msgspec

from cli.app import Context, cli
from engine.errors import NotConfirmed, NotRunning
from engine.home import RunRef
from ledger.atomic import atomic_write, make_private_dir
from ledger.events import RunAborted
from ledger.lock import RunLock
from ledger.writer import LedgerWriter
from projections.replay import replay

__all__ = ["cancel_cmd", "pause_cmd", "unpause_cmd"]

CONTROL = "control/control.json"
CONFIRM_WAIT = 10.0


def _who() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()} pid {os.getpid()}"


def _request(ref: RunRef, change: dict[str, object], wanted: tuple[bytes, ...], wait: float) -> str:
    """Ask the live engine; return the event type it recorded in answer."""
    ledger = ref.ledger
    start = ledger.stat().st_size
    path = ref.run_dir / CONTROL
    try:
        current = msgspec.json.decode(path.read_bytes())
        if not isinstance(current, dict):
            current = {}
    except (OSError, msgspec.DecodeError):
        current = {}
    current.update(change, by=_who(), at=time.time())
    make_private_dir(path.parent)
    atomic_write(path, msgspec.json.encode(current))
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        with open(ledger, "rb") as f:
            f.seek(start)
            new = f.read()
        for kind in wanted:
            if b'"type":"' + kind + b'"' in new:
                return kind.decode()
        time.sleep(0.05)
    raise NotConfirmed(
        f"{ref.run_id}: asked, but the engine did not confirm within {wait:.0f}s",
        run_id=ref.run_id,
        waited=wait,
        hint=f"check with: engine status {ref.run_id}; engine tail {ref.run_id}",
    )


def _live(ref: RunRef) -> dict[str, object] | None:
    return RunLock(ref.run_dir).probe()


def _not_running(ref: RunRef, what: str) -> NotRunning:
    status = replay(ref.ledger).run.status
    shown = "interrupted" if status in ("running", "created") else status
    return NotRunning(
        f"{ref.run_id} is not running (it is {shown}): there is nothing to {what}",
        run_id=ref.run_id,
        status=shown,
        hint=f"engine resume {ref.run_id} runs it again"
        if shown in ("interrupted", "aborted", "failed")
        else "",
    )


@cli.command("pause")
@click.argument("run")
@click.pass_obj
def pause_cmd(obj: Context, run: str) -> None:
    """Stop starting attempts in a running run (running ones finish)."""
    ref = obj.run(run, allow_ledger_file=False)
    if _live(ref) is None:
        raise _not_running(ref, "pause")
    if replay(ref.ledger).run.paused:
        click.echo(f"{ref.run_id} is paused already (engine unpause {ref.run_id} goes on)")
        return
    _request(ref, {"paused": True}, (b"run.paused",), CONFIRM_WAIT)
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
    if _live(ref) is None:
        raise _not_running(ref, "unpause")
    if not replay(ref.ledger).run.paused:
        click.echo(f"{ref.run_id} is not paused")
        return
    _request(ref, {"paused": False}, (b"run.unpaused",), CONFIRM_WAIT)
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
    if _live(ref) is not None:
        # Terminating attempts takes up to their grace period (5 s) unless forced.
        _request(
            ref,
            {"cancel": "force" if force else "graceful"},
            (b"run.aborted",),
            CONFIRM_WAIT + (0 if force else 10),
        )
        click.echo(f"cancelled {ref.run_id}: running attempts were stopped")
        return
    p = replay(ref.ledger)
    if p.run.status in ("completed", "failed", "aborted"):
        raise NotRunning(
            f"{ref.run_id} is {p.run.status} already: there is nothing to cancel",
            run_id=ref.run_id,
            status=p.run.status,
        )
    writer = LedgerWriter.open(ref.run_dir, p.run.run_id or ref.run_id, command="engine cancel")
    try:
        writer.append(RunAborted(reason=f"cancelled by {_who()} while no engine ran it"))
    finally:
        writer.close()
    click.echo(f"cancelled {ref.run_id} (no engine was running it)")
