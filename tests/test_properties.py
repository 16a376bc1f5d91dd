"""Property tests: replay is just a loop, and a prefix plus the rest is the whole.

The on-demand folds (the timeline, stats), which only their callers feed, are
held to the same properties as the projections the engine keeps live.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger import LedgerReader, LedgerWriter
from ledger.events import (
    EVENT_TYPES,
    CacheHit,
    CircuitClosed,
    CircuitHalfOpen,
    CircuitOpened,
    Event,
    Heartbeat,
    ItemDeadLettered,
    ItemDispatched,
    ItemDuplicate,
    ItemEnqueued,
    ItemFailed,
    ItemRequeued,
    ItemRetryScheduled,
    ItemSkipped,
    ItemSucceeded,
    LedgerRecovered,
    LockAcquired,
    RunAborted,
    RunCompleted,
    RunCreated,
    RunFailed,
    RunResumed,
    RunStarted,
    StepStarted,
    StepSucceeded,
)
from projections.base import Projection
from projections.receipts import ReceiptsProjection
from projections.replay import Projections, replay
from projections.snapshots import STATES, load_snapshot, write_snapshot
from projections.stats import SessionsProjection, StatsProjection
from projections.timeline import TimelineProjection
from projections.values import ValuesProjection
from tests.conftest import projections_json

items = st.sampled_from(["a", "b", "c", "d", "e"])
attempts = st.integers(min_value=1, max_value=4)
error_types = st.sampled_from(["timeout", "rate_limited", "command_failed", "hung"])
signatures = st.sampled_from(["s1", "s2", "s3"])
text = st.text(max_size=20)
phases = st.sampled_from(["setup", "reduce"])

events: st.SearchStrategy[Event] = st.one_of(
    st.builds(ItemEnqueued, item=items, index=st.integers(0, 9), value=st.none() | text),
    st.builds(ItemDuplicate, item=items, index=st.integers(0, 9), first_index=st.integers(0, 9)),
    st.builds(ItemDispatched, item=items, attempt=attempts, idempotency_key=st.just("ik:x")),
    st.builds(Heartbeat, item=items, attempt=attempts, rss=st.none() | st.integers(0, 10**9)),
    st.builds(
        ItemSucceeded,
        item=items,
        attempt=attempts,
        duration=st.floats(0, 100),
        result=st.none() | text,
        result_ref=st.none() | st.just("sha256:0"),
    ),
    st.builds(
        ItemFailed,
        item=items,
        attempt=attempts,
        error_type=error_types,
        signature=signatures,
        message=text,
    ),
    st.builds(
        ItemRetryScheduled,
        item=items,
        attempt=attempts,
        delay=st.floats(0, 60),
        not_before=st.just("2026-01-01T00:00:00.000000Z"),
    ),
    st.builds(
        ItemDeadLettered, item=items, attempt=attempts, error_type=error_types, signature=signatures
    ),
    st.builds(ItemRequeued, item=items),
    st.builds(
        ItemSkipped, item=items, reason=st.sampled_from(["cache", "done"]), result=st.none() | text
    ),
    st.builds(
        StepStarted,
        phase=phases,
        index=st.integers(0, 2),
        name=text,
        command=st.sampled_from(["make", "make all"]),
    ),
    st.builds(
        StepSucceeded,
        phase=phases,
        index=st.integers(0, 2),
        captured=st.none() | st.just("conf"),
        captured_value=st.none() | text,
    ),
    st.builds(CacheHit, item=items, key=st.just("k")),
    st.builds(
        CircuitOpened, failures=st.integers(1, 9), error_type=error_types, cooldown=st.floats(0, 60)
    ),
    st.builds(
        CircuitHalfOpen,
        probe_item=st.none() | items,
        probes=st.integers(1, 4),
        success_threshold=st.integers(1, 4),
    ),
    st.builds(CircuitClosed, reason=text),
    st.builds(
        RunCreated,
        workflow_name=st.just("wf"),
        workflow_path=st.just("wf.yml"),
        workflow_hash=st.just("sha256:0"),
    ),
    st.builds(
        RunStarted, pid=st.integers(1, 99), host=st.just("h"), max_parallel=st.none() | attempts
    ),
    st.builds(
        RunResumed, pid=st.integers(1, 99), host=st.just("h"), max_parallel=st.none() | attempts
    ),
    st.builds(
        LockAcquired,
        pid=st.integers(1, 99),
        host=st.just("h"),
        command=st.just("engine run"),
        started_at=st.just("2026-01-01T00:00:00.000000Z"),
    ),
    st.builds(RunCompleted),
    st.builds(RunFailed, reason=text),
    st.builds(RunAborted, reason=text),
    st.builds(
        LedgerRecovered,
        offset=st.integers(0, 99),
        length=st.integers(1, 9),
        moved_to=st.just("x"),
        reason=text,
    ),
)


def _extra() -> tuple[Projection, ...]:
    """The on-demand folds, fresh."""
    return (ValuesProjection(), TimelineProjection(), StatsProjection(), ReceiptsProjection())


def state(p: Projections) -> bytes:
    """Every projection's state: the values projection's and the on-demand folds' too
    (folded here for all), and the run state and circuit that the run's JSON leaves out."""
    run = {"created": p.run.created, "resumed": p.run.resumed}
    extra = [x.to_json() for x in p.extra]
    return projections_json(p) + b"\n" + msgspec.json.encode([run, p.circuit.to_json(), extra])


def folded(path: Path, *, until: int | None = None, verify: bool = True) -> Projections:
    """``replay()`` into projections that fold the values projection too, as the engine's do,
    and the on-demand folds."""
    return replay(path, until=until, verify=verify, into=Projections(extra=_extra()))


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _ledger(batch: list[Event], directory: str) -> Path:
    run_dir = Path(directory) / "run"
    with LedgerWriter.open(run_dir, "prop", create=True, command="prop") as w:
        w.append_many(batch)
    return run_dir / "ledger.ndjson"


@SETTINGS
@given(st.lists(events, max_size=60))
def test_applying_one_by_one_equals_replay(batch: list[Event]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = _ledger(batch, tmp)
        one_by_one = Projections(extra=_extra())
        for record in LedgerReader(path).records():
            one_by_one.apply(record)
        assert state(one_by_one) == state(folded(path))
        assert state(folded(path, verify=False)) == state(folded(path))
        assert projections_json(replay(path)) == projections_json(folded(path))
        on_demand = replay(path, extra=_extra())  # as engine stats and audit report ask
        assert [x.to_json() for x in on_demand.extra] == [x.to_json() for x in folded(path).extra]


@SETTINGS
@given(st.lists(events, max_size=60), st.data())
def test_prefix_then_rest_equals_whole(batch: list[Event], data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = _ledger(batch, tmp)
        whole = folded(path)
        cut = data.draw(st.integers(min_value=0, max_value=whole.seq), label="until")
        partial = folded(path, until=cut)
        assert partial.seq == cut
        partial.apply_all(r for r in LedgerReader(path).records() if r.seq > cut)
        assert state(partial) == state(whole)


@SETTINGS
@given(st.lists(events, max_size=60))
def test_pending_index_built_late_equals_folded_from_the_start(batch: list[Event]) -> None:
    """The scheduler's queue is a pure function of the events, however it is built."""
    with tempfile.TemporaryDirectory() as tmp:
        path = _ledger(batch, tmp)
        early = Projections()
        early.enable_scheduling()
        early.apply_all(LedgerReader(path).records())
        late = replay(path)
        late.enable_scheduling()
        assert early.pending.queued == late.pending.queued
        now = "2030-01-01T00:00:00.000000Z"
        assert early.pending.ready_items(now, 100) == late.pending.ready_items(now, 100)


def test_stats_sees_every_record() -> None:
    """Each record ends the current session, whatever its type."""
    assert set(StatsProjection.handlers) == set(EVENT_TYPES.values())


def _snapshotted(path: Path, *, until: int | None = None, snapshot: bool = True) -> Projections:
    """What a reader of the run's state folds: the projections and the sessions."""
    into = Projections(extra=(SessionsProjection(),))
    return replay(path, until=until, into=into, snapshot=snapshot)


def _every_state(p: Projections) -> bytes:
    """Every snapshotted projection's whole state (beyond what its JSON shows)."""
    parts = [x.checkpoint(STATES[type(x)]) for x in (*p.all(), *p.extra) if type(x) in STATES]
    for part in parts:  # sets have no order
        for key, value in part.items():
            if isinstance(value, set):
                part[key] = sorted(value)
        if "_items" in part:
            part["_items"] = {k: sorted(v) for k, v in part["_items"].items()}
    return msgspec.msgpack.encode(parts)


@SETTINGS
@given(st.lists(events, max_size=60), st.data())
def test_snapshot_then_tail_equals_full_replay(batch: list[Event], data: st.DataObject) -> None:
    """For any ledger and any snapshot point, the snapshot plus the records after it
    fold to what the whole ledger folds to, for every projection."""
    with tempfile.TemporaryDirectory() as tmp:
        path = _ledger(batch, tmp)
        whole = _snapshotted(path, snapshot=False)
        cut = data.draw(st.integers(min_value=0, max_value=whole.seq), label="snapshot at")
        partial = _snapshotted(path, until=cut)
        assert partial.last is not None
        assert write_snapshot(path, [*partial.all(), *partial.extra], partial.last)
        probe = Projections(extra=(SessionsProjection(),))
        snap = load_snapshot(path, [*probe.all(), *probe.extra])
        assert snap is not None and snap.record.seq == cut
        # The item table is decoded on its first use only; the counts need it not.
        assert not probe.items.items_loaded
        assert probe.items.item_counts() == partial.items.item_counts()
        assert probe.items.dispatched == partial.items.dispatched
        assert not probe.items.items_loaded
        assert probe.items.items == partial.items.items
        resumed = _snapshotted(path)
        assert resumed.items.item_counts() == whole.items.item_counts()
        assert state(resumed) == state(whole)
        assert projections_json(resumed) == projections_json(whole)
        assert _every_state(resumed) == _every_state(whole)
        assert resumed.scan == whole.scan
        resumed.enable_scheduling()
        whole.enable_scheduling()
        assert resumed.pending.queued == whole.pending.queued
