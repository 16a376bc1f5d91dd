"""The scheduler's one injected clock: retries and the circuit follow it, not the real time.

A fake executor (no process) and a clock the test moves by hand: a
retry's ``not_before`` is the clock's reading plus the backoff, the circuit
half-opens when the clock passes its cooldown, and items become ready when
the clock says so. The real time that passes is a fraction of a second;
waiting for it would take minutes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from engine.exec.executor import Attempt, AttemptOutcome, AttemptRequest, Executor, HeartbeatSample
from engine.map import policy
from engine.map.scheduler import MapOutcome, MapScheduler
from engine.workflow.spec import CircuitBreakerSpec, MapSpec
from ledger import LedgerReader
from ledger.events import (
    CircuitClosed,
    CircuitHalfOpen,
    CircuitOpened,
    ItemDispatched,
    ItemEnqueued,
    ItemRetryScheduled,
    ItemSucceeded,
    Record,
)
from ledger.times import epoch, rfc3339
from ledger.writer import LedgerWriter
from projections.replay import Projections, replay
from tests.conftest import projections_json
from tests.engine_helpers import DEADLINE

NOW = epoch("2030-06-01T12:00:00.000000Z")


class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class _Done(Attempt):
    def __init__(self, outcome: AttemptOutcome) -> None:
        self.outcome = outcome

    async def heartbeats(self) -> AsyncIterator[HeartbeatSample]:
        return
        yield  # pragma: no cover - makes this an async generator

    async def wait(self) -> AttemptOutcome:
        return self.outcome

    async def cancel(self, *, force: bool = False) -> None:
        return None


class _Held(_Done):
    """An attempt that ends when the test says so."""

    def __init__(self, outcome: AttemptOutcome, release: asyncio.Event) -> None:
        super().__init__(outcome)
        self.release = release

    async def wait(self) -> AttemptOutcome:
        await self.release.wait()
        return self.outcome


class _RateLimitedOnce(Executor):
    """Items whose name starts with ``r`` are rate limited on their first attempt; items
    named ``held`` run until ``release`` is set."""

    name = "fake"

    def __init__(self) -> None:
        self.started: list[tuple[str, int]] = []
        self.release = asyncio.Event()

    async def start(self, request: AttemptRequest) -> Attempt:
        self.started.append((request.item_id, request.attempt))
        if request.item_id.startswith("r") and request.attempt == 1:
            return _Done(AttemptOutcome(ok=False, duration=0.0, exit_code=1, stderr_tail="429\n"))
        ok = AttemptOutcome(ok=True, duration=0.0, exit_code=0)
        return _Held(ok, self.release) if request.item_id == "held" else _Done(ok)


async def _until(predicate: Callable[[], Any]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while not predicate():
        assert loop.time() < deadline, "the condition never came"
        await asyncio.sleep(0.005)


def _spec(items: list[str], initial: str) -> MapSpec:
    retry = {
        "max_attempts": 3,
        "backoff": "fixed",
        "initial": initial,
        "max": "1h",
        "jitter": False,
    }
    return MapSpec.model_validate(
        {"items": items, "agent_template": [{"run": "true"}], "retry": retry}
    )


async def _scheduler(
    run_dir: Path,
    clock: _Clock,
    spec: MapSpec,
    executor: Executor,
    circuit: CircuitBreakerSpec | None = None,
) -> tuple[MapScheduler, Projections, LedgerWriter]:
    """A scheduler over a fresh ledger with the spec's items enqueued, one at a time."""
    # The records' times come from the same clock: the circuit's opening is one.
    writer = LedgerWriter.open(run_dir, "r", create=True, clock=lambda: rfc3339(clock.now))
    p = Projections(circuit_on=circuit.on if circuit else ())
    p.apply_all(writer.opening)
    items = [str(i) for i in spec.items or []]
    p.apply_all(
        await writer.append_async(ItemEnqueued(item=i, index=n) for n, i in enumerate(items))
    )
    p.enable_scheduling()
    scheduler = MapScheduler(
        writer=writer,
        projections=p,
        spec=spec,
        executor=executor,
        values={i: i for i in items},
        request=lambda item, attempt, key, value: AttemptRequest(
            run_id="r",
            item_id=item,
            attempt=attempt,
            idempotency_key=key,
            steps=[],
            context={},
            env={},
            cwd=run_dir,
            run_dir=run_dir,
        ),
        max_parallel=1,
        circuit=circuit,
        clock=clock,
    )
    return scheduler, p, writer


def _check(p: Projections, run_dir: Path) -> list[Record]:
    """The live state equals a replay of the ledger; the ledger's records."""
    assert projections_json(p) == projections_json(replay(run_dir / "ledger.ndjson"))
    return list(LedgerReader(run_dir / "ledger.ndjson").records())


def test_retries_and_the_circuit_follow_the_injected_clock(tmp_path: Path) -> None:
    clock = _Clock(NOW)
    spec = _spec(["r1", "r2", "ok1"], "100s")
    circuit = CircuitBreakerSpec(threshold=2, cooldown=600.0, on=["rate_limited"])
    executor = _RateLimitedOnce()

    async def scenario() -> tuple[MapOutcome, list[Record]]:
        scheduler, p, writer = await _scheduler(tmp_path / "run", clock, spec, executor, circuit)
        task = asyncio.ensure_future(scheduler.run())
        try:
            # r1 and r2 fail: two in a row open the circuit, at the clock's time.
            await _until(lambda: p.circuit.state == "open")
            for item in ("r1", "r2"):
                assert p.items.items[item].retry_at == rfc3339(NOW + 100)
            assert policy.half_open_at(p.circuit) == NOW + 600
            # The retries are due by the clock, but the circuit holds everything back.
            clock.now = NOW + 150
            scheduler.wake.set()
            for _ in range(20):
                await asyncio.sleep(0)
            assert p.circuit.state == "open" and executor.started == [("r1", 1), ("r2", 1)]
            assert scheduler._next_wakeup() == pytest.approx(450.0)
            # The cooldown has passed by the clock: a probe, then the rest.
            clock.now = NOW + 600
            scheduler.wake.set()
            outcome = await asyncio.wait_for(task, DEADLINE)
        finally:
            if not task.done():
                task.cancel()
            writer.close()
        return outcome, _check(p, tmp_path / "run")

    outcome, records = asyncio.run(scenario())
    assert outcome.stopped is None and outcome.error is None
    retries = [r.data for r in records if isinstance(r.data, ItemRetryScheduled)]
    assert [(e.item, e.delay, e.not_before) for e in retries] == [
        ("r1", 100.0, rfc3339(NOW + 100)),
        ("r2", 100.0, rfc3339(NOW + 100)),
    ]
    (opened,) = [r for r in records if isinstance(r.data, CircuitOpened)]
    (half,) = [r for r in records if isinstance(r.data, CircuitHalfOpen)]
    (closed,) = [r for r in records if isinstance(r.data, CircuitClosed)]
    assert opened.ts == rfc3339(NOW) and half.ts == rfc3339(NOW + 600)
    assert isinstance(half.data, CircuitHalfOpen) and half.data.probe_item == "r1"
    assert opened.seq < half.seq < closed.seq
    # The probe alone while half open (a retry, due by the clock, goes before a fresh
    # item); then the other retry, then the fresh item.
    assert executor.started == [("r1", 1), ("r2", 1), ("r1", 2), ("r2", 2), ("ok1", 1)]
    succeeded = [r.data.item for r in records if isinstance(r.data, ItemSucceeded)]
    assert succeeded == ["r1", "r2", "ok1"]


def test_a_retry_waits_for_the_clock_and_for_a_free_slot(tmp_path: Path) -> None:
    clock = _Clock(NOW)
    spec = _spec(["r1", "held"], "10s")
    executor = _RateLimitedOnce()

    async def scenario() -> list[Record]:
        scheduler, p, writer = await _scheduler(tmp_path / "run", clock, spec, executor)
        task = asyncio.ensure_future(scheduler.run())
        try:
            await _until(lambda: executor.started == [("r1", 1), ("held", 1)])
            assert p.items.items["r1"].retry_at == rfc3339(NOW + 10)
            # Due by the clock, but the one slot is taken: no timer, the attempt's end wakes it.
            clock.now = NOW + 20
            assert scheduler._next_wakeup() is None
            clock.now = NOW + 5
            executor.release.set()
            await _until(lambda: p.items.counts["succeeded"] == 1)
            # A free slot, and the retry due in 5 s by the clock.
            assert scheduler._next_wakeup() == pytest.approx(5.0)
            assert executor.started == [("r1", 1), ("held", 1)]
            clock.now = NOW + 10
            scheduler.wake.set()
            outcome = await asyncio.wait_for(task, DEADLINE)
            assert outcome.stopped is None and outcome.error is None
        finally:
            if not task.done():
                task.cancel()
            writer.close()
        return _check(p, tmp_path / "run")

    records = asyncio.run(scenario())
    assert executor.started == [("r1", 1), ("held", 1), ("r1", 2)]
    dispatched = [(r.ts, r.data) for r in records if isinstance(r.data, ItemDispatched)]
    assert [(ts, e.item, e.attempt) for ts, e in dispatched][-1] == (rfc3339(NOW + 10), "r1", 2)
