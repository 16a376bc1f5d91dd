"""The map's items still being recorded while the scheduler dispatches, and the plan types.

A feed records the items the ledger does not have yet, batch by batch,
beside dispatch (:mod:`engine.run.enqueue` makes it). The scheduler starts
it with its loop, is woken after each batch, and ends the map only once the
feed is done (``map.enqueued`` recorded) or the map stops; a stopped feed
ends after its current batch, and a resume records the rest.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from engine.map.outcomes import describe_error
from ledger.errors import LedgerWriteFailed

__all__ = ["Feed", "Feeding", "MapOutcome", "Plan", "WorktreeUnmade"]

Feed = Callable[[Callable[[], None], Callable[[], bool]], Awaitable[None]]
"""Records the items left: called with ``woken`` (after each batch) and ``stopped``
(true once the map stops: the feed then ends after its current batch)."""


class WorktreeUnmade(Exception):
    """An attempt's worktree could not be created: the attempt fails, said."""


@dataclass(frozen=True, slots=True)
class Plan:
    """An item about to be dispatched."""

    item: str
    attempt: int
    key: str
    value: Any
    resumes: str | None = None  # the agent session it continues (retry.resume_session)


@dataclass
class MapOutcome:
    stopped: str | None = None
    """Why dispatching stopped early: ``interrupted``, ``max_failures``, ``item_failed``,
    ``budget`` (the run's is spent), ``engine_error`` (then ``error`` is what stopped it)."""
    error: BaseException | None = None


class Feeding:
    """A feed running beside the scheduler's loop (nothing when there is no feed)."""

    def __init__(
        self,
        feed: Feed | None,
        *,
        woken: Callable[[], None],
        stopped: Callable[[], bool],
        failed: Callable[[BaseException], None],
        warn: Callable[[str], None],
    ) -> None:
        self._woken, self._failed, self._warn = woken, failed, warn
        self.task: asyncio.Future[None] | None = None
        if feed is not None:
            self.task = asyncio.ensure_future(feed(woken, stopped))
            self.task.add_done_callback(self._done)

    @property
    def active(self) -> bool:
        """Items are still being recorded: the map's list is not complete yet."""
        return self.task is not None and not self.task.done()

    def _done(self, task: asyncio.Future[None]) -> None:
        self._woken()
        if task.cancelled() or (exc := task.exception()) is None:
            return
        if not isinstance(exc, LedgerWriteFailed):  # that one ends the run, said then
            self._warn(f"engine: error while enqueueing the items: {describe_error(exc)}")
        self._failed(exc)

    async def finish(self) -> None:
        """Wait for the feed (stopped or done); its error was told already."""
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)
