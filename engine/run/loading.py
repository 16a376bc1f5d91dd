"""Work that runs beside the event loop, in threads that never hold up the engine's exit.

A signal or a cancel must end the engine within a second in every phase,
also while it hashes the workspace or loads the map's items; see
:func:`in_thread` and :func:`stoppable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any

from engine.items.selection import LoadCancelled, LoadStop

__all__ = ["LOAD_STOP_GRACE", "in_thread", "stoppable"]

LOAD_STOP_GRACE = 5.0
"""Seconds a stopped load of the items may take to notice the stop and end."""


def in_thread(work: Callable[[], Any]) -> asyncio.Future[Any]:
    """``work()`` in a daemon thread of its own; its result as a future of the running loop.

    Not a thread of asyncio's default pool: ``asyncio.run`` waits for those
    at the end, so a signal that arrives during a long step (hashing a large
    workspace, decoding a large document) would not end the engine until the
    step is done. An abandoned thread ends with the process.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Any] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if done.done():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)

    def target() -> None:
        try:
            result, error = work(), None
        except BaseException as exc:  # handed to the awaiting task
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=target, name="engine-worker", daemon=True).start()
    return done


async def stoppable(load: Callable[[], Any], stop: LoadStop) -> Any:
    """``load()`` in a thread of its own, ended as soon as ``stop`` is cancelled.

    The load checks the stop every few hundred items (and its command is
    killed), so it ends within a fraction of a second; it is waited for, up
    to :data:`LOAD_STOP_GRACE`, because a thread still inside a native
    library (RE2) when the interpreter exits can abort the process.
    """
    done = in_thread(load)
    while not done.done():
        await asyncio.wait([done], timeout=0.05)
        if stop.event.is_set():
            await asyncio.wait([done], timeout=LOAD_STOP_GRACE)
            if done.done() and not done.cancelled():
                done.exception()  # retrieved: the load was stopped
            raise LoadCancelled
    return done.result()
