"""The error policy's decisions without processes: fibonacci backoff, jitter by a factor,
a half-open circuit with several probes that closes after several successes, and the
failure lines of ``map.error_collection``.

As in ``tests/test_policy.py``, records are folded by hand into the projections, the
policy is asked what follows, and the events it returns are checked.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.map import policy
from engine.map.failure_lines import FailureLines, failure_line
from engine.workflow.spec import RetrySpec
from ledger.events import (
    CircuitClosed,
    CircuitHalfOpen,
    CircuitOpened,
    ItemDeadLettered,
    ItemDispatched,
    ItemFailed,
    ItemRetryScheduled,
    ItemSucceeded,
)
from tests.test_policy import NOW, _circuit, _failed, _Run, _spec


def _retry(**settings: Any) -> RetrySpec:
    return RetrySpec.model_validate(settings)


# --- backoff ----------------------------------------------------------------------------------


def test_fibonacci_waits_initial_times_1_1_2_3_5_8_capped_at_max() -> None:
    retry = _retry(backoff="fibonacci", initial="2s", max="60s", jitter=False)
    delays = [policy.backoff_delay(retry, n, random.Random(0)) for n in range(1, 11)]
    assert delays == [2.0, 2.0, 4.0, 6.0, 10.0, 16.0, 26.0, 42.0, 60.0, 60.0]


def test_fibonacci_stays_finite_and_bounded_for_any_attempt() -> None:
    retry = _retry(backoff="fibonacci", initial="1s", max="7d", jitter=False, max_attempts=10_000)
    assert policy.backoff_delay(retry, 10_000, random.Random(0)) == policy.MAX_RETRY_DELAY
    assert policy.backoff_delay(retry, 25, random.Random(0)) == 75_025.0  # fib(25)
    zero = _retry(backoff="fibonacci", initial="0s", jitter=False)
    assert policy.backoff_delay(zero, 10_000, random.Random(0)) == 0.0


def test_a_jitter_factor_spreads_the_delay_around_it_from_the_generator_given() -> None:
    retry = _retry(backoff="fixed", initial="10s", jitter=True, jitter_factor=0.4)
    got = [policy.backoff_delay(retry, 1, random.Random(5)) for _ in range(2)]
    expected = random.Random(5).uniform(8.0, 12.0)  # 10 * (1 -/+ 0.4/2)
    assert got == [expected, expected]
    assert 8.0 <= got[0] <= 12.0


def test_without_a_jitter_factor_jitter_draws_from_half_the_delay_to_the_delay() -> None:
    retry = _retry(backoff="fibonacci", initial="3s", jitter=True)
    assert policy.backoff_delay(retry, 4, random.Random(9)) == random.Random(9).uniform(4.5, 9.0)


def test_jitter_off_ignores_the_factor() -> None:
    retry = _retry(backoff="linear", initial="3s", jitter=False, jitter_factor=1.0)
    assert policy.backoff_delay(retry, 2, random.Random(1)) == 6.0


def test_a_scheduled_fibonacci_retry_records_its_jittered_delay() -> None:
    spec_retry = {"backoff": "fibonacci", "initial": "4s", "jitter_factor": 0.5, "max_attempts": 5}
    spec = _spec(retry=spec_retry)
    (retry,) = policy.retry_or_dead_letter(
        spec, _failed("a", 3, "timeout"), cause="outcome", now=NOW, rng=random.Random(11)
    )
    expected = random.Random(11).uniform(8.0 * 0.75, 8.0 * 1.25)  # 4s * fib(3)
    assert isinstance(retry, ItemRetryScheduled)
    assert retry.delay == round(expected, 6)


@given(
    backoff=st.sampled_from(["fixed", "linear", "exponential", "fibonacci"]),
    initial=st.floats(0, 1e6),
    cap=st.floats(0, 1e7),
    factor=st.none() | st.floats(0.001, 1.0),
    attempt=st.integers(1, 10_000),
    seed=st.integers(0, 2**32),
)
def test_every_delay_is_finite_bounded_and_within_its_jitter(
    backoff: str, initial: float, cap: float, factor: float | None, attempt: int, seed: int
) -> None:
    plain = _retry(backoff=backoff, initial=initial, max=cap, jitter=False, max_attempts=10_000)
    jittered = plain.model_copy(update={"jitter": True, "jitter_factor": factor})
    base = policy.backoff_delay(plain, attempt, random.Random(seed))
    delay = policy.backoff_delay(jittered, attempt, random.Random(seed))
    assert 0.0 <= base <= min(cap, policy.MAX_RETRY_DELAY)
    low, high = (
        (base / 2, base) if factor is None else (base * (1 - factor / 2), base * (1 + factor / 2))
    )
    assert 0.0 <= delay <= policy.MAX_RETRY_DELAY
    assert low * (1 - 1e-9) <= delay <= min(high * (1 + 1e-9), policy.MAX_RETRY_DELAY)


# --- the circuit: several probes, several successes -------------------------------------------


def _opened_then_half_open(**settings: Any) -> tuple[_Run, Any]:
    """A circuit of threshold 1 opened by ``a`` and half open at once (cooldown 0)."""
    spec = _circuit(threshold=1, cooldown="0s", on=["rate_limited"], **settings)
    run = _Run(items=["a", "b", "c", "d", "e"], **spec.model_dump())
    run.fail("a")
    run.apply(*policy.circuit_after_outcome(spec, run.p.circuit, "a", ok=False))
    assert run.p.circuit.state == "open"
    events = policy.circuit_half_open(spec, run.p.circuit, run.p.pending, now=NOW)
    run.apply(*events)
    assert run.p.circuit.state == "half_open"
    return run, spec


def test_half_open_says_how_many_probes_go_at_once_and_how_many_must_pass() -> None:
    spec = _circuit(threshold=1, cooldown="0s", on=["rate_limited"])
    run = _Run(**spec.model_dump())
    run.fail("a")
    run.apply(*policy.circuit_after_outcome(spec, run.p.circuit, "a", ok=False))
    default = policy.circuit_half_open(spec, run.p.circuit, run.p.pending, now=NOW)
    assert default == [CircuitHalfOpen(probe_item="b", probes=1, success_threshold=1)]
    wider = _circuit(threshold=1, on=["rate_limited"], half_open_requests=3, success_threshold=2)
    assert policy.circuit_half_open(wider, run.p.circuit, run.p.pending, now=NOW + 30) == [
        CircuitHalfOpen(probe_item="b", probes=3, success_threshold=2)
    ]


@pytest.mark.parametrize("probes", [1, 2, 5])
def test_a_half_open_circuit_lets_its_probes_through_at_once_and_no_more(probes: int) -> None:
    run, _ = _opened_then_half_open(half_open_requests=probes)
    circuit = run.p.circuit
    assert policy.probe_limit(circuit, 8, 0) == min(8, probes)
    assert policy.probe_limit(circuit, 8, probes - 1) == 1
    assert policy.probe_limit(circuit, 8, probes) == 0
    assert policy.probe_limit(circuit, 0, 0) == 0  # no free slot, no probe
    run.apply(CircuitClosed(reason="x"))
    assert policy.probe_limit(run.p.circuit, 8, 7) == 8  # closed: every free slot


def test_it_closes_only_once_success_threshold_probes_succeeded() -> None:
    run, spec = _opened_then_half_open(half_open_requests=2, success_threshold=2)
    run.succeed("b")
    assert policy.circuit_after_outcome(spec, run.p.circuit, "b", ok=True) == []
    assert run.p.circuit.passed == 1
    run.succeed("c")
    events = policy.circuit_after_outcome(spec, run.p.circuit, "c", ok=True)
    assert events == [CircuitClosed(reason="probe c succeeded (2 of 2 probes passed)")]
    run.apply(*events)
    assert (run.p.circuit.state, run.p.circuit.passed) == ("closed", 0)


def test_a_qualifying_probe_failure_opens_it_again_even_after_a_success() -> None:
    run, spec = _opened_then_half_open(half_open_requests=2, success_threshold=3)
    run.succeed("b")
    assert policy.circuit_after_outcome(spec, run.p.circuit, "b", ok=True) == []
    run.fail("c")
    events = policy.circuit_after_outcome(spec, run.p.circuit, "c", ok=False)
    assert events == [CircuitOpened(failures=1, error_type="rate_limited", cooldown=0.0)]
    run.apply(*events)
    assert (run.p.circuit.state, run.p.circuit.passed) == ("open", 0)


def test_a_probe_failing_otherwise_passes_as_with_one_probe() -> None:
    run, spec = _opened_then_half_open(success_threshold=2)
    run.fail("b", "command_failed")  # not the circuit's cause: the service answered
    assert policy.circuit_after_outcome(spec, run.p.circuit, "b", ok=False) == []
    run.succeed("c")
    assert policy.circuit_after_outcome(spec, run.p.circuit, "c", ok=True) == [
        CircuitClosed(reason="probe c succeeded (2 of 2 probes passed)")
    ]


def test_a_new_half_open_counts_its_probes_afresh() -> None:
    run, spec = _opened_then_half_open(success_threshold=2)
    run.succeed("b")
    run.fail("c")
    run.apply(*policy.circuit_after_outcome(spec, run.p.circuit, "c", ok=False))
    run.apply(*policy.circuit_half_open(spec, run.p.circuit, run.p.pending, now=NOW + 1))
    assert (run.p.circuit.state, run.p.circuit.passed) == ("half_open", 0)
    run.succeed("d")
    assert policy.circuit_after_outcome(spec, run.p.circuit, "d", ok=True) == []


_probe_outcomes = st.lists(
    st.sampled_from(["ok", "rate_limited", "command_failed", "interrupted"]), max_size=12
)


@given(
    probes=st.integers(1, 4),
    needed=st.integers(1, 4),
    outcomes=_probe_outcomes,
)
def test_half_open_closes_at_the_mth_pass_or_opens_at_the_first_qualifying_failure(
    probes: int, needed: int, outcomes: list[str]
) -> None:
    run, spec = _opened_then_half_open(half_open_requests=probes, success_threshold=needed)
    passed, streak = 0, 1  # the failure that opened it still stands
    for n, outcome in enumerate(outcomes):
        item = "bcde"[n % 4]
        if outcome == "ok":
            run.succeed(item)
            streak = 0
        else:
            run.fail(item, outcome)
            streak = streak + 1 if outcome == "rate_limited" else streak
            streak = 0 if outcome == "command_failed" else streak
        events = policy.circuit_after_outcome(spec, run.p.circuit, item, ok=outcome == "ok")
        if outcome != "ok" and streak > 0:
            assert events == [
                CircuitOpened(failures=streak, error_type="rate_limited", cooldown=0.0)
            ]
            return
        passed += 1
        if passed >= needed:
            assert len(events) == 1 and isinstance(events[0], CircuitClosed)
            return
        assert events == []
    assert run.p.circuit.state == "half_open" and run.p.circuit.passed == passed


# --- error_collection: the failure lines ------------------------------------------------------


def _attempt_failed(item: str, attempt: int, message: str, error_type: str = "rate_limited") -> Any:
    failed = ItemFailed(
        item=item, attempt=attempt, error_type=error_type, signature="s", message=message
    )
    return failed


def test_a_failure_line_names_item_attempt_type_first_line_and_what_follows() -> None:
    failed = _attempt_failed("r1", 2, "\n  HTTP 429 Too Many Requests  \nretry later\n")
    retry = ItemRetryScheduled(item="r1", attempt=2, delay=4.25, not_before="x")
    assert failure_line(failed, retry) == (
        "item r1 attempt 2 failed, rate_limited: HTTP 429 Too Many Requests (retry in 4.2s)"
    )
    dead = ItemDeadLettered(item="r1", attempt=2, error_type="rate_limited", signature="s")
    assert failure_line(failed, dead).endswith("(dead-lettered)")
    assert failure_line(_attempt_failed("x", 1, ""), None) == (
        "item x attempt 1 failed, rate_limited: (no message) (not retried)"
    )


def test_a_failure_line_is_safe_for_a_terminal_and_bounded() -> None:
    failed = _attempt_failed("evil\x1b[2J" + "i" * 200, 1, "boom\x07\tbell" + "e" * 500)
    line = failure_line(failed, None)
    assert "\x1b" not in line and "\x07" not in line and "\t" not in line
    assert len(line) < 400


def _feed(lines: FailureLines, count: int) -> None:
    for n in range(1, count + 1):
        failed = _attempt_failed(f"i{n}", 1, f"error {n}")
        retry = ItemRetryScheduled(item=f"i{n}", attempt=1, delay=0.0, not_before="x")
        lines.note([ItemDispatched(item="z", attempt=1, idempotency_key="k"), failed, retry])


def test_immediate_tells_each_failure_as_it_is_recorded() -> None:
    told: list[str] = []
    lines = FailureLines("immediate", told.append)
    _feed(lines, 2)
    assert told == [
        "engine: item i1 attempt 1 failed, rate_limited: error 1 (retry now)",
        "engine: item i2 attempt 1 failed, rate_limited: error 2 (retry now)",
    ]
    lines.flush()
    assert len(told) == 2


def test_batched_tells_a_block_every_n_failures_and_the_rest_at_the_end() -> None:
    told: list[str] = []
    lines = FailureLines("batched:2", told.append)
    _feed(lines, 1)
    assert told == []
    _feed(lines, 2)  # i1, i2 again: two more
    assert told == [
        "engine: 2 more failed attempts (2 in all):\n"
        "  item i1 attempt 1 failed, rate_limited: error 1 (retry now)\n"
        "  item i1 attempt 1 failed, rate_limited: error 1 (retry now)"
    ]
    lines.flush()
    assert told[1] == (
        "engine: 1 more failed attempt (3 in all):\n"
        "  item i2 attempt 1 failed, rate_limited: error 2 (retry now)"
    )
    lines.flush()
    assert len(told) == 2


def test_aggregate_tells_nothing_while_the_map_runs_and_interrupted_is_never_told() -> None:
    told: list[str] = []
    aggregate = FailureLines("aggregate", told.append)
    _feed(aggregate, 3)
    aggregate.flush()
    assert told == []
    immediate = FailureLines("immediate", told.append)
    immediate.note([_attempt_failed("a", 1, "stopped", "interrupted")])
    immediate.note([ItemSucceeded(item="a", attempt=2, duration=1.0)])
    assert told == []
