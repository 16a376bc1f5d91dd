"""The control protocol: steering a run from another process, both sides.

**Asking** (:func:`request`, for ``engine pause|unpause|cancel``): the
state wanted is written to ``control/control.json`` in the run directory,
atomically (a directory of its own, so that the engine's watch never wakes
for the ledger's appends): ``paused``, ``cancel``, with who asked (``by``)
and when (``at``). The asker then waits, watching the ledger (inotify,
through watchfiles), for the engine's answer: the record that says it was
done (``run.paused``, ``run.unpaused``, ``run.aborted``), for at most
:data:`CONFIRM_WAIT` seconds (:data:`CANCEL_WAIT` for a graceful cancel:
the attempts' grace period comes first).

**The engine** holding the run (:class:`ControlWatcher`) watches the file,
records each change in the ledger (only the lock holder writes it) and
acts: no new dispatches while paused; on cancel, no new dispatches, running
attempts terminated (at once with ``force``), and ``run.aborted``.

**Without an engine** the few changes that need none are written here, each
under the run's lock like any other writer's: :func:`cancel_unheld`
(``run.aborted`` for a run no engine holds), :func:`purge` (``dlq.purged``),
and :func:`ack` (``pattern.acknowledged``, in the home's patterns ledger).
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec

from engine.errors import NotConfirmed, NotRunning
from engine.exec.executor import AttemptRequest
from engine.home import RunRef
from engine.run.context import RunContext
from ledger.atomic import atomic_write, make_private_dir
from ledger.events import (
    DLQPurged,
    PatternAcknowledged,
    Record,
    RunAborted,
    RunCancelRequested,
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
    "ControlWatcher",
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
    current.update(change, by=by if by is not None else who(), at=time.time())
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


def patterns_ledger(home: Path) -> Path:
    """The home's ledger of acknowledged failure patterns."""
    return home / "patterns" / "ledger.ndjson"


def ack(home: Path, signature: str, note: str, *, link: str | None, by: str) -> None:
    """Record that the failures of ``signature`` were addressed (``note``; ``link``: a fix).

    In the home's patterns ledger (same format and guarantees as a run's).
    """
    path = patterns_ledger(home)
    with LedgerWriter.open(
        path.parent, "patterns", create=not path.exists(), command="engine patterns ack"
    ) as writer:
        writer.append(PatternAcknowledged(signature=signature, note=note, ref=link, by=by))


# --- the engine's side --------------------------------------------------------------


class _Watching:
    """The watch's stop event; its first check says the watch is up.

    watchfiles asks ``is_set()`` only once its watcher exists (inotify set on
    the directory), so from the first call on no change is missed.
    """

    def __init__(self, on_up: Callable[[], None]) -> None:
        self.stop = threading.Event()
        self._on_up: Callable[[], None] | None = on_up

    def is_set(self) -> bool:
        if self._on_up is not None:
            on_up, self._on_up = self._on_up, None
            on_up()
        return self.stop.is_set()


class ControlWatcher:
    """``control.json`` seen by the running engine: each change recorded, and acted on.

    A request is never lost, whatever the phase it lands in: the file is
    read as the engine starts and again once the watch is up (a request
    written in between is seen then), on every change the watch reports, and
    by the driver at each phase's start (:meth:`apply`, :meth:`unpaused`),
    which does not wait for the watch to report: a request written before a
    phase starts is acted on before that phase does anything.
    """

    def __init__(self, run: RunContext) -> None:
        self.run = run
        self.path = run.run_dir / CONTROL_FILE
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = _Watching(self._up)
        self._tasks: set[asyncio.Future[None]] = set()
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        """Set when the run's control state may have changed (a request, a signal)."""

    async def start(self) -> None:
        make_private_dir(self.path.parent)
        self._loop = loop = asyncio.get_running_loop()
        # A thread of its own, stopped and joined when the run ends: nothing
        # lingers after it (a later fork must find the process single-threaded).
        self._thread = threading.Thread(
            target=self._watch, args=(loop,), name="engine-control", daemon=True
        )
        self._thread.start()
        # A request made while this engine was starting (after it took the lock)
        # is acted on now; one left for an engine that is gone is not.
        await self.apply()

    async def stop(self) -> None:
        self._stop.stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5.0)
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def wake(self) -> None:
        """The run's state changed outside a request (a signal): :meth:`unpaused` looks again."""
        self._changed.set()

    def _up(self) -> None:
        """The watch is up (in its thread): read the file once more, for what came before."""
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                self._loop.call_soon_threadsafe(self._schedule)

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        import watchfiles  # noqa: PLC0415 - imported when a run starts, not by every command

        target = str(self.path)

        def only_control(_change: object, path: str) -> bool:
            return path == target

        try:
            for _changes in watchfiles.watch(
                self.path.parent,
                watch_filter=only_control,
                stop_event=self._stop,
                debounce=50,
                step=50,  # the watcher checks for the stop every step: not too often
                recursive=False,
                raise_interrupt=False,
            ):
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                    loop.call_soon_threadsafe(self._schedule)
        except Exception as exc:  # e.g. no inotify watch left: the phases still read the file
            line = (
                f"engine: cannot watch {self.path.parent} ({type(exc).__name__}: {exc}); "
                "pause and cancel requests are taken between steps only"
            )
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self.run.options.warn, line)

    def _schedule(self) -> None:
        task = asyncio.ensure_future(self.apply())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def unpaused(self) -> None:
        """Once the run is not paused, or is stopping (a signal, a cancel), return.

        The file is read first: a request written before this phase starts counts.
        """
        await self.apply()
        run = self.run
        while run.p.run.paused and not run.stopping:
            self._changed.clear()
            await self._changed.wait()

    async def apply(self) -> None:
        """Record and act on what ``control.json`` asks, where it differs from the ledger."""
        async with self._lock:
            wanted = self._wanted()
            if wanted is None:
                return
            by = str(wanted.get("by", ""))[:200]
            run = self.run
            state = run.p.run
            paused = bool(wanted.get("paused", False))
            cancel = wanted.get("cancel")
            cancelling = cancel in ("graceful", "force") and not state.cancel_requested
            pausing = paused != state.paused and not state.cancel_requested
            if not (pausing or cancelling):
                return
            scheduler = run.scheduler
            if scheduler is not None and (paused or cancelling):
                # Nothing is dispatched while the pause or the cancel is made
                # durable: no ``item.dispatched`` comes after its record.
                scheduler.held = True
            try:
                if pausing:
                    await run.append([RunPaused(by=by) if paused else RunUnpaused(by=by)])
                if cancelling:
                    force = cancel == "force"
                    await run.append([RunCancelRequested(by=by, force=force)])
                    run.halt("cancelled", force=force)
            finally:
                if scheduler is not None:
                    scheduler.held = False
                    scheduler.wake.set()
                self._changed.set()

    def _wanted(self) -> dict[str, Any] | None:
        """What ``control.json`` asks of this engine; None when nothing (or an earlier one)."""
        try:
            wanted = msgspec.json.decode(self.path.read_bytes())
        except (OSError, msgspec.DecodeError):
            return None
        if not isinstance(wanted, dict):
            return None
        at = wanted.get("at")
        if not isinstance(at, int | float) or at < self.run.began:
            return None  # asked of an earlier engine
        return wanted
