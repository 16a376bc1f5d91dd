"""The map scheduler: the loop that dispatches items and records their outcomes.

It decides only from the projections, through the pure functions of
:mod:`engine.map.policy` (retry or dead-letter, the circuit, failure limits)
and :mod:`engine.map.outcomes` (an outcome's events). Every decision is an
event appended to the ledger and applied to the projections through the
same code replay uses; nothing is remembered beside them but the live
attempts. Write-ahead: an attempt's ``item.dispatched`` is durable before
its process starts, and its outcome (with the retry or dead-letter
decision, in one append) is durable before anything depends on it.

One clock (``clock``: epoch seconds, :func:`time.time` by default) gives
every time the scheduler decides by: which items are ready, a retry's
``not_before``, when an open circuit may half-open.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from engine.exec.executor import Attempt, AttemptOutcome, AttemptRequest, Executor, ExecutorLost
from engine.exec.local import orphans
from engine.git.isolation import Isolation
from engine.items.keys import IdempotencyKeys
from engine.map import outcomes, policy
from engine.map.failure_lines import FailureLines
from engine.map.feeding import Feed, Feeding, MapOutcome, WorktreeUnmade
from engine.map.feeding import Plan as _Plan
from engine.map.outcomes import describe_error, failure_events, heartbeat_event, machine_resources
from engine.store.cache import ArtifactError, ItemHooks
from engine.store.content import ContentStore
from engine.workflow.spec import BudgetSpec, CircuitBreakerSpec, MapSpec
from ledger.errors import LedgerWriteFailed
from ledger.events import Event, ItemDispatched, ItemFailed
from ledger.times import epoch, reading
from ledger.writer import LedgerWriter
from projections.replay import Projections

__all__ = ["Feed", "MapOutcome", "MapScheduler", "WorktreeUnmade"]


class MapScheduler:
    """Runs the map step of one run until every item is done or it must stop."""

    def __init__(
        self,
        *,
        writer: LedgerWriter,
        projections: Projections,
        spec: MapSpec,
        executor: Executor,
        values: Mapping[str, Any],
        request: Callable[[str, int, str, Any], AttemptRequest],
        max_parallel: int,
        circuit: CircuitBreakerSpec | None,
        on_change: Callable[[], None] = lambda: None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
        hooks: ItemHooks | None = None,
        warn: Callable[[str], None] = lambda _line: None,
        store: ContentStore | None = None,
        isolation: Isolation | None = None,
        budget: BudgetSpec | None = None,
        feed: Feed | None = None,
    ) -> None:
        self.writer = writer
        self.p = projections
        self.spec = spec
        self.executor = executor
        self.values = values
        self.make_request = request
        self.max_parallel = max_parallel
        self.circuit = circuit
        self.on_change = on_change
        self.rng = rng or random.Random()
        self.hooks = hooks if hooks is not None and hooks.active else None
        """The cache lookup before an item's attempt, its artifacts after a success."""
        self.clock = clock
        """Now, in epoch seconds: which items are ready, a retry's ``not_before``, when an
        open circuit may half-open (attempt durations are measured on the monotonic clock)."""
        self._now_text = reading(clock)
        """The clock's reading in RFC 3339, as the pending queue compares times."""
        self.running: dict[str, Attempt] = {}
        """Attempts whose process is alive (they count against max_parallel)."""
        self.tasks: dict[str, asyncio.Future[None]] = {}
        """Every attempt not yet finished: running, or its outcome being recorded."""
        self.reserved: dict[str, int] = {}
        """Items being dispatched (taken from the queue, not yet started): their attempt."""
        self.wake = asyncio.Event()
        self.stopping: str | None = None
        self.held = False
        """A pause or a cancel is being recorded: nothing is dispatched meanwhile."""
        self.store = store
        """Where a result too large for its record goes (without one, it is recorded inline)."""
        self.warn = warn
        """Where the one line about an engine error goes (stderr), and failures as
        ``map.error_collection`` tells them."""
        self.failure_lines = FailureLines(spec.error_collection, warn)
        self.fatal: BaseException | None = None
        """The error that left nothing recordable (the writer stopped): the run stops."""
        self.isolation = isolation
        """Each attempt's git worktree, and the merge of its work (``map.isolation``)."""
        self.budget = budget or BudgetSpec()
        """What the run's agents may spend (``budget``)."""
        self._background: set[asyncio.Future[None]] = set()
        self._keys = IdempotencyKeys(spec)
        self._circuit_turn = asyncio.Lock()
        self.feed = feed
        """Records the items not enqueued yet, beside dispatch (see :mod:`engine.map.feeding`)."""

    # --- appending -------------------------------------------------------------------

    async def _append(self, events: list[Event]) -> None:
        records = await self.writer.append_async(events)
        self.p.apply_all(records)
        self.on_change()
        self.failure_lines.note(events)

    # --- the loop ------------------------------------------------------------------------

    def stop(self, reason: str) -> None:
        """Stop dispatching (a signal, a failure limit); running attempts go on or are cancelled."""
        if self.stopping is None:
            self.stopping = reason
        self.wake.set()

    async def run(self) -> MapOutcome:
        feeding = Feeding(
            self.feed,
            woken=self.wake.set,
            stopped=lambda: self.stopping is not None,
            failed=self._stop_fatally,
            warn=self.warn,
        )
        while True:
            try:
                await self._dispatch_ready()
            except Exception as exc:  # an engine error stops the run, never drops
                if not isinstance(exc, LedgerWriteFailed):  # that one ends the run, said then
                    self.warn(f"engine: error while dispatching: {describe_error(exc)}")
                self._stop_fatally(exc)
            if not self.tasks and (self.stopping or (self.p.pending.empty and not feeding.active)):
                break
            self.wake.clear()
            timeout = self._next_wakeup()
            if self.tasks or timeout is not None or self._paused() or feeding.active:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), timeout)
            elif self.stopping is None and not self.p.pending.empty:
                await asyncio.sleep(0.01)
        await feeding.finish()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        self.failure_lines.flush()
        return MapOutcome(stopped=self.stopping, error=self.fatal)

    def _stop_fatally(self, exc: BaseException) -> None:
        """Nothing more can be recorded: stop dispatching and stop what runs.

        The run ends failed or interrupted, never completed; what had no
        recorded outcome runs again on resume.
        """
        if self.fatal is None:
            self.fatal = exc
        self.stopping = "engine_error"
        self.wake.set()
        if self.running:
            task = asyncio.ensure_future(self.cancel_running())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def cancel_running(self, *, force: bool = False) -> None:
        """Terminate every running attempt (their outcomes record ``interrupted``)."""
        await asyncio.gather(
            *(attempt.cancel(force=force) for attempt in list(self.running.values()))
        )
        tasks = list(self.tasks.values())
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _next_wakeup(self) -> float | None:
        """Seconds until the clock makes something dispatchable; None when only an event can.

        An open circuit dispatches nothing before it may half-open: that is
        the one time that counts then. A retry falling due counts only while
        it could be dispatched: with every slot taken, the probes in flight,
        dispatching paused or the map stopping, the end of an attempt (or the
        unpause) wakes the loop, and a timer already due would only spin it.
        """
        now = self.clock()
        half_open = policy.half_open_at(self.p.circuit)
        if half_open is not None:
            return max(0.0, half_open - now)
        if not self._may_dispatch():
            return None
        next_retry = self.p.pending.next_time()
        if next_retry is None:
            return None
        return max(0.0, epoch(next_retry) - now)

    def _may_dispatch(self) -> bool:
        """A ready item would be dispatched now (the circuit apart from being open)."""
        return self.stopping is None and not self._paused() and self._room() > 0

    def _room(self) -> int:
        """Free slots, as many as a half-open circuit lets probes take (all of them else)."""
        in_flight = len(self.tasks) + len(self.reserved)
        return policy.probe_limit(self.p.circuit, self._free_slots(), in_flight)

    async def _dispatch_ready(self) -> None:
        while self.stopping is None and not self._paused() and self._free_slots() > 0:
            if not await self._circuit_allows():
                return
            plans = self._plan(self._room())
            if not plans:
                return
            await self._dispatch(plans)

    def _paused(self) -> bool:
        """Dispatching is paused (``engine pause``), or held while a pause, a cancel or a
        transition of the circuit is recorded."""
        return self.p.run.paused or self.held or self._circuit_turn.locked()

    def _free_slots(self) -> int:
        return self.max_parallel - len(self.running) - len(self.reserved)

    async def _circuit_allows(self) -> bool:
        """Whether the circuit lets an item through now (half-opening it when due); a
        usage limit opens it without a ``circuit_breaker`` too."""
        events = policy.circuit_half_open(
            self.circuit, self.p.circuit, self.p.pending, now=self.clock()
        )
        if events:
            await self._append(events)
        return self.p.circuit.state != "open"

    def _plan(self, limit: int) -> list[_Plan]:
        """Take up to ``limit`` ready items for dispatch (reserving their slots)."""
        plans = []
        now = self._now_text()
        for item in self.p.pending.ready_items(now, limit, exclude=self.reserved):
            state, value = self.p.items.items[item], self.values.get(item)
            resumes = state.session if self.spec.retry.resume_session else None
            plans.append(_Plan(item, state.attempts + 1, self._keys(item, value), value, resumes))
            self.reserved[item] = state.attempts + 1
        return plans

    async def _dispatch(self, plans: list[_Plan], before: Sequence[Event] = ()) -> None:
        """Dispatch planned items: one durable append (after ``before``), then their processes.

        Write-ahead: the dispatches are durable before any process starts.
        """
        taken = list(plans)
        try:
            if (spent := policy.budget_exhausted(self.budget, self.p, before)) is not None:
                told = self.stopping == "budget"  # its record may still be on its way
                self.stop("budget")  # none starts (budget.exhausted, once); running ones finish
                before, plans = [*before, *([] if told else spent)], []
            if self.hooks is not None and plans:
                try:
                    asked = [(p.item, p.value, p.attempt - 1) for p in plans]
                    misses, looked = await self.hooks.check_all(asked)
                except Exception as exc:  # the cache failed: stop, but record ``before``
                    self.warn(f"engine: error while looking up the cache: {describe_error(exc)}")
                    self._stop_fatally(exc)
                    misses, looked = set(), []
                before, plans = [*before, *looked], [p for p in plans if p.item in misses]
            if self._paused():
                plans = []  # paused meanwhile (an await above): they stay pending
            unmade: dict[str, str] = {}
            if self.isolation is not None and plans:
                created, unmade = await self.isolation.prepare([(p.item, p.attempt) for p in plans])
                before = [*before, *created]
            await self._append(
                [
                    *before,
                    *(
                        ItemDispatched(
                            item=plan.item,
                            attempt=plan.attempt,
                            idempotency_key=plan.key,
                            worker=self.executor.name,
                            resumes_session=plan.resumes,
                        )
                        for plan in plans
                    ),
                ]
            )
            for plan in plans:
                try:
                    if plan.item in unmade:
                        raise WorktreeUnmade(unmade[plan.item])
                    request = self.make_request(plan.item, plan.attempt, plan.key, plan.value)
                    request = dataclasses.replace(request, resume_session=plan.resumes)
                    if self.isolation is not None:
                        request = self.isolation.request(request)
                    handle = await self.executor.start(request)
                except ExecutorLost as exc:  # no outcome: the run stops, a resume settles it
                    del self.reserved[plan.item]
                    self._stop_fatally(exc)
                    continue
                except Exception as exc:  # the attempt fails, typed
                    del self.reserved[plan.item]
                    await self._record_engine_error(plan.item, plan.attempt, exc, "starting")
                    continue
                self.running[plan.item] = handle
                self.tasks[plan.item] = asyncio.ensure_future(
                    self._supervise(plan.item, plan.attempt, handle)
                )
                del self.reserved[plan.item]
                if self.stopping == "interrupted":
                    # Stopped while the dispatch was being made durable: its
                    # outcome says so, and the item runs again on resume.
                    await handle.cancel()
        finally:
            for plan in taken:
                self.reserved.pop(plan.item, None)

    async def _supervise(self, item: str, attempt: int, handle: Attempt) -> None:
        """Watch an attempt and record its outcome; no error of the engine drops it.

        An error while watching ends the attempt with an ``unknown`` failure
        (recorded like any other outcome); an error while recording records a
        minimal failure instead; when even that cannot be written, the run
        stops (resumable).
        """
        started = time.monotonic()
        try:
            try:
                outcome = await self._watch(item, attempt, handle)
            except ExecutorLost as exc:  # no outcome: the run stops, a resume settles it
                self._stop_fatally(exc)
                return
            except Exception as exc:  # the attempt fails, typed
                if not isinstance(exc, LedgerWriteFailed):  # that one ends the run, said then
                    self.warn(f"engine: error while running item {item!r}: {describe_error(exc)}")
                with contextlib.suppress(Exception):
                    await handle.cancel(force=True)
                outcome = AttemptOutcome(
                    ok=False,
                    duration=time.monotonic() - started,
                    error_type="unknown",
                    error=f"engine error while running the attempt: {describe_error(exc)}",
                )
            try:
                await self._record_outcome(item, attempt, outcome)
            except Exception as exc:  # the attempt fails, typed
                await self._record_engine_error(item, attempt, exc, "recording the outcome of")
        finally:
            self.running.pop(item, None)
            self.tasks.pop(item, None)
            self.wake.set()
            orphans.reap()  # orphans the attempt's processes left, once they exit

    async def _record_engine_error(
        self, item: str, attempt: int, exc: BaseException, doing: str
    ) -> None:
        """The last resort: a small ``unknown`` failure for an attempt without an outcome."""
        self.running.pop(item, None)
        if self.fatal is not None:
            return  # said already: the run is stopping, nothing more can be recorded
        if isinstance(exc, LedgerWriteFailed):
            self._stop_fatally(exc)  # the run ends with this error: its one line
            return
        self.warn(
            f"engine: error while {doing} item {item!r} attempt {attempt}: {describe_error(exc)}"
        )
        state = self.p.items.items.get(item)
        if state is None or state.status != "running" or state.attempts != attempt:
            return  # its outcome is recorded; what failed came after
        message = f"engine error while {doing} the attempt: {describe_error(exc)}"
        events = failure_events(
            self.spec,
            item,
            attempt,
            "unknown",
            message,
            now=self.clock(),
            resources=machine_resources(),
            history=policy.item_history(self.p, item, None, self.budget),
        )
        try:
            await self._append(events)
            await self._after_outcome(item, AttemptOutcome(ok=False, duration=0.0))
        except Exception as again:  # nothing can be recorded: stop the run
            self._stop_fatally(again)

    async def _watch(self, item: str, attempt: int, handle: Attempt) -> AttemptOutcome:
        """The attempt's heartbeats, recorded as they come; then its outcome."""
        async for sample in handle.heartbeats():
            await self._append([heartbeat_event(item, attempt, sample)])
        return await handle.wait()

    async def _record_outcome(self, item: str, attempt: int, outcome: AttemptOutcome) -> None:
        """The outcome's events (with the retry or dead-letter decision), in one append."""
        if outcome.ok and self.store is not None and outcome.result is not None:
            # A large result is made durable in the store before the record naming it.
            result, ref = await asyncio.to_thread(self.store.inline_or_ref, outcome.result)
            if ref is not None:
                outcome = dataclasses.replace(outcome, result=result, result_ref=ref)
        events = self._outcome_events(item, attempt, outcome)
        if outcome.ok and self.hooks is not None:
            try:
                where = self.isolation.attempt_dir(item, attempt) if self.isolation else None
                value = self.values.get(item)
                stored = await self.hooks.on_success(item, attempt, value, outcome, where)
            except (OSError, ArtifactError) as exc:
                outcome = dataclasses.replace(outcome, ok=False, invalid_output=f"artifacts: {exc}")
                events = self._outcome_events(item, attempt, outcome)
            else:
                events = [*stored, *events]
        if outcome.ok and self.isolation is not None:
            outcome, events = await self._land(item, attempt, outcome, events)
        if outcome.ok:
            # The process is gone: its slot is free at once, and the next
            # item's dispatch is made durable in the same append as this
            # success (one fsync for both). A failure keeps its slot until
            # the failure limits and the circuit breaker have seen it.
            self.running.pop(item, None)
            may = self.stopping is None and not self._paused()
            closed = self.p.circuit.state == "closed"
            plans = self._plan(self._free_slots()) if may and closed else []
            await self._dispatch(plans, before=events)
        elif any(isinstance(e, ItemFailed) and e.resets_at for e in events):
            # A usage limit's reset opens the circuit in the failure's append; nothing
            # is dispatched until it is applied (the turn held: see ``_paused``).
            async with self._circuit_turn:
                opened = policy.usage_limit_circuit(self.p.circuit, events, now=self.clock())
                await self._append([*events, *opened])
            self.wake.set()
        else:
            await self._append(events)
        await self._after_outcome(item, outcome)
        if outcome.ok and self.isolation is not None:
            await self.isolation.settle_item(item)

    async def _land(
        self, item: str, attempt: int, outcome: AttemptOutcome, events: list[Event]
    ) -> tuple[AttemptOutcome, list[Event]]:
        """A success's work merged into the run's branch (its slot free meanwhile), or the
        failure that refused it."""
        assert self.isolation is not None
        self.running.pop(item, None)
        self.wake.set()
        landing = await self.isolation.land(item, attempt, events)
        if landing.failure is None:
            return outcome, landing.events
        kind, message = landing.failure
        outcome = dataclasses.replace(
            outcome, ok=False, error_type=kind, error=message, interrupted=kind == "interrupted"
        )
        return outcome, self._outcome_events(item, attempt, outcome)

    def _outcome_events(self, item: str, attempt: int, outcome: AttemptOutcome) -> list[Event]:
        return outcomes.outcome_events(
            self.spec,
            item,
            attempt,
            outcome,
            stopping=self.stopping in ("interrupted", "cancelled"),
            now=self.clock(),
            rng=self.rng,
            resources={} if outcome.ok else machine_resources(),
            history=policy.item_history(self.p, item, outcome.usage, self.budget),
        )

    async def _after_outcome(self, item: str, outcome: AttemptOutcome) -> None:
        """The circuit's transition, then whether a failure stops the run (after its append).

        One outcome's transition at a time: another outcome recorded meanwhile
        is judged with this transition applied (never two openings of one streak).
        """
        async with self._circuit_turn:
            events = policy.circuit_after_outcome(self.circuit, self.p.circuit, item, ok=outcome.ok)
            if events:
                await self._append(events)
        if events:
            self.wake.set()  # dispatching was held meanwhile
        if self.stopping is None:
            reason = policy.failure_stop(self.spec, self.p.items, item, ok=outcome.ok)
            if reason is not None:
                self.stop(reason)
