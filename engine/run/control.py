"""The control protocol: steering a run from another process, both sides.

**Asking** (:func:`request`, for ``engine pause|unpause|cancel``): the
state wanted is written to ``control/control.json`` in the run directory,
atomically (a directory of its own, so that the engine's watch never wakes
for the ledger's appends): ``paused`` and ``cancel``, each with who asked
(``paused_by``, ``cancel_by``) and when (``paused_at``, ``cancel_at``). An
engine takes only what was asked since it started: a cancel left for an
engine that died is not revived by a later pause. The asker then waits,
watching the ledger (inotify, through watchfiles), for the engine's answer:
the record that says it was done (``run.paused``, ``run.unpaused``,
``run.aborted``), for at most
:data:`CONFIRM_WAIT` seconds (:data:`CANCEL_WAIT` for a graceful cancel:
the attempts' grace period comes first).

**The engine** holding the run watches the file
(:class:`engine.run.watcher.ControlWatcher`), records each change in the
ledger (only the lock holder writes it) and acts: no new dispatches while
paused; on cancel, no new dispatches, running attempts terminated (at once
with ``force``), and ``run.aborted``.

**Without an engine** the few changes that need none are written here, each
under the run's lock like any other writer's: :func:`cancel_unheld`
(``run.aborted`` for a run no engine holds), :func:`purge` (``dlq.purged``),
and :func:`ack` (``pattern.acknowledged``, in the home's patterns ledger).
"""

from __future__ import annotations

import getpass
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec

from engine.errors import NotConfirmed, NotRunning
from engine.exec.executor import AttemptRequest
from engine.home import RunRef, patterns_ledger
from ledger.atomic import atomic_write, make_private_dir
from ledger.events import (
    DLQPurged,
    PatternAcknowledged,
    Record,
    RunAborted,
    RunCompleted,
    RunFailed,
    RunPaused,
    RunUnpaused,
    record_decoder,
)
from ledger.lock import RunLock
from ledger.reader import LedgerReader
from ledger.writer import LedgerWriter
from projections.replay import replay

__all__ = [
    "CANCEL_WAIT",
    "CONFIRM_WAIT",
    "CONTROL_FILE",
    "ENDINGS",
    "KILL_GRACE",
    "ack",
    "asked",
    "cancel_unheld",
    "default_wait",
    "holder",
    "not_running",
    "patterns_ledger",
    "purge",
    "request",
    "who",
]

CONTROL_FILE = "control/control.json"
"""The request, relative to the run directory."""

CONFIRM_WAIT = 10.0
"""Seconds a request waits for the engine's answer (docs/operations.md says so)."""

CANCEL_WAIT = 20.0
"""Seconds a graceful cancel waits: running attempts get their grace period (5 s) first."""

KILL_GRACE: float = AttemptRequest.kill_grace
"""Seconds between SIGTERM and SIGKILL when a cancel stops an attempt (not with ``force``)."""

_WATCH_TIMEOUT_MS = 200
"""The ledger's watch wakes at least this often (in ms) to see the deadline pass."""


def who() -> str:
    """This process, as a request names who asked: ``user@host pid N``."""
    return f"{getpass.getuser()}@{socket.gethostname()} pid {os.getpid()}"


def holder(ref: RunRef) -> dict[str, Any] | None:
    """The live engine holding the run (its lock's details), or None: nobody runs it."""
    return RunLock(ref.run_dir).probe()


def not_running(ref: RunRef, what: str) -> NotRunning:
    """The error for a request (``what``: pause, unpause) no engine is there to answer."""
    return _not_running(
        ref, "{run} is not running (it is {status}): there is nothing to {what}", what
    )


def _not_running(ref: RunRef, text: str, what: str) -> NotRunning:
    status = replay(ref.ledger).run.status
    shown = "interrupted" if status in ("running", "created") else status
    return NotRunning(
        text.format(run=ref.run_id, status=shown, what=what),
        run_id=ref.run_id,
        status=shown,
        hint=f"engine resume {ref.run_id} runs it again"
        if shown in ("interrupted", "aborted", "failed")
        else "",
    )


# --- asking a live engine -----------------------------------------------------------

ENDINGS = frozenset({RunCompleted.TYPE, RunFailed.TYPE, RunAborted.TYPE})
"""The records after which the engine answers nothing more: it has ended the run."""


def _answers(change: Mapping[str, object]) -> frozenset[str]:
    """The record types that answer a change: the engine did it."""
    wanted: set[str] = set()
    if "paused" in change:
        wanted.add(RunPaused.TYPE if change["paused"] else RunUnpaused.TYPE)
    if change.get("cancel") in ("graceful", "force"):
        wanted.add(RunAborted.TYPE)
    if not wanted:
        raise ValueError(f"not a control request: {dict(change)!r}")
    return frozenset(wanted)


def asked(change: Mapping[str, object]) -> str:
    """What a change asks, in the words of the command: pause, unpause or cancel."""
    if "paused" in change:
        return "pause" if change["paused"] else "unpause"
    return "cancel"


def default_wait(change: Mapping[str, object]) -> float:
    """Seconds a request waits by default: :data:`CANCEL_WAIT` for a graceful cancel,
    else :data:`CONFIRM_WAIT`."""
    return CANCEL_WAIT if change.get("cancel") == "graceful" else CONFIRM_WAIT


def request(
    ref: RunRef,
    change: Mapping[str, object],
    *,
    wait: float | None = None,
    since: float | None = None,
    by: str | None = None,
) -> Record:
    """Ask the engine running ``ref`` for ``change``; the record it answered with.

    ``change``: ``{"paused": bool}`` or ``{"cancel": "graceful" | "force"}``.
    ``wait``: seconds to wait for the answer (by default :func:`default_wait`),
    counted from ``since`` (a :func:`time.monotonic` reading: when the asking
    began, e.g. the asking process's start; by default as the request is
    written); then :class:`NotConfirmed`.
    ``by``: who asks (by default this process, :func:`who`).
    :class:`NotRunning` when the run ends, or its engine goes, before it answered.
    """
    wanted = _answers(change)
    if wait is None:
        wait = default_wait(change)
    ledger = ref.ledger.resolve()
    start = ledger.stat().st_size  # the answer comes after what is there now
    path = ref.run_dir / CONTROL_FILE
    try:
        current = msgspec.json.decode(path.read_bytes())
        if not isinstance(current, dict):
            current = {}
    except (OSError, msgspec.DecodeError):
        current = {}
    current.pop("by", None)  # the one-time form of earlier versions
    current.pop("at", None)
    asker, now = by if by is not None else who(), time.time()
    for key, value in change.items():
        current.update({key: value, f"{key}_by": asker, f"{key}_at": now})
    make_private_dir(path.parent)
    atomic_write(path, msgspec.json.encode(current))
    left = wait - (time.monotonic() - since if since is not None else 0.0)
    answer = _await_answer(
        ledger, start, wanted | ENDINGS, left, alive=lambda: holder(ref) is not None
    )
    if answer is not None and answer.type in wanted:
        return answer
    if answer is not None or holder(ref) is None:  # the run ended, or its engine went
        text = "{run} ended ({status}) before its engine took the {what} request"
        raise _not_running(ref, text, asked(change))
    raise NotConfirmed(
        f"{ref.run_id}: asked, but the engine did not confirm within {wait:g}s",
        run_id=ref.run_id,
        waited=wait,
        hint=f"check with: engine status {ref.run_id}; engine tail {ref.run_id}",
    )


class _Deadline:
    """A watch's stop event: set once ``wait`` seconds have passed (checked every step)."""

    def __init__(self, wait: float) -> None:
        self.at = time.monotonic() + wait

    def is_set(self) -> bool:
        return time.monotonic() >= self.at


def _await_answer(
    ledger: Path,
    start: int,
    wanted: frozenset[str],
    wait: float,
    *,
    alive: Callable[[], bool] = lambda: True,
) -> Record | None:
    """The first record of a ``wanted`` type appended after byte ``start``, within ``wait`` s.

    The ledger is read when the watch reports it changed, and once as the
    watch is up (an answer recorded before it was is not missed). None at
    the deadline, or as soon as ``alive()`` (asked a few times a second)
    says the engine is gone.
    """
    import watchfiles  # noqa: PLC0415 - only a request waits; most commands never do

    deadline = _Deadline(wait)
    target = str(ledger)

    def only_ledger(_change: object, path: str) -> bool:
        return path == target

    offset = start
    first = True
    for changes in watchfiles.watch(
        ledger.parent,
        watch_filter=only_ledger,
        debounce=20,
        step=10,
        stop_event=deadline,  # the watch ends within a step of the deadline
        rust_timeout=_WATCH_TIMEOUT_MS,
        yield_on_timeout=True,
        recursive=False,
    ):
        gone = not changes and not first and not alive()
        if changes or first or gone:
            found, offset = _find(ledger, offset, wanted)
            if found is not None or gone:
                return found
        first = False
    found, _ = _find(ledger, offset, wanted)  # what came with the deadline
    return found


def _find(ledger: Path, offset: int, wanted: frozenset[str]) -> tuple[Record | None, int]:
    """A ``wanted`` record among the complete lines after ``offset``; where they end."""
    with open(ledger, "rb") as f:
        f.seek(offset)
        data = f.read()
    end = data.rfind(b"\n") + 1  # a line still being written is read next time
    at = offset
    for line in data[:end].splitlines(keepends=True):
        at += len(line)
        try:
            record = record_decoder.decode(line)
        except (msgspec.DecodeError, UnicodeDecodeError):
            continue  # not for a request to judge: audit verify does
        if record.type in wanted:
            return record, at
    return None, offset + end


# --- changes that need no engine ----------------------------------------------------


def _recorded_run_id(ref: RunRef) -> str:
    """The run id the ledger's records carry (its first record's; else the directory's name)."""
    first = next(iter(LedgerReader(ref.ledger).records()), None)
    return first.run if first is not None and first.run else ref.run_id


def cancel_unheld(ref: RunRef, by: str) -> Record:
    """Abort a run no engine holds: its ``run.aborted`` record (resumable like any aborted run).

    :class:`NotRunning` when it is completed, failed or aborted already;
    :class:`~ledger.errors.LedgerLocked` when an engine took it up meanwhile.
    """
    p = replay(ref.ledger)
    if p.run.status in ("completed", "failed", "aborted"):
        raise NotRunning(
            f"{ref.run_id} is {p.run.status} already: there is nothing to cancel",
            run_id=ref.run_id,
            status=p.run.status,
        )
    with LedgerWriter.open(
        ref.run_dir, p.run.run_id or ref.run_id, command="engine cancel"
    ) as writer:
        return writer.append(RunAborted(reason=f"cancelled by {by} while no engine ran it"))


def purge(ref: RunRef, items: Sequence[str], by: str) -> None:
    """Hide dead items from the DLQ: one ``dlq.purged`` (no ledger line is deleted).

    Written under the run's lock: :class:`~ledger.errors.LedgerLocked` when an engine holds it.
    """
    with LedgerWriter.open(ref.run_dir, _recorded_run_id(ref), command="engine dlq purge") as w:
        w.append(DLQPurged(items=list(items), by=by))


def ack(home: Path, signature: str, note: str, *, link: str | None, by: str) -> None:
    """Record that the failures of ``signature`` were addressed (``note``; ``link``: a fix).

    In the home's patterns ledger (same format and guarantees as a run's).
    """
    path = patterns_ledger(home)
    with LedgerWriter.open(
        path.parent, "patterns", create=not path.exists(), command="engine patterns ack"
    ) as writer:
        writer.append(PatternAcknowledged(signature=signature, note=note, ref=link, by=by))
