"""The map's decisions without processes: projections from hand-made records, then the policy.

Each test folds records into :class:`Projections` as the engine would, asks
:mod:`engine.map.policy` (or :mod:`engine.map.outcomes`) what follows, and
checks the events it returns.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.exec.executor import AttemptOutcome
from engine.map import policy
from engine.map.classify import signature
from engine.map.outcomes import ABANDONED, abandon_events, failure_events, outcome_events
from engine.workflow.spec import TRANSIENT_ERROR_TYPES, CircuitBreakerSpec, MapSpec
from ledger.events import (
    CircuitClosed,
    CircuitHalfOpen,
    CircuitOpened,
    Event,
    ItemDeadLettered,
    ItemDispatched,
    ItemEnqueued,
    ItemFailed,
    ItemRequeued,
    ItemRetryScheduled,
    ItemSucceeded,
    Record,
)
from ledger.times import epoch, rfc3339
from projections.replay import Projections

NOW = epoch("2030-06-01T12:00:00.000000Z")
"""The injected clock's reading: far from the real time, so nothing can come from that."""


def _spec(**settings: Any) -> MapSpec:
    return MapSpec.model_validate({"items": [], "agent_template": [{"run": "true"}], **settings})


def _circuit(**settings: Any) -> CircuitBreakerSpec:
    return CircuitBreakerSpec.model_validate(settings)


class _Run:
    """Projections fed with records made by hand, as the engine's appends feed them."""

    def __init__(self, items: Sequence[str] = ("a", "b", "c", "d"), **circuit: Any) -> None:
        on = circuit.get("on", ["rate_limited", "api_error"])
        self.p = Projections(circuit_on=on)
        self.p.enable_scheduling()
        self.seq = 0
        self.apply(*(ItemEnqueued(item=item, index=i) for i, item in enumerate(items)))

    def apply(self, *events: Event, ts: float = NOW) -> None:
        for event in events:
            record = Record(v=1, seq=self.seq, ts=rfc3339(ts), run="r", data=event, hash="0" * 64)
            self.p.apply(record)
            self.seq += 1

    def dispatch(self, item: str) -> int:
        attempt = self.p.items.items[item].attempts + 1
        self.apply(ItemDispatched(item=item, attempt=attempt, idempotency_key="ik:x"))
        return attempt

    def fail(self, item: str, error_type: str = "rate_limited") -> ItemFailed:
        attempt = self.dispatch(item)
        failed = _failed(item, attempt, error_type)
        self.apply(failed)
        return failed

    def succeed(self, item: str) -> None:
        attempt = self.dispatch(item)
        self.apply(ItemSucceeded(item=item, attempt=attempt, duration=0.1))


def _failed(item: str, attempt: int, error_type: str) -> ItemFailed:
    return ItemFailed(
        item=item, attempt=attempt, error_type=error_type, signature=signature(error_type, "x")
    )


# --- retry or dead-letter -------------------------------------------------------------------


def test_a_retry_waits_its_backoff_from_the_injected_now() -> None:
    spec = _spec(retry={"max_attempts": 3, "initial": "5s", "multiplier": 3, "jitter": False})
    rng = random.Random(7)
    first = policy.retry_or_dead_letter(
        spec, _failed("a", 1, "timeout"), cause="outcome", now=NOW, rng=rng
    )
    assert first == [
        ItemRetryScheduled(item="a", attempt=1, delay=5.0, not_before=rfc3339(NOW + 5))
    ]
    second = policy.retry_or_dead_letter(
        spec, _failed("a", 2, "timeout"), cause="outcome", now=NOW + 60, rng=rng
    )
    assert second == [
        ItemRetryScheduled(item="a", attempt=2, delay=15.0, not_before=rfc3339(NOW + 75))
    ]


def test_a_jittered_delay_comes_from_the_generator_given() -> None:
    spec = _spec(retry={"max_attempts": 3, "initial": "8s", "jitter": True})
    (retry,) = policy.retry_or_dead_letter(
        spec, _failed("a", 1, "timeout"), cause="outcome", now=NOW, rng=random.Random(3)
    )
    expected = random.Random(3).uniform(4.0, 8.0)
    assert isinstance(retry, ItemRetryScheduled)
    assert retry.delay == round(expected, 6)
    assert retry.not_before == rfc3339(NOW + expected)


def test_spent_attempts_dead_letter_the_item() -> None:
    spec = _spec(retry={"max_attempts": 2})
    failed = _failed("a", 2, "timeout")
    events = policy.retry_or_dead_letter(
        spec, failed, cause="outcome", now=NOW, rng=random.Random()
    )
    assert events == [
        ItemDeadLettered(
            item="a",
            attempt=2,
            error_type="timeout",
            signature=failed.signature,
            reason="retries exhausted",
        )
    ]


@pytest.mark.parametrize("attempt", [1, 3])
def test_an_error_type_not_retried_dead_letters_at_once(attempt: int) -> None:
    spec = _spec(retry={"max_attempts": 3, "retry_on": ["rate_limited"]})
    for error_type in ("command_failed", "timeout"):
        failed = _failed("a", attempt, error_type)
        (dead,) = policy.retry_or_dead_letter(spec, failed, cause="outcome", now=NOW, rng=None)
        assert dead == ItemDeadLettered(
            item="a",
            attempt=attempt,
            error_type=error_type,
            signature=failed.signature,
            reason="not retryable",
        )


@pytest.mark.parametrize("on_item_failure", ["fail", "ignore"])
def test_without_a_dlq_a_final_failure_has_no_decision(on_item_failure: str) -> None:
    spec = _spec(on_item_failure=on_item_failure, retry={"max_attempts": 1})
    failed = _failed("a", 1, "timeout")
    assert policy.retry_or_dead_letter(spec, failed, cause="outcome", now=NOW, rng=None) == []


def test_an_attempt_interrupted_by_a_stopping_engine_runs_again_at_once() -> None:
    spec = _spec(retry={"max_attempts": 1})  # even with no attempt left
    failed = _failed("a", 1, "interrupted")
    events = policy.retry_or_dead_letter(spec, failed, cause="stopping", now=NOW)
    assert events == [ItemRetryScheduled(item="a", attempt=1, delay=0.0, not_before=rfc3339(NOW))]


def test_an_attempt_without_an_outcome_retries_at_once_without_a_backoff() -> None:
    spec = _spec(retry={"max_attempts": 3, "initial": "1m", "jitter": True})
    failed = _failed("a", 1, "interrupted")
    events = policy.retry_or_dead_letter(spec, failed, cause="no_outcome", now=NOW)
    assert events == [ItemRetryScheduled(item="a", attempt=1, delay=0.0, not_before=rfc3339(NOW))]


# --- the outcome's events, live and in recovery -----------------------------------------------


def test_a_failed_outcome_is_classified_then_decided() -> None:
    spec = _spec(retry={"max_attempts": 3, "initial": "2s", "jitter": False})
    outcome = AttemptOutcome(ok=False, duration=1.5, exit_code=1, stderr_tail="HTTP 429\n")
    failed, retry = outcome_events(
        spec, "a", 1, outcome, stopping=False, now=NOW, rng=random.Random(), resources={"x": 1.0}
    )
    assert isinstance(failed, ItemFailed)
    assert (failed.error_type, failed.duration, failed.resources) == ("rate_limited", 1.5, {"x": 1})
    assert retry == ItemRetryScheduled(item="a", attempt=1, delay=2.0, not_before=rfc3339(NOW + 2))


def test_a_success_is_one_event() -> None:
    outcome = AttemptOutcome(ok=True, duration=0.25, result={"n": 1})
    events = outcome_events(
        _spec(), "a", 2, outcome, stopping=True, now=NOW, rng=random.Random(), resources={}
    )
    assert events == [ItemSucceeded(item="a", attempt=2, duration=0.25, result={"n": 1})]


def test_an_interrupted_outcome_retries_at_once_only_when_the_engine_stops() -> None:
    spec = _spec(retry={"max_attempts": 1})
    outcome = AttemptOutcome(ok=False, duration=1.0, interrupted=True, signal=15)
    for stopping, decision in ((True, ItemRetryScheduled), (False, ItemDeadLettered)):
        failed, then = outcome_events(
            spec, "a", 1, outcome, stopping=stopping, now=NOW, rng=random.Random(), resources={}
        )
        assert isinstance(failed, ItemFailed) and failed.error_type == "interrupted"
        assert isinstance(then, decision)


def test_recovery_decides_as_the_live_scheduler_does() -> None:
    spec = _spec(retry={"max_attempts": 2})
    first = abandon_events(spec, "a", 1, "", now=NOW, resources={})
    assert first == [
        ItemFailed(
            item="a",
            attempt=1,
            error_type="interrupted",
            signature=signature("interrupted", ABANDONED),
            message=ABANDONED,
        ),
        ItemRetryScheduled(item="a", attempt=1, delay=0.0, not_before=rfc3339(NOW)),
    ]
    # The last attempt: dead, with the same signature whatever the message says.
    failed, dead = abandon_events(spec, "a", 2, "2 leftovers stopped", now=NOW, resources={})
    assert isinstance(failed, ItemFailed) and failed.message == "2 leftovers stopped"
    assert failed.signature == signature("interrupted", ABANDONED)
    assert dead == policy.retry_or_dead_letter(spec, failed, cause="no_outcome", now=NOW)[0]
    assert isinstance(dead, ItemDeadLettered) and dead.reason == "retries exhausted"


def test_an_engine_error_is_a_failure_of_its_type_decided_the_same_way() -> None:
    spec = _spec(retry={"max_attempts": 3})  # unknown is not retried by default
    failed, dead = failure_events(spec, "a", 1, "unknown", "boom", now=NOW, resources={})
    assert isinstance(failed, ItemFailed) and failed.signature == signature("unknown", "boom")
    assert isinstance(dead, ItemDeadLettered) and dead.reason == "not retryable"


# --- the dispatch order ---------------------------------------------------------------------


def _retry_at(run: _Run, item: str, delay: float) -> None:
    """``item`` fails once and is scheduled to retry ``delay`` seconds after NOW."""
    failed = run.fail(item)
    run.apply(
        ItemRetryScheduled(
            item=item, attempt=failed.attempt, delay=delay, not_before=rfc3339(NOW + delay)
        )
    )


def _back_from_the_dlq(run: _Run, item: str) -> None:
    failed = run.fail(item, "command_failed")
    run.apply(
        ItemDeadLettered(
            item=item,
            attempt=failed.attempt,
            error_type=failed.error_type,
            signature=failed.signature,
            reason="not retryable",
        ),
        ItemRequeued(item=item),
    )


def test_due_retries_run_first_earliest_due_first_then_fresh_items_then_the_dlq() -> None:
    run = _Run(items=["late", "f1", "dead", "early", "f2", "later", "f3"])
    _retry_at(run, "late", 2.0)
    _retry_at(run, "early", 1.0)
    _retry_at(run, "later", 100.0)
    _back_from_the_dlq(run, "dead")
    pending = run.p.pending
    assert pending.ready_items(rfc3339(NOW + 0.5), 10) == ["f1", "f2", "f3", "dead"]
    assert pending.next_time() == rfc3339(NOW + 1.0)
    assert pending.next_ready(rfc3339(NOW + 1.5)) == "early"
    assert pending.ready_items(rfc3339(NOW + 1.5), 10) == ["early", "f1", "f2", "f3", "dead"]
    assert pending.ready_items(rfc3339(NOW + 5), 10) == ["early", "late", "f1", "f2", "f3", "dead"]
    assert pending.ready_items(rfc3339(NOW + 5), 3, exclude={"early"}) == ["late", "f1", "f2"]
    assert pending.next_time() == rfc3339(NOW + 100.0)  # "later" is not due yet
    # Taking the first retry leaves the rest in order.
    run.dispatch("early")
    assert pending.ready_items(rfc3339(NOW + 5), 2) == ["late", "f1"]


def test_an_interrupted_attempt_runs_before_fresh_items_and_a_dlq_item_stays_last() -> None:
    run = _Run(items=["f1", "dead", "cut"])
    _back_from_the_dlq(run, "dead")
    _retry_at(run, "dead", 0.0)  # back from the DLQ, failed again: still after fresh items
    _retry_at(run, "cut", 0.0)  # interrupted by a stopping engine: at once, before fresh items
    assert run.p.pending.ready_items(rfc3339(NOW), 10) == ["cut", "f1", "dead"]


# --- the circuit breaker --------------------------------------------------------------------


def test_the_circuit_opens_after_threshold_consecutive_failures_and_not_before() -> None:
    spec = _circuit(threshold=3, cooldown="30s", on=["rate_limited"])
    run = _Run(**spec.model_dump())
    circuit = run.p.circuit
    run.fail("a")
    run.fail("b")
    assert policy.circuit_after_outcome(spec, circuit, "b", ok=False) == []
    run.succeed("c")  # a success breaks the streak
    assert policy.circuit_after_outcome(spec, circuit, "c", ok=True) == []
    run.fail("a")
    run.fail("b", "command_failed")  # so does a failure of another type
    run.fail("c")
    run.fail("d", "interrupted")  # an interrupted attempt neither counts nor breaks it
    run.fail("d")
    assert policy.circuit_after_outcome(spec, circuit, "d", ok=False) == []
    run.fail("a")
    events = policy.circuit_after_outcome(spec, circuit, "a", ok=False)
    assert events == [CircuitOpened(failures=3, error_type="rate_limited", cooldown=30.0)]


def test_without_a_circuit_breaker_nothing_opens() -> None:
    run = _Run()
    for item in "abcd":
        run.fail(item)
    assert policy.circuit_after_outcome(None, run.p.circuit, "d", ok=False) == []
    assert policy.circuit_half_open(None, run.p.circuit, run.p.pending, now=NOW + 1e6) == []


def test_an_open_circuit_half_opens_once_its_cooldown_has_passed() -> None:
    spec = _circuit(threshold=1, cooldown="30s", on=["rate_limited"])
    run = _Run(**spec.model_dump())
    failed = run.fail("a")
    run.apply(
        *policy.retry_or_dead_letter(_spec(), failed, cause="no_outcome", now=NOW),
        *policy.circuit_after_outcome(spec, run.p.circuit, "a", ok=False),
        ts=NOW + 1,
    )
    assert run.p.circuit.state == "open"
    assert policy.half_open_at(run.p.circuit) == NOW + 31
    pending = run.p.pending
    assert policy.circuit_half_open(spec, run.p.circuit, pending, now=NOW + 30.999) == []
    # The probe is the next item ready then: the retry, due, goes before fresh items.
    assert policy.circuit_half_open(spec, run.p.circuit, pending, now=NOW + 31) == [
        CircuitHalfOpen(probe_item="a")
    ]
    run.apply(CircuitHalfOpen(probe_item="a"))
    assert policy.half_open_at(run.p.circuit) is None
    assert policy.circuit_half_open(spec, run.p.circuit, pending, now=NOW + 99) == []


def _half_open(spec: CircuitBreakerSpec) -> _Run:
    run = _Run(**spec.model_dump())
    run.fail("a")
    run.apply(*policy.circuit_after_outcome(spec, run.p.circuit, "a", ok=False))
    run.apply(CircuitHalfOpen(probe_item="b"))
    assert run.p.circuit.state == "half_open"
    return run


def test_a_half_open_circuit_closes_after_its_probe_succeeds() -> None:
    spec = _circuit(threshold=1, on=["rate_limited"])
    run = _half_open(spec)
    run.succeed("b")
    events = policy.circuit_after_outcome(spec, run.p.circuit, "b", ok=True)
    assert events == [CircuitClosed(reason="probe b succeeded")]
    run.apply(*events)
    assert run.p.circuit.state == "closed"
    assert policy.circuit_after_outcome(spec, run.p.circuit, "c", ok=True) == []


def test_a_failed_probe_opens_the_circuit_again_or_closes_it() -> None:
    spec = _circuit(threshold=1, cooldown="1m", on=["rate_limited"])
    run = _half_open(spec)
    run.fail("b")
    assert policy.circuit_after_outcome(spec, run.p.circuit, "b", ok=False) == [
        CircuitOpened(failures=2, error_type="rate_limited", cooldown=60.0)
    ]
    run = _half_open(spec)
    run.fail("b", "command_failed")  # not the circuit's cause: it closes
    assert policy.circuit_after_outcome(spec, run.p.circuit, "b", ok=False) == [
        CircuitClosed(reason="probe b failed otherwise")
    ]


# --- failure limits -------------------------------------------------------------------------


def _dead(run: _Run, item: str, spec: MapSpec) -> None:
    failed = run.fail(item, "command_failed")
    run.apply(*policy.retry_or_dead_letter(spec, failed, cause="outcome", now=NOW, rng=None))


def test_max_failures_stops_the_run_at_the_limit() -> None:
    spec = _spec(max_failures=2)
    run = _Run()
    _dead(run, "a", spec)
    assert policy.failure_stop(spec, run.p.items, "a", ok=False) is None
    run.succeed("b")
    assert policy.failure_stop(spec, run.p.items, "b", ok=True) is None
    _dead(run, "c", spec)
    assert policy.failure_stop(spec, run.p.items, "c", ok=False) == "max_failures"


def test_a_failure_that_is_retried_does_not_count() -> None:
    spec = _spec(max_failures=1)
    run = _Run()
    failed = run.fail("a", "timeout")
    events = policy.retry_or_dead_letter(
        spec, failed, cause="outcome", now=NOW, rng=random.Random()
    )
    run.apply(*events)
    assert run.p.items.items["a"].status == "pending"
    assert policy.failure_stop(spec, run.p.items, "a", ok=False) is None


def test_the_failure_threshold_is_judged_once_enough_items_finished() -> None:
    spec = _spec(failure_threshold=0.5)
    run = _Run()  # four items: all of them must have finished
    _dead(run, "a", spec)
    _dead(run, "b", spec)
    assert policy.failure_stop(spec, run.p.items, "b", ok=False) is None
    run.succeed("c")
    _dead(run, "d", spec)
    assert policy.failure_stop(spec, run.p.items, "d", ok=False) == "max_failures"
    assert policy.failure_limit_reached(_spec(failure_threshold=0.8), run.p.items) is False


def test_on_item_failure_fail_stops_at_the_first_item_failed_for_good() -> None:
    spec = _spec(on_item_failure="fail", retry={"max_attempts": 1})
    run = _Run()
    _dead(run, "a", spec)
    assert run.p.items.items["a"].status == "failed"
    assert policy.failure_stop(spec, run.p.items, "a", ok=False) == "item_failed"


# --- properties -----------------------------------------------------------------------------

_types = st.sampled_from(
    ["timeout", "rate_limited", "command_failed", "interrupted", "unknown", "validation_failed"]
)


@given(
    max_attempts=st.integers(1, 6),
    retry_on=st.lists(st.sampled_from(TRANSIENT_ERROR_TYPES), unique=True),
    on_item_failure=st.sampled_from(["dlq", "fail", "ignore"]),
    error_type=_types,
    cause=st.sampled_from(["outcome", "no_outcome"]),
    seed=st.integers(0, 2**32),
    now=st.floats(0, 4e9),
)
def test_one_decision_at_most_and_never_an_attempt_past_max_attempts(
    max_attempts: int,
    retry_on: list[str],
    on_item_failure: str,
    error_type: str,
    cause: policy.Cause,
    seed: int,
    now: float,
) -> None:
    spec = _spec(
        retry={"max_attempts": max_attempts, "retry_on": retry_on, "initial": "3s"},
        on_item_failure=on_item_failure,
    )
    rng = random.Random(seed)
    attempt = 1
    while True:
        events = policy.retry_or_dead_letter(
            spec, _failed("a", attempt, error_type), cause=cause, now=now, rng=rng
        )
        assert len(events) <= 1  # never both a retry and a dead-lettering
        if not events or not isinstance(events[0], ItemRetryScheduled):
            break
        retry = events[0]
        assert 0.0 <= retry.delay <= policy.MAX_RETRY_DELAY
        assert epoch(retry.not_before) >= now - 1e-6
        assert error_type in retry_on
        attempt += 1
        assert attempt <= max_attempts
    if events:
        (dead,) = events
        assert isinstance(dead, ItemDeadLettered) and on_item_failure == "dlq"
        assert dead.reason == ("retries exhausted" if error_type in retry_on else "not retryable")
    else:
        assert on_item_failure != "dlq"
    assert attempt == (max_attempts if error_type in retry_on else 1)


@given(
    threshold=st.integers(1, 5),
    outcomes=st.lists(st.sampled_from(["ok", "rate_limited", "command_failed", "interrupted"])),
)
def test_a_closed_circuit_opens_exactly_when_the_streak_reaches_the_threshold(
    threshold: int, outcomes: list[str]
) -> None:
    spec = _circuit(threshold=threshold, on=["rate_limited"])
    run = _Run(items=["a"], **spec.model_dump())
    streak = 0
    for outcome in outcomes:
        if outcome == "ok":
            run.succeed("a")
            streak = 0
        else:
            run.fail("a", outcome)
            if outcome == "rate_limited":
                streak += 1
            elif outcome != "interrupted":
                streak = 0
        events = policy.circuit_after_outcome(spec, run.p.circuit, "a", ok=outcome == "ok")
        if streak >= threshold:
            assert events == [
                CircuitOpened(failures=streak, error_type="rate_limited", cooldown=30)
            ]
            break
        assert events == []


# --- usage limits ---------------------------------------------------------------------------


def _limited(item: str, attempt: int, resets: float | None) -> ItemFailed:
    return ItemFailed(
        item=item,
        attempt=attempt,
        error_type="rate_limited",
        signature=signature("rate_limited", "limit"),
        resets_at=rfc3339(resets) if resets is not None else None,
    )


def test_a_usage_limit_s_reset_is_waited_for_without_counting_an_attempt() -> None:
    spec = _spec(retry={"max_attempts": 1})
    failed = _limited("a", 1, NOW + 30)
    history = policy.ItemHistory()
    assert policy.retry_or_dead_letter(
        spec, failed, cause="outcome", now=NOW, rng=random.Random(1), history=history
    ) == [
        ItemRetryScheduled(
            item="a", attempt=1, delay=30.0, not_before=rfc3339(NOW + 30), counted=False
        )
    ]
    # Three waits later, attempt 4 is still the first counted one: with max_attempts 1,
    # a limit again is waited for, and another failure is its last.
    waited = policy.ItemHistory(waits=3)
    again = policy.retry_or_dead_letter(
        spec,
        _limited("a", 4, NOW + 60),
        cause="outcome",
        now=NOW,
        rng=random.Random(1),
        history=waited,
    )
    assert [(e.not_before, e.counted) for e in again if isinstance(e, ItemRetryScheduled)] == [
        (rfc3339(NOW + 60), False)
    ]
    final = policy.retry_or_dead_letter(
        spec,
        _failed("a", 4, "timeout"),
        cause="outcome",
        now=NOW,
        rng=random.Random(1),
        history=waited,
    )
    assert [type(e) for e in final] == [ItemDeadLettered]


def test_count_usage_limits_counts_the_wait_and_exhausts_the_attempts() -> None:
    spec = _spec(retry={"max_attempts": 2, "count_usage_limits": True})
    rng = random.Random(1)
    first = policy.retry_or_dead_letter(
        spec, _limited("a", 1, NOW + 30), cause="outcome", now=NOW, rng=rng
    )
    assert first == [
        ItemRetryScheduled(
            item="a", attempt=1, delay=30.0, not_before=rfc3339(NOW + 30), counted=True
        )
    ]
    second = policy.retry_or_dead_letter(
        spec, _limited("a", 2, NOW + 30), cause="outcome", now=NOW, rng=rng
    )
    assert second == [
        ItemDeadLettered(
            item="a",
            attempt=2,
            error_type="rate_limited",
            signature=signature("rate_limited", "limit"),
            reason="retries exhausted",
        )
    ]


def test_a_reset_past_or_absent_is_a_rate_limit_like_any_other() -> None:
    spec = _spec(retry={"max_attempts": 2, "initial": "5s", "jitter": False})
    for resets in (None, NOW - 1, NOW):
        events = policy.retry_or_dead_letter(
            spec, _limited("a", 1, resets), cause="outcome", now=NOW, rng=random.Random(1)
        )
        assert events == [
            ItemRetryScheduled(item="a", attempt=1, delay=5.0, not_before=rfc3339(NOW + 5))
        ]


def _open_until(
    run: _Run, item: str, reset: float, now: float = NOW, stamped: float | None = None
) -> list[Event]:
    """``item`` fails at ``now`` with a usage limit resetting at ``reset``; the circuit's
    decision is applied with the failure, its record stamped at ``stamped`` (else ``now``)."""
    failed = _limited(item, run.dispatch(item), reset)
    events = policy.usage_limit_circuit(run.p.circuit, [failed], now=now)
    run.apply(failed, *events, ts=now if stamped is None else stamped)
    return events


def test_a_usage_limit_opens_the_circuit_until_its_reset_without_a_circuit_breaker() -> None:
    run = _Run(on=[])  # no circuit_breaker: no error type counts
    # Stamped a little after the decision (a slow disk): the reset still says when.
    assert _open_until(run, "a", NOW + 30, stamped=NOW + 0.5) == [
        CircuitOpened(
            failures=1,
            error_type="rate_limited",
            cooldown=30.0,
            until=rfc3339(NOW + 30),
            item="a",
        )
    ]
    circuit = run.p.circuit
    assert (circuit.state, circuit.opened_by) == ("open", "a")
    assert policy.half_open_at(circuit) == NOW + 30
    # Open until a later time already: nothing; until an earlier one: opened until the later.
    assert _open_until(run, "b", NOW + 20, now=NOW + 1) == []
    assert policy.half_open_at(circuit) == NOW + 30
    extended = _open_until(run, "c", NOW + 90, now=NOW + 2)
    assert [(e.until, e.item, e.cooldown) for e in extended if isinstance(e, CircuitOpened)] == [
        (rfc3339(NOW + 90), "c", 88.0)
    ]
    assert policy.half_open_at(circuit) == NOW + 90
    # Past or without a reset: nothing.
    assert policy.usage_limit_circuit(circuit, [_limited("d", 1, None)], now=NOW) == []
    assert policy.usage_limit_circuit(circuit, [_limited("d", 1, NOW)], now=NOW) == []
    assert policy.usage_limit_circuit(circuit, [], now=NOW) == []


def test_a_usage_limit_circuit_half_opens_at_its_reset_and_a_probe_closes_or_reopens_it() -> None:
    for probe_ok in (True, False):
        run = _Run(on=[])
        _open_until(run, "a", NOW + 30)
        circuit, pending = run.p.circuit, run.p.pending
        assert policy.circuit_half_open(None, circuit, pending, now=NOW + 29.9) == []
        half = policy.circuit_half_open(None, circuit, pending, now=NOW + 30)
        assert half == [CircuitHalfOpen(probe_item="b", probes=1, success_threshold=1)]
        run.apply(*half, ts=NOW + 30)
        if probe_ok:
            run.succeed("b")
            reason = "probe b succeeded"
        else:
            run.fail("b", "command_failed")
            reason = "probe b failed otherwise"
        assert policy.circuit_after_outcome(None, circuit, "b", ok=probe_ok) == [
            CircuitClosed(reason=reason)
        ]
    # A probe that hits the limit again reopens it until the new reset.
    run = _Run(on=[])
    _open_until(run, "a", NOW + 30)
    run.apply(CircuitHalfOpen(probe_item="b"), ts=NOW + 30)
    reopened = _open_until(run, "b", NOW + 100, now=NOW + 31)
    assert [e.until for e in reopened if isinstance(e, CircuitOpened)] == [rfc3339(NOW + 100)]
    assert run.p.circuit.state == "open"
    assert policy.circuit_after_outcome(None, run.p.circuit, "b", ok=False) == []


def test_with_a_circuit_breaker_a_usage_limit_opens_it_and_its_probes_are_the_spec_s() -> None:
    spec = _circuit(threshold=5, cooldown="1s", on=["rate_limited"], half_open_requests=3)
    run = _Run(**spec.model_dump())
    run.fail("a")  # a streak of one, below the threshold
    opened = _open_until(run, "b", NOW + 30)
    assert [(e.failures, e.until) for e in opened if isinstance(e, CircuitOpened)] == [
        (2, rfc3339(NOW + 30))
    ]
    # The reset, not the cooldown, says when it half-opens; the streak reopens nothing meanwhile.
    assert policy.half_open_at(run.p.circuit) == NOW + 30
    assert policy.circuit_after_outcome(spec, run.p.circuit, "b", ok=False) == []
    half = policy.circuit_half_open(spec, run.p.circuit, run.p.pending, now=NOW + 30)
    assert [e.probes for e in half if isinstance(e, CircuitHalfOpen)] == [3]
    # A circuit the streak opened until a later time stays as it is.
    hourly = _circuit(threshold=1, cooldown="1h", on=["rate_limited"])
    later = _Run(**hourly.model_dump())
    later.fail("a")
    later.apply(*policy.circuit_after_outcome(hourly, later.p.circuit, "a", ok=False))
    assert later.p.circuit.state == "open"
    assert _open_until(later, "b", NOW + 30) == []
