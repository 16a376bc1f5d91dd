"""``engine pause|unpause|cancel``: steer a running engine from another terminal.

The request goes through :mod:`engine.run.control`: the state wanted is
written to ``control/control.json`` in the run directory; the engine holding
the run watches that file, records the request in the ledger (only the lock
holder writes it) and acts. The command waits for that record, so it
reports what the engine did, not what was asked. A run that no engine holds
can only be cancelled: ``run.aborted`` is then recorded under its lock.

With ``--json`` each prints one JSON object (:class:`ControlAnswer`) on
stdout when it succeeds (exit 0); an error is, as everywhere, the one line on
stderr and its exit code, with nothing on stdout.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping

import click
import msgspec

from cli.app import Context, cli, echo_json
from engine.home import RunRef
from engine.run import control
from ledger.events import Record
from projections.replay import replay

__all__ = ["ControlAnswer", "cancel_cmd", "pause_cmd", "unpause_cmd"]


class ControlAnswer(msgspec.Struct, kw_only=True):
    """What ``engine pause|unpause|cancel --json`` prints."""

    run_id: str
    asked: str
    """``pause``, ``unpause`` or ``cancel``."""
    force: bool = False
    """``cancel --force``: running attempts killed at once."""
    confirmed: bool
    """The change is recorded in the run's ledger (or was so already)."""
    record: str | None = None
    """The type of the record that confirmed it (``run.paused``, ``run.unpaused``,
    ``run.aborted``); None when nothing was recorded."""
    seq: int | None = None
    """That record's seq in the run's ledger."""
    already: bool = False
    """Nothing was asked: the run was so already (paused, not paused, or aborted)."""
    message: str
    """What the command says."""


JSON = click.option("--json", "as_json", is_flag=True, help="Print the answer as one JSON object.")


def _answer(
    obj: Context,
    run: str,
    asked: str,
    as_json: bool,
    act: Callable[[ControlAnswer], None],
    *,
    force: bool = False,
) -> None:
    """Run ``act`` (which fills in the answer, or raises the error), then print the answer."""
    answer = ControlAnswer(run_id=run, asked=asked, force=force, confirmed=False, message="")
    act(answer)
    if as_json:
        echo_json(answer)
    else:
        click.echo(answer.message)


def _started() -> float | None:
    """When this process started, on the :func:`time.monotonic` clock (None: not known).

    A request's wait is counted from it: ``engine cancel`` gives up when the
    stated time has passed since it was run, its own start-up included.
    """
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        ticks = int(stat[stat.rfind(b")") + 2 :].split()[19])  # field 22: starttime
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    return time.monotonic() - max(0.0, age)


def _request(ref: RunRef, change: Mapping[str, object]) -> Record:
    return control.request(ref, change, since=_started(), by=control.who())


def _confirmed(answer: ControlAnswer, record: Record, message: str) -> None:
    answer.confirmed, answer.record, answer.seq, answer.message = (
        True,
        record.type,
        record.seq,
        message,
    )


_EXITS = (
    "Exit 0 once recorded (or when the run is so already); 1 if the engine did not "
    "confirm in time; 2 if no engine runs it, or the run ends (or its engine stops) "
    "before the engine takes the request."
)

_WAITS = {
    "confirm": f"{control.CONFIRM_WAIT:g} s",
    "cancel": f"{control.CANCEL_WAIT:g} s",
    "grace": f"{control.KILL_GRACE:g} s",
}


@cli.command(
    "pause",
    help="Stop starting attempts and steps in a running run (running ones finish).\n\n"
    "Waits for the engine to record `run.paused`: {confirm} at most. A paused run is "
    "left as it is (exit 0, `already` in --json).\n\n".format(**_WAITS)
    + _EXITS,
)
@click.argument("run")
@JSON
@click.pass_obj
def pause_cmd(obj: Context, run: str, as_json: bool) -> None:

    def act(answer: ControlAnswer) -> None:
        ref = obj.run(run, allow_ledger_file=False)
        answer.run_id = ref.run_id
        if control.holder(ref) is None:
            raise control.not_running(ref, "pause")
        if replay(ref.ledger).run.paused:
            answer.confirmed = answer.already = True
            answer.message = f"{ref.run_id} is paused already (engine unpause {ref.run_id} goes on)"
            return
        record = _request(ref, {"paused": True})
        _confirmed(
            answer,
            record,
            f"paused {ref.run_id}: no new attempts start; running ones finish "
            f"(engine unpause {ref.run_id} goes on)",
        )

    _answer(obj, run, "pause", as_json, act)


@cli.command(
    "unpause",
    help="Let a paused run start attempts and steps again.\n\n"
    "Waits for the engine to record `run.unpaused`: {confirm} at most. A run that is not "
    "paused is left as it is (exit 0, `already` in --json).\n\n".format(**_WAITS)
    + _EXITS,
)
@click.argument("run")
@JSON
@click.pass_obj
def unpause_cmd(obj: Context, run: str, as_json: bool) -> None:

    def act(answer: ControlAnswer) -> None:
        ref = obj.run(run, allow_ledger_file=False)
        answer.run_id = ref.run_id
        if control.holder(ref) is None:
            raise control.not_running(ref, "unpause")
        if not replay(ref.ledger).run.paused:
            answer.confirmed = answer.already = True
            answer.message = f"{ref.run_id} is not paused"
            return
        record = _request(ref, {"paused": False})
        _confirmed(answer, record, f"unpaused {ref.run_id}: attempts start again")

    _answer(obj, run, "unpause", as_json, act)


@cli.command(
    "cancel",
    help="Stop a run: no new attempts, running ones terminated, `run.aborted`.\n\n"
    "Waits for the engine to record `run.aborted`: {cancel} at most (running attempts "
    "get a {grace} grace period first), {confirm} with --force. A run no engine holds "
    "(interrupted) is marked aborted at once; an aborted one is left as it is (exit 0, "
    "`already` in --json). Either way `engine resume RUN` can take it up again later.\n\n"
    "Exit 0 once aborted (or when it was already); 1 if the engine did not confirm in "
    "time; 2 if the run has completed or failed, or ends (or its engine stops) before "
    "the engine takes the request.".format(**_WAITS),
)
@click.argument("run")
@click.option("--force", is_flag=True, help="Kill running attempts at once (no grace period).")
@JSON
@click.pass_obj
def cancel_cmd(obj: Context, run: str, force: bool, as_json: bool) -> None:

    def act(answer: ControlAnswer) -> None:
        ref = obj.run(run, allow_ledger_file=False)
        answer.run_id = ref.run_id
        if control.holder(ref) is not None:
            change = {"cancel": "force" if force else "graceful"}
            record = _request(ref, change)
            _confirmed(answer, record, f"cancelled {ref.run_id}: running attempts were stopped")
            return
        if replay(ref.ledger).run.status == "aborted":
            answer.confirmed = answer.already = True
            answer.message = f"{ref.run_id} is aborted already (engine resume {ref.run_id} goes on)"
            return
        record = control.cancel_unheld(ref, control.who())
        _confirmed(answer, record, f"cancelled {ref.run_id} (no engine was running it)")

    _answer(obj, run, "cancel", as_json, act, force=force)
