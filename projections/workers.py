"""Workers: the last heartbeat of every running attempt, and what its agent did.

One attempt of an item runs at a time, so running attempts are keyed by
item. The projection keeps the records themselves (no copies); the JSON view
spells them out. An attempt's agent activity (``agent.output:
claude-stream-json``) is the latest heartbeat that carried one.
"""

from __future__ import annotations

import msgspec

from ledger.events import (
    AgentActivity,
    Heartbeat,
    ItemDeadLettered,
    ItemDispatched,
    ItemFailed,
    ItemRequeued,
    ItemSkipped,
    ItemSucceeded,
    Record,
)
from projections.base import Projection, handles

__all__ = ["AttemptLiveness", "LiveAttempt", "WorkersProjection", "WorkersView"]


class LiveAttempt(msgspec.Struct, gc=False):
    """A running attempt: its dispatch record, its last heartbeat, a count."""

    dispatched: Record
    last: Record | None = None
    heartbeats: int = 0
    agent: AgentActivity | None = None
    """What its agent did so far, as the latest heartbeat with an ``agent`` said."""


class AttemptLiveness(msgspec.Struct, kw_only=True):
    """A running attempt as shown in JSON."""

    item: str
    attempt: int
    worker: str
    dispatched_at: str
    pgid: int | None
    heartbeats: int
    last_heartbeat: str | None
    pid: int | None
    rss: int | None
    cpu: float | None
    output_bytes: int
    touched_at: str | None
    agent: AgentActivity | None = None
    """Its agent's events, turns, last tool and spend so far (``claude-stream-json``)."""


class WorkersView(msgspec.Struct, kw_only=True):
    running: list[AttemptLiveness]
    heartbeats: int


class WorkersProjection(Projection):
    def __init__(self) -> None:
        self.running: dict[str, LiveAttempt] = {}
        self.heartbeats = 0

    @handles(ItemDispatched)
    def _dispatched(self, record: Record, e: ItemDispatched) -> None:
        self.running[e.item] = LiveAttempt(record)

    @handles(Heartbeat)
    def _heartbeat(self, record: Record, e: Heartbeat) -> None:
        self.heartbeats += 1
        live = self.running.get(e.item)
        if live is not None and live.dispatched.data.attempt == e.attempt:  # type: ignore[attr-defined]
            live.last = record
            live.heartbeats += 1
            if e.agent is not None:
                live.agent = e.agent

    @handles(ItemSucceeded, ItemFailed)
    def _outcome(self, record: Record, e: ItemSucceeded | ItemFailed) -> None:
        live = self.running.get(e.item)
        if live is not None and live.dispatched.data.attempt == e.attempt:  # type: ignore[attr-defined]
            del self.running[e.item]

    @handles(ItemDeadLettered, ItemSkipped, ItemRequeued)
    def _not_running(
        self, record: Record, e: ItemDeadLettered | ItemSkipped | ItemRequeued
    ) -> None:
        self.running.pop(e.item, None)

    def to_json(self) -> WorkersView:
        views = [_view(live) for live in self.running.values()]
        views.sort(key=lambda a: (a.dispatched_at, a.item))
        return WorkersView(running=views, heartbeats=self.heartbeats)


def _view(live: LiveAttempt) -> AttemptLiveness:
    d = live.dispatched.data
    assert isinstance(d, ItemDispatched)
    hb = live.last.data if live.last is not None else None
    assert hb is None or isinstance(hb, Heartbeat)
    return AttemptLiveness(
        item=d.item,
        attempt=d.attempt,
        worker=d.worker,
        dispatched_at=live.dispatched.ts,
        pgid=d.pgid,
        heartbeats=live.heartbeats,
        last_heartbeat=live.last.ts if live.last is not None else None,
        pid=hb.pid if hb else None,
        rss=hb.rss if hb else None,
        cpu=hb.cpu if hb else None,
        output_bytes=hb.output_bytes if hb else 0,
        touched_at=hb.touched_at if hb else None,
        agent=live.agent,
    )
