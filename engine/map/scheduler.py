"""The map scheduler: dispatch, retry, backoff, circuit breaker, failure limits.

It decides only from the projections. Every decision is an event appended
to the ledger and applied to the projections through the same code replay
uses; nothing is remembered beside them. Write-ahead: an attempt's
``item.dispatched`` is durable before its process starts, and its outcome
(with the retry or dead-letter decision, in one append) is durable before
anything depends on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from engine.exec.executor import Attempt, AttemptOutcome, AttemptRequest, Executor
from engine.exec.local import orphans
from engine.items.keys import IdempotencyKeys
from engine.map.classify import classify, signature
from engine.store.cache import ArtifactError, ItemHooks
from engine.store.content import ContentStore
from engine.workflow.spec import CircuitBreakerSpec, MapSpec, RetrySpec
from ledger.errors import LedgerWriteFailed
from ledger.events import (
    CircuitClosed,
    CircuitHalfOpen,
    CircuitOpened,
    Event,
    Heartbeat,
    ItemDeadLettered,
    ItemDispatched,
    ItemFailed,
    ItemRetryScheduled,
    ItemSucceeded,
)
from ledger.times import epoch, rfc3339, utc_now
from ledger.writer import LedgerWriter
from projections.replay import Projections

__all__ = [
    "MAX_RETRY_DELAY",
    "MapOutcome",
    "MapScheduler",
    "abandon_events",
    "backoff_delay",
    "failure_events",
]


MAX_RETRY_DELAY = 7 * 86400.0
"""The longest wait before a retry, whatever the retry settings compute."""


def backoff_delay(retry: RetrySpec, failed_attempt: int, rng: random.Random) -> float:
    """Seconds before the attempt after ``failed_attempt`` (1-based).

    Always a finite number from 0 to :data:`MAX_RETRY_DELAY`: a delay that
    overflows or is not a number waits the longest.
    """
    if retry.backoff == "fixed":
        delay = retry.initial
    elif retry.backoff == "linear":
        delay = retry.initial * failed_attempt
    else:
        try:
            delay = retry.initial * retry.multiplier ** (failed_attempt - 1)
        except OverflowError:  # e.g. 1000.0 ** 200: far past any max
            delay = retry.max
    delay = _bounded_delay(min(delay, retry.max))
    if retry.jitter:
        delay = rng.uniform(delay / 2, delay)
    return _bounded_delay(delay)


def _bounded_delay(delay: float) -> float:
    if math.isnan(delay):
        return MAX_RETRY_DELAY
    return min(max(delay, 0.0), MAX_RETRY_DELAY)


@dataclass(frozen=True, slots=True)
class _Plan:
    """An item about to be dispatched."""

    item: str
    attempt: int
    key: str
    value: Any


@dataclass
class MapOutcome:
    stopped: str | None = None
    """Why dispatching stopped early: ``interrupted``, ``max_failures``, ``item_failed``,
    ``engine_error`` (then ``error`` is what stopped it)."""
    error: BaseException | None = None


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
        self.running: dict[str, Attempt] = {}
        """Attempts whose process is alive (they count against max_parallel)."""
        self.tasks: dict[str, asyncio.Future[None]] = {}
        """Every attempt not yet finished: running, or its outcome being recorded."""
        self.reserved: dict[str, int] = {}
        """Items being dispatched (taken from the queue, not yet started): their attempt."""
        self.wake = asyncio.Event()
        self.stopping: str | None = None
        self.store = store
        """Where a result too large for its record goes (without one, it is recorded inline)."""
        self.warn = warn
        """Where the one line about an engine error goes (stderr)."""
        self.fatal: BaseException | None = None
        """The error that left nothing recordable (the writer stopped): the run stops."""
        self._background: set[asyncio.Future[None]] = set()
        self._keys = IdempotencyKeys(spec)

    # --- appending -------------------------------------------------------------------

    async def _append(self, events: list[Event]) -> None:
        records = await self.writer.append_async(events)
        self.p.apply_all(records)
        self.on_change()

    # --- the loop ------------------------------------------------------------------------

    def stop(self, reason: str) -> None:
        """Stop dispatching (a signal, a failure limit); running attempts go on or are cancelled."""
        if self.stopping is None:
            self.stopping = reason
        self.wake.set()

    async def run(self) -> MapOutcome:
        while True:
            try:
                await self._dispatch_ready()
            except Exception as exc:  # an engine error stops the run, never drops
                if not isinstance(exc, LedgerWriteFailed):  # that one ends the run, said then
                    self.warn(f"engine: error while dispatching: {_describe(exc)}")
                self._stop_fatally(exc)
            if not self.tasks and (self.stopping or self.p.pending.empty):
                break
            self.wake.clear()
            timeout = self._next_wakeup()
            if self.tasks or timeout is not None or self.p.run.paused:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), timeout)
            elif self.stopping is None and not self.p.pending.empty:
                await asyncio.sleep(0.01)
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
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
        """Seconds until a retry is due or the circuit may half-open."""
        now = self.clock()
        times: list[float] = []
        next_retry = self.p.pending.next_time()
        if next_retry is not None:
            times.append(epoch(next_retry) - now)
        circuit = self.p.circuit
        if circuit.state == "open" and circuit.opened_at is not None:
            opened = epoch(circuit.opened_at)
            times.append(opened + circuit.cooldown - now)
        if not times:
            return None
        return max(0.0, min(times))

    async def _dispatch_ready(self) -> None:
        while self.stopping is None and not self.p.run.paused and self._free_slots() > 0:
            if not await self._circuit_allows():
                return
            free = self._free_slots()
            if self.p.circuit.state == "half_open":
                if self.tasks or self.reserved:
                    return  # one probe at a time
                free = 1
            plans = self._plan(free)
            if not plans:
                return
            await self._dispatch(plans)

    def _free_slots(self) -> int:
        return self.max_parallel - len(self.running) - len(self.reserved)

    async def _circuit_allows(self) -> bool:
        circuit = self.p.circuit
        if self.circuit is None:
            return True
        if circuit.state == "open":
            assert circuit.opened_at is not None
            opened = epoch(circuit.opened_at)
            if self.clock() < opened + circuit.cooldown:
                return False
            probe = self.p.pending.next_ready(utc_now())
            await self._append([CircuitHalfOpen(probe_item=probe)])
            return not self.tasks
        if circuit.state == "half_open":
            return not self.tasks
        return True

    def _plan(self, limit: int) -> list[_Plan]:
        """Take up to ``limit`` ready items for dispatch (reserving their slots)."""
        plans = []
        for item in self.p.pending.ready_items(utc_now(), limit, exclude=self.reserved):
            attempt = self.p.items.items[item].attempts + 1
            value = self.values.get(item)
            key = self._keys(item, value)
            plans.append(_Plan(item, attempt, key, value))
            self.reserved[item] = attempt
        return plans

    async def _dispatch(self, plans: list[_Plan], before: Sequence[Event] = ()) -> None:
        """Dispatch planned items: one durable append (after ``before``), then their processes.

        Write-ahead: the dispatches are durable before any process starts.
        """
        taken = list(plans)
        try:
            if self.hooks is not None:
                extra: list[Event] = []
                keep: list[_Plan] = []
                for plan in plans:
                    attempts = self.p.items.items[plan.item].attempts
                    try:
                        hit, events = await self.hooks.check(plan.item, plan.value, attempts)
                    except Exception as exc:  # the cache failed: stop, but record ``before``
                        self.warn(f"engine: error while looking up the cache: {_describe(exc)}")
                        self._stop_fatally(exc)
                        keep = []
                        break
                    extra += events
                    if not hit:
                        keep.append(plan)
                before, plans = [*before, *extra], keep
            await self._append(
                [
                    *before,
                    *(
                        ItemDispatched(
                            item=plan.item,
                            attempt=plan.attempt,
                            idempotency_key=plan.key,
                            worker=self.executor.name,
                        )
                        for plan in plans
                    ),
                ]
            )
            for plan in plans:
                try:
                    request = self.make_request(plan.item, plan.attempt, plan.key, plan.value)
                    handle = await self.executor.start(request)
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
            except Exception as exc:  # the attempt fails, typed
                if not isinstance(exc, LedgerWriteFailed):  # that one ends the run, said then
                    self.warn(f"engine: error while running item {item!r}: {_describe(exc)}")
                with contextlib.suppress(Exception):
                    await handle.cancel(force=True)
                outcome = AttemptOutcome(
                    ok=False,
                    duration=time.monotonic() - started,
                    error_type="unknown",
                    error=f"engine error while running the attempt: {_describe(exc)}",
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
        self.warn(f"engine: error while {doing} item {item!r} attempt {attempt}: {_describe(exc)}")
        state = self.p.items.items.get(item)
        if state is None or state.status != "running" or state.attempts != attempt:
            return  # its outcome is recorded; what failed came after
        message = f"engine error while {doing} the attempt: {_describe(exc)}"
        events = failure_events(self.spec, item, attempt, "unknown", message)
        try:
            await self._append(events)
            await self._after_outcome(item, AttemptOutcome(ok=False, duration=0.0))
        except Exception as again:  # nothing can be recorded: stop the run
            self._stop_fatally(again)

    async def _watch(self, item: str, attempt: int, handle: Attempt) -> AttemptOutcome:
        """The attempt's heartbeats, recorded as they come; then its outcome."""
        async for sample in handle.heartbeats():
            await self._append(
                [
                    Heartbeat(
                        item=item,
                        attempt=attempt,
                        pid=sample.pid,
                        rss=sample.rss,
                        cpu=sample.cpu,
                        output_bytes=sample.output_bytes,
                        touched_at=sample.touched_at,
                    )
                ]
            )
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
                stored = await self.hooks.on_success(item, attempt, self.values.get(item), outcome)
            except (OSError, ArtifactError) as exc:
                outcome = dataclasses.replace(outcome, ok=False, invalid_output=f"artifacts: {exc}")
                events = self._outcome_events(item, attempt, outcome)
            else:
                events = [*stored, *events]
        if outcome.ok:
            # The process is gone: its slot is free at once, and the next
            # item's dispatch is made durable in the same append as this
            # success (one fsync for both). A failure keeps its slot until
            # the failure limits and the circuit breaker have seen it.
            self.running.pop(item, None)
            may = self.stopping is None and not self.p.run.paused
            closed = self.circuit is None or self.p.circuit.state == "closed"
            plans = self._plan(self._free_slots()) if may and closed else []
            await self._dispatch(plans, before=events)
        else:
            await self._append(events)
        await self._after_outcome(item, outcome)

    # --- outcomes ------------------------------------------------------------------------

    def _outcome_events(self, item: str, attempt: int, o: AttemptOutcome) -> list[Event]:
        if o.ok:
            return [
                ItemSucceeded(
                    item=item,
                    attempt=attempt,
                    duration=round(o.duration, 6),
                    exit_code=o.exit_code or 0,
                    result=o.result,
                    stdout=o.stdout,
                    stderr=o.stderr,
                    result_ref=o.result_ref,
                )
            ]
        c = classify(
            exit_code=o.exit_code,
            signal=o.signal,
            stderr_tail=o.stderr_tail,
            stdout_tail=o.stdout_tail,
            timed_out=o.timed_out,
            hung=o.hung,
            interrupted=o.interrupted,
            rules=self.spec.classify,
        )
        error_type, message = c.error_type, c.message
        if not (o.timed_out or o.hung or o.interrupted):
            if o.error_type is not None:
                error_type, message = o.error_type, o.error or o.error_type
            elif o.invalid_output is not None:
                error_type, message = "validation_failed", o.invalid_output
        events: list[Event] = [
            ItemFailed(
                item=item,
                attempt=attempt,
                error_type=error_type,
                signature=c.signature
                if error_type == c.error_type
                else signature(error_type, message),
                message=_bounded(message, 4096),
                duration=round(o.duration, 6),
                exit_code=o.exit_code,
                signal=o.signal,
                stderr_tail=_bounded(o.stderr_tail),
                resources=_resources(),
                stdout=o.stdout,
                stderr=o.stderr,
            )
        ]
        retry = self.spec.retry
        if o.interrupted and self.stopping in ("interrupted", "cancelled"):
            # The engine is stopping: the item runs again on resume, at once.
            events.append(
                ItemRetryScheduled(item=item, attempt=attempt, delay=0.0, not_before=utc_now())
            )
        elif error_type in retry.retry_on and attempt < retry.max_attempts:
            delay = backoff_delay(retry, attempt, self.rng)
            events.append(
                ItemRetryScheduled(
                    item=item,
                    attempt=attempt,
                    delay=round(delay, 6),
                    not_before=rfc3339(self.clock() + delay),
                )
            )
        elif self.spec.on_item_failure == "dlq":
            reason = "retries exhausted" if error_type in retry.retry_on else "not retryable"
            events.append(
                ItemDeadLettered(
                    item=item,
                    attempt=attempt,
                    error_type=error_type,
                    signature=events[0].signature,  # type: ignore[attr-defined]
                    reason=reason,
                )
            )
        return events

    async def _after_outcome(self, item: str, outcome: AttemptOutcome) -> None:
        circuit = self.circuit
        state = self.p.circuit
        if circuit is not None:
            if state.state == "half_open":
                if outcome.ok:
                    await self._append([CircuitClosed(reason=f"probe {item} succeeded")])
                elif state.last_type is not None and state.streak > 0:
                    await self._append(
                        [
                            CircuitOpened(
                                failures=state.streak,
                                error_type=state.last_type,
                                cooldown=circuit.cooldown,
                            )
                        ]
                    )
                else:
                    await self._append([CircuitClosed(reason=f"probe {item} failed otherwise")])
            elif state.state == "closed" and state.streak >= circuit.threshold:
                assert state.last_type is not None
                await self._append(
                    [
                        CircuitOpened(
                            failures=state.streak,
                            error_type=state.last_type,
                            cooldown=circuit.cooldown,
                        )
                    ]
                )
        final = self.p.items.items[item].status in ("dead", "failed")
        if final and not outcome.ok and self.stopping is None:
            if self.spec.on_item_failure == "fail":
                self.stop("item_failed")
            elif self._failure_limit_reached():
                self.stop("max_failures")

    def _failure_limit_reached(self) -> bool:
        counts = self.p.items.counts
        failures = counts["dead"] + counts["failed"]
        if self.spec.max_failures is not None and failures >= self.spec.max_failures:
            return True
        threshold = self.spec.failure_threshold
        if threshold is not None:
            finished = failures + counts["succeeded"]
            minimum = min(10, len(self.p.items.items))
            if finished >= minimum and failures / finished >= threshold:
                return True
        return False


def abandon_events(spec: MapSpec, item: str, attempt: int, message: str) -> list[Event]:
    """Events for an attempt whose engine died before its outcome was recorded.

    The attempt counts: it fails as ``interrupted``, and is retried at once
    while attempts remain (``interrupted`` retries by default), or goes
    where ``on_item_failure`` says.
    """
    stable = "the engine stopped before this attempt's outcome was recorded"
    return failure_events(spec, item, attempt, "interrupted", message or stable, stable=stable)


def failure_events(
    spec: MapSpec,
    item: str,
    attempt: int,
    error_type: str,
    message: str,
    *,
    stable: str | None = None,
) -> list[Event]:
    """A failed attempt without an outcome from its executor, and what follows it.

    It is retried at once while attempts remain and ``error_type`` is retried,
    else it goes where ``on_item_failure`` says. ``stable``: the text the
    failure's signature is made of (by default ``message``); the message
    is kept under 4 KiB, so the record always fits.
    """
    message = _bounded(message, 4096)
    sig = signature(error_type, stable if stable is not None else message)
    events: list[Event] = [
        ItemFailed(
            item=item,
            attempt=attempt,
            error_type=error_type,
            signature=sig,
            message=message,
            duration=0.0,
            resources=_resources(),
        )
    ]
    retry = spec.retry
    if error_type in retry.retry_on and attempt < retry.max_attempts:
        events.append(
            ItemRetryScheduled(item=item, attempt=attempt, delay=0.0, not_before=utc_now())
        )
    elif spec.on_item_failure == "dlq":
        reason = "retries exhausted" if error_type in retry.retry_on else "not retryable"
        events.append(
            ItemDeadLettered(
                item=item, attempt=attempt, error_type=error_type, signature=sig, reason=reason
            )
        )
    return events


def _describe(exc: BaseException) -> str:
    """An exception as one short line: its type and message."""
    text = " ".join(str(exc).split()) or "(no message)"
    if len(text) > 500:
        text = text[:500] + "..."
    return f"{type(exc).__name__}: {text}"


def _bounded(text: str, limit: int = 64 * 1024) -> str:
    """The end of ``text``, at most ``limit`` bytes as JSON (escapes counted: a control
    character takes six), so that the record holding it always fits."""
    if not text.isascii():
        text = text.encode("utf-8", "replace").decode("utf-8")  # no lone surrogates
    size = len(msgspec.json.encode(text))
    while size > limit:
        keep = len(text) * limit // size - 1
        text = text[len(text) - keep :] if keep > 0 else ""
        size = len(msgspec.json.encode(text))
    return text


def _resources() -> dict[str, float]:
    """Load, free memory and free disk when a failure happened."""
    out: dict[str, float] = {}
    with contextlib.suppress(OSError):
        out["load1"] = round(os.getloadavg()[0], 2)
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                out["mem_available_mb"] = round(int(line.split()[1]) / 1024, 1)
                break
    with contextlib.suppress(OSError):
        out["disk_free_mb"] = round(shutil.disk_usage(Path.cwd()).free / 2**20, 1)
    return out
