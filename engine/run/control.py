"""The control protocol, the engine's side: ``control.json`` watched and acted on.

``engine pause|unpause|cancel`` write the state wanted to
``control/control.json`` in the run directory (atomically; a directory of
its own, so that the watch never wakes for the ledger's appends): ``paused``,
``cancel``, with who asked (``by``) and when (``at``). The engine holding
the run (:class:`ControlWatcher`) watches the file (inotify, through
watchfiles), records each change in the ledger (only the lock holder writes
it) and acts: no new dispatches while paused; on cancel, no new dispatches,
running attempts terminated (at once with ``force``), and ``run.aborted``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

import msgspec

from engine.run.context import RunContext
from ledger.atomic import make_private_dir
from ledger.events import RunCancelRequested, RunPaused, RunUnpaused

__all__ = ["CONTROL_FILE", "ControlWatcher"]

CONTROL_FILE = "control/control.json"
"""The request, relative to the run directory."""


# --- the engine's side --------------------------------------------------------------


class ControlWatcher:
    """``control.json`` seen by the running engine: each change recorded, and acted on."""

    def __init__(self, run: RunContext) -> None:
        self.run = run
        self.path = run.run_dir / CONTROL_FILE
        self._thread: threading.Thread | None = None
        self._stop_event = threading.Event()
        self._tasks: set[asyncio.Future[None]] = set()
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        make_private_dir(self.path.parent)
        loop = asyncio.get_running_loop()
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
        self._stop_event.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5.0)
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        import watchfiles  # noqa: PLC0415 - imported when a run starts, not by every command

        target = str(self.path)

        def only_control(_change: object, path: str) -> bool:
            return path == target

        for _changes in watchfiles.watch(
            self.path.parent,
            watch_filter=only_control,
            stop_event=self._stop_event,
            debounce=50,
            step=50,  # the watcher checks for the stop every step: not too often
            recursive=False,
            raise_interrupt=False,
        ):
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._schedule)

    def _schedule(self) -> None:
        task = asyncio.ensure_future(self.apply())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def apply(self) -> None:
        """Record and act on what ``control.json`` asks, where it differs from the ledger."""
        async with self._lock:
            try:
                wanted = msgspec.json.decode(self.path.read_bytes())
            except (OSError, msgspec.DecodeError):
                return
            if not isinstance(wanted, dict):
                return
            at = wanted.get("at")
            if not isinstance(at, int | float) or at < self.run.began:
                return  # asked of an earlier engine
            by = str(wanted.get("by", ""))[:200]
            run = self.run
            state = run.p.run
            paused = bool(wanted.get("paused", False))
            if paused != state.paused and not state.cancel_requested:
                await run.append([RunPaused(by=by) if paused else RunUnpaused(by=by)])
                if run.scheduler is not None:
                    run.scheduler.wake.set()
            cancel = wanted.get("cancel")
            if cancel in ("graceful", "force") and not state.cancel_requested:
                force = cancel == "force"
                await run.append([RunCancelRequested(by=by, force=force)])
                run.halt("cancelled", force=force)
