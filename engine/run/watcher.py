"""The engine's side of the control protocol: ``control.json`` watched, each change recorded.

The asking side, the file's form and the waits are in :mod:`engine.run.control`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any

import msgspec

from engine.run.context import RunContext
from engine.run.control import CONTROL_FILE
from ledger.atomic import make_private_dir
from ledger.events import RunCancelRequested, RunPaused, RunUnpaused

__all__ = ["ControlWatcher"]


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
            run = self.run
            state = run.p.run
            paused = bool(wanted.get("paused", state.paused))
            cancel = wanted.get("cancel")
            cancelling = cancel in ("graceful", "force") and not state.cancel_requested
            pausing = paused != state.paused and not state.cancel_requested
            if not (pausing or cancelling):
                return
            by = str(wanted.get("cancel_by" if cancelling else "paused_by", ""))[:200]
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

    def _wanted(self) -> dict[str, Any]:
        """What ``control.json`` asks of this engine: each key asked since it began."""
        try:
            asked = msgspec.json.decode(self.path.read_bytes())
        except (OSError, msgspec.DecodeError):
            return {}
        if not isinstance(asked, dict):
            return {}
        wanted: dict[str, Any] = {}
        for key in ("paused", "cancel"):
            at = asked.get(f"{key}_at")
            if key in asked and isinstance(at, int | float) and at >= self.run.began:
                wanted[key] = asked[key]  # else asked of an earlier engine, or never
                wanted[f"{key}_by"] = asked.get(f"{key}_by", "")
        return wanted
