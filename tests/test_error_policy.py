"""The error policy's decisions without processes: fibonacci backoff, jitter by a factor.

As in ``tests/test_policy.py``, records are folded by hand into the projections, the
policy is asked what follows, and the events it returns are checked.
"""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from engine.map import policy
from engine.workflow.spec import RetrySpec
from ledger.events import ItemRetryScheduled
from tests.test_policy import NOW, _failed, _spec


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
