"""The map's decisions, as pure functions: retry or dead-letter, the circuit, failure limits,
the run's budget.

Each takes what happened (a failure, an outcome), the projections as they
stand (read, never changed), the workflow's settings and, where time or
chance matter, the clock's reading (epoch seconds) and a random generator;
each returns the events to append, or what the run must do. Nothing here
appends, sleeps or reads a clock: the live scheduler and recovery after a
crash call the same functions, and tests call them without processes.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from engine.workflow.spec import BudgetSpec, CircuitBreakerSpec, MapSpec, RetrySpec
from ledger.events import (
    AgentUsage,
    BudgetExhausted,
    CircuitClosed,
    CircuitHalfOpen,
    CircuitOpened,
    Event,
    ItemDeadLettered,
    ItemFailed,
    ItemRetryScheduled,
    ItemSucceeded,
)
from ledger.payloads_limits import ITEM_BUDGET_SPENT
from ledger.times import epoch, rfc3339
from projections.circuit import CircuitProjection
from projections.items import ItemsProjection
from projections.queue import PendingProjection
from projections.replay import Projections

__all__ = [
    "MAX_RETRY_DELAY",
    "Cause",
    "ItemHistory",
    "Stop",
    "backoff_delay",
    "budget_exhausted",
    "circuit_after_outcome",
    "circuit_half_open",
    "failure_limit_reached",
    "failure_stop",
    "half_open_at",
    "item_history",
    "probe_limit",
    "retry_or_dead_letter",
    "usage_limit_circuit",
]

MAX_RETRY_DELAY = 7 * 86400.0
"""The longest wait before a retry, whatever the retry settings compute."""

Cause = Literal["outcome", "stopping", "no_outcome"]
"""How a failure came about, which decides how it is retried:

* ``outcome``: the executor reported it; retried after a backoff while
  attempts remain and its type is retried;
* ``stopping``: interrupted because the engine is stopping (a signal, a
  cancel); it runs again on resume, at once, whatever attempts remain;
* ``no_outcome``: the attempt has no outcome from its executor (its engine
  died, or the engine's own code failed around it); retried at once while
  attempts remain and its type is retried.
"""

Stop = Literal["item_failed", "max_failures"]
"""Why a failure stops dispatching: ``on_item_failure: fail``, or a failure limit."""


@dataclass(frozen=True, slots=True)
class ItemHistory:
    """What the ledger says of a failed item beyond its failure, as its retry depends on it."""

    waits: int = 0
    """Its earlier attempts that waited for a usage limit's reset (not counted against
    ``max_attempts``)."""
    spent_usd: float = 0.0
    """Its recorded spend, every attempt together, the failed one included."""
    max_cost_usd: float | None = None
    """``budget.max_item_cost_usd``: once spent, it gets no further attempt."""

    @property
    def budget_spent(self) -> bool:
        return self.max_cost_usd is not None and self.spent_usd >= self.max_cost_usd


NO_HISTORY = ItemHistory()


def item_history(
    p: Projections, item: str, usage: AgentUsage | None, budget: BudgetSpec
) -> ItemHistory:
    """``item``'s earlier attempts as the projections hold them, with ``usage`` (the failed
    attempt's, not yet applied) spent too."""
    state = p.items.items.get(item)
    spent = p.budget.by_item.get(item, 0.0) + (usage.cost_usd if usage is not None else 0.0)
    return ItemHistory(
        waits=state.waits if state is not None else 0,
        spent_usd=round(spent, 10),
        max_cost_usd=budget.max_item_cost_usd,
    )


# --- retry or dead-letter ------------------------------------------------------------------


def backoff_delay(retry: RetrySpec, failed_attempt: int, rng: random.Random) -> float:
    """Seconds before the attempt after ``failed_attempt`` (1-based).

    ``fixed``: ``initial``; ``linear``: ``initial * n``; ``exponential``:
    ``initial * multiplier ** (n - 1)``; ``fibonacci``: ``initial * fib(n)``
    (1, 1, 2, 3, 5, ...); each capped at ``max``. With ``jitter``, the delay
    is drawn uniformly from [delay/2, delay], or from delay * (1 -/+ f/2)
    with ``jitter_factor`` f (which may pass ``max`` by up to f/2). Always a
    finite number from 0 to :data:`MAX_RETRY_DELAY`: a delay that overflows
    or is not a number waits the longest. Map retries and step retries both
    wait by it.
    """
    n = failed_attempt
    if retry.backoff == "fixed":
        delay = retry.initial
    elif retry.backoff == "linear":
        delay = retry.initial * n
    elif retry.backoff == "fibonacci":
        delay = _fibonacci_delay(retry.initial, n, retry.max)
    else:
        try:
            delay = retry.initial * retry.multiplier ** (n - 1)
        except OverflowError:  # e.g. 1000.0 ** 200: far past any max
            delay = retry.max
    delay = _bounded_delay(min(delay, retry.max))
    if retry.jitter:
        factor = retry.jitter_factor
        if factor is None:
            delay = rng.uniform(delay / 2, delay)
        else:
            delay = rng.uniform(delay * (1 - factor / 2), delay * (1 + factor / 2))
    return _bounded_delay(delay)


def _fibonacci_delay(initial: float, n: int, cap: float) -> float:
    """``initial * fib(n)``, fib(1) = fib(2) = 1; the sum stops growing once past ``cap``."""
    if initial <= 0:
        return 0.0
    current, following = 1.0, 1.0
    for _ in range(n - 1):
        if initial * current >= cap:
            break  # capped anyway: no need to count on towards an overflow
        current, following = following, current + following
    return initial * current


def _bounded_delay(delay: float) -> float:
    if math.isnan(delay):
        return MAX_RETRY_DELAY
    return min(max(delay, 0.0), MAX_RETRY_DELAY)


def retry_or_dead_letter(
    spec: MapSpec,
    failed: ItemFailed,
    *,
    cause: Cause,
    now: float,
    rng: random.Random | None = None,
    history: ItemHistory = NO_HISTORY,
) -> list[Event]:
    """What follows a failed attempt: its retry, its dead-lettering, or nothing.

    A ``stopping`` failure is always retried at ``now``. An item whose spend
    reached its budget (``history``) gets no further attempt. A failure that
    says when the usage limit it hit resets (``resets_at``, still ahead) is
    retried at that time, its wait not counted against ``max_attempts``
    unless ``retry.count_usage_limits``. Else a retry is scheduled while
    attempts remain (those that only waited for a reset not counted) and the
    error type is one ``retry.retry_on`` lists (after :func:`backoff_delay`
    for an ``outcome``, at ``now`` otherwise). Else the item goes where
    ``on_item_failure`` says: ``dlq`` dead-letters it, ``fail`` and
    ``ignore`` leave it failed. ``rng`` (needed for an ``outcome``) is drawn
    from only for a backoff with jitter.
    """
    item, attempt, error_type = failed.item, failed.attempt, failed.error_type
    retry = spec.retry
    if cause == "stopping":
        return [ItemRetryScheduled(item=item, attempt=attempt, delay=0.0, not_before=rfc3339(now))]
    retried = error_type in retry.retry_on and not history.budget_spent
    counted = attempt - history.waits
    waits = retried and failed.resets_at is not None and epoch(failed.resets_at) > now
    if waits and (not retry.count_usage_limits or counted < retry.max_attempts):
        assert failed.resets_at is not None
        return [
            ItemRetryScheduled(
                item=item,
                attempt=attempt,
                delay=round(epoch(failed.resets_at) - now, 6),
                not_before=failed.resets_at,
                counted=retry.count_usage_limits,
            )
        ]
    if retried and counted < retry.max_attempts:
        delay = 0.0
        if cause == "outcome":
            assert rng is not None, "a backoff needs a random generator"
            delay = backoff_delay(retry, counted, rng)
        return [
            ItemRetryScheduled(
                item=item,
                attempt=attempt,
                delay=round(delay, 6),
                not_before=rfc3339(now + delay),
            )
        ]
    if spec.on_item_failure == "dlq":
        if history.budget_spent:
            reason = ITEM_BUDGET_SPENT
        elif error_type in retry.retry_on:
            reason = "retries exhausted"
        else:
            reason = "not retryable"
        return [
            ItemDeadLettered(
                item=item,
                attempt=attempt,
                error_type=error_type,
                signature=failed.signature,
                reason=reason,
            )
        ]
    return []


# --- the circuit breaker -------------------------------------------------------------------


def half_open_at(circuit: CircuitProjection) -> float | None:
    """When an open circuit may let a probe through (epoch seconds); None unless open.

    Its ``until`` when it has one (a usage limit's reset), else its opening's
    time plus its cooldown.
    """
    if circuit.state != "open":
        return None
    if circuit.until is not None:
        return epoch(circuit.until)
    if circuit.opened_at is None:
        return None
    return epoch(circuit.opened_at) + circuit.cooldown


def usage_limit_circuit(
    circuit: CircuitProjection, events: Sequence[Event], *, now: float
) -> list[Event]:
    """``circuit.opened`` until the reset of the usage limit a failure among ``events`` hit.

    A failure that says when its usage limit resets (``resets_at``, after
    ``now``) opens the circuit for every item until then, whether or not the
    workflow has a ``circuit_breaker``; appended with the failure, so no
    dispatch comes between. A circuit already open until that time or later
    stays as it is; one open until an earlier time (or half open, its probe
    having hit the limit again) opens until the later reset.
    """
    failed = next((e for e in events if isinstance(e, ItemFailed)), None)
    if failed is None or failed.resets_at is None:
        return []
    reset = epoch(failed.resets_at)
    if reset <= now:
        return []
    due = half_open_at(circuit)
    if due is not None and due >= reset:
        return []
    streak = circuit.streak + 1 if failed.error_type in circuit.on else 1
    return [
        CircuitOpened(
            failures=streak,
            error_type=failed.error_type,
            cooldown=round(reset - now, 6),
            until=failed.resets_at,
            item=failed.item,
        )
    ]


def circuit_half_open(
    spec: CircuitBreakerSpec | None,
    circuit: CircuitProjection,
    pending: PendingProjection,
    *,
    now: float,
) -> list[Event]:
    """``circuit.half_open`` once an open circuit's cooldown has passed at ``now``
    (or its ``until``, see :func:`half_open_at`).

    It says how many probes may run at once (``half_open_requests``) and how
    many must pass to close it (``success_threshold``), and names the first
    probe: the next item ready at ``now``. Without a ``circuit_breaker``
    (a circuit a usage limit opened), one probe, which must pass.
    """
    due = half_open_at(circuit)
    if due is None or now < due:
        return []
    return [
        CircuitHalfOpen(
            probe_item=pending.next_ready(rfc3339(now)),
            probes=spec.half_open_requests if spec is not None else 1,
            success_threshold=spec.success_threshold if spec is not None else 1,
        )
    ]


def probe_limit(circuit: CircuitProjection, free: int, in_flight: int) -> int:
    """How many of ``free`` slots may be taken now: while half open, only as many as
    its probes at once less the ``in_flight`` attempts; else all of them."""
    if circuit.state != "half_open":
        return free
    return max(0, min(free, circuit.probes - in_flight))


def circuit_after_outcome(
    spec: CircuitBreakerSpec | None, circuit: CircuitProjection, item: str, *, ok: bool
) -> list[Event]:
    """The circuit's transition once ``item``'s outcome (and its decision) is applied.

    Closed: it opens when the streak of qualifying failures reaches the
    threshold. Half open (``item`` was a probe): a failure that left the
    streak standing opens it again; any other outcome passed, a success or
    a failure of another type (which reset the streak), and once
    ``success_threshold`` probes passed it closes. Without a
    ``circuit_breaker`` there is no streak: only a usage limit opens the
    circuit (:func:`usage_limit_circuit`, which reopens it too when a probe
    hits the limit again), and any other outcome of a probe closes it.
    """
    if circuit.state == "half_open":
        if spec is not None and not ok and circuit.last_type is not None and circuit.streak > 0:
            return [_opened(spec, circuit)]
        if circuit.passed < circuit.success_threshold:
            return []
        if ok:
            return [CircuitClosed(reason=f"probe {item} succeeded{_of(circuit)}")]
        return [CircuitClosed(reason=f"probe {item} failed otherwise{_of(circuit)}")]
    if spec is not None and circuit.state == "closed" and circuit.streak >= spec.threshold:
        return [_opened(spec, circuit)]
    return []


def _of(circuit: CircuitProjection) -> str:
    """How many probes passed, said when more than one had to."""
    need = circuit.success_threshold
    return "" if need == 1 else f" ({circuit.passed} of {need} probes passed)"


def _opened(spec: CircuitBreakerSpec, circuit: CircuitProjection) -> CircuitOpened:
    assert circuit.last_type is not None  # a streak counts failures of a type
    return CircuitOpened(
        failures=circuit.streak, error_type=circuit.last_type, cooldown=spec.cooldown
    )


# --- failure limits ------------------------------------------------------------------------


def failure_stop(spec: MapSpec, items: ItemsProjection, item: str, *, ok: bool) -> Stop | None:
    """Whether ``item``'s outcome (applied) stops dispatching, and why.

    Only an item that failed for good counts (dead, or failed with
    ``on_item_failure`` not ``dlq``): with ``on_item_failure: fail`` it stops
    the run; else the run stops once a failure limit is reached.
    """
    if ok or items.items[item].status not in ("dead", "failed"):
        return None
    if spec.on_item_failure == "fail":
        return "item_failed"
    return "max_failures" if failure_limit_reached(spec, items) else None


def failure_limit_reached(spec: MapSpec, items: ItemsProjection) -> bool:
    """``max_failures`` items failed for good, or ``failure_threshold`` of those finished.

    The threshold is judged once at least 10 items (or all of them, when
    fewer) have finished.
    """
    counts = items.counts
    failures = counts["dead"] + counts["failed"]
    if spec.max_failures is not None and failures >= spec.max_failures:
        return True
    threshold = spec.failure_threshold
    if threshold is not None:
        finished = failures + counts["succeeded"]
        minimum = min(10, len(items.items))
        if finished >= minimum and failures / finished >= threshold:
            return True
    return False


# --- the run's budget ----------------------------------------------------------------------


def budget_exhausted(
    budget: BudgetSpec,
    p: Projections,
    before: Sequence[Event] = (),
    *,
    wanted: bool | None = None,
) -> list[Event] | None:
    """Whether the run's budget stops new attempts: None while it leaves room; else the
    events to record (``budget.exhausted``; none when it is recorded already).

    The budget in force is the last resume's (``--budget``), else
    ``budget.max_cost_usd``; it is spent once the recorded spend, with what the
    outcomes among ``before`` (about to be appended) spent, reaches it. Only
    while something would spend (``wanted``; by default: items wait for an
    attempt, since a run whose last attempt spent it is done).
    """
    spend = p.budget
    limit = spend.limit(budget.max_cost_usd)
    spending = sum(
        e.usage.cost_usd
        for e in before
        if isinstance(e, ItemSucceeded | ItemFailed) and e.usage is not None
    )
    spent = round(spend.spent_usd + spending, 10)
    if wanted is None:
        wanted = not p.pending.empty
    if limit is None or spent < limit or not wanted:
        return None
    recorded = spend.exhausted
    if recorded is not None and recorded.max_cost_usd == limit:
        return []
    return [BudgetExhausted(spent_usd=spent, max_cost_usd=float(limit))]
