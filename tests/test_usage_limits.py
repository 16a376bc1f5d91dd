"""Usage limits: the reset read from what the agent said, waited for, the circuit open till then.

The parser's forms (Claude's epoch, a wall time in a zone, HTTP's
Retry-After) without processes; then runs of the mock agent answering a
usage limit a few seconds ahead, checked in their ledgers.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.exec.executor import AttemptOutcome
from engine.map.classify import classify
from engine.map.outcomes import outcome_events
from engine.map.policy import MAX_RETRY_DELAY
from engine.map.usage_limits import reset_at
from engine.workflow.spec import MapSpec
from ledger import LedgerReader
from ledger.events import ItemFailed, ItemRetryScheduled, Record
from ledger.times import epoch
from projections.replay import replay
from tests.conftest import ENGINE
from tests.engine_helpers import (
    DEADLINE,
    MOCK,
    ledger_has,
    records,
    run_workflow,
    wait_for,
    write_script,
    write_workflow,
)

NOW = dt.datetime(2030, 6, 1, 12, 0, 0, tzinfo=dt.UTC).timestamp()
"""2030-06-01 12:00:00 UTC (14:00 in Berlin, summer time)."""


def _utc(*args: int) -> float:
    return dt.datetime(*args, tzinfo=dt.UTC).timestamp()


# --- the parser ----------------------------------------------------------------------------


def test_claude_s_epoch_form_in_seconds_or_milliseconds() -> None:
    reset = int(NOW) + 3600
    assert reset_at(f"Claude AI usage limit reached|{reset}", NOW) == reset
    assert reset_at(f"Claude AI usage limit reached|{reset * 1000 + 250}", NOW) == reset + 0.25
    said = f"Error: claude AI USAGE LIMIT REACHED|{reset}\n"
    assert reset_at(said, NOW) == reset


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5-hour limit reached ∙ resets 3pm (Europe/Berlin)", _utc(2030, 6, 1, 13)),
        ("limit reached, resets 1pm (Europe/Berlin)", _utc(2030, 6, 2, 11)),  # 1pm: tomorrow
        ("Your limit will reset at 3:30pm (UTC).", _utc(2030, 6, 1, 15, 30)),
        ("limit reached ... resets 15:00 (UTC)", _utc(2030, 6, 1, 15)),
        ("limit reached ... resets 9:05 am (UTC)", _utc(2030, 6, 2, 9, 5)),
        ("limit reached ... resets 12am (UTC)", _utc(2030, 6, 2, 0)),
        ("limit reached ... resets 12pm (UTC)", _utc(2030, 6, 2, 12)),  # now is 12:00: not after
        ("limit reached ... resets 12:00:07pm (UTC)", _utc(2030, 6, 1, 12, 0, 7)),
        ("limit reached ... resets at 7:00p.m. (America/New_York)", _utc(2030, 6, 1, 23)),
        ("weekly limit reached ∙ resets 00:30 (Asia/Tokyo)", _utc(2030, 6, 1, 15, 30)),
    ],
)
def test_a_wall_time_is_the_next_such_time_after_now_in_its_zone(
    text: str, expected: float
) -> None:
    assert reset_at(text, NOW) == expected


@pytest.mark.parametrize(
    ("text", "now", "expected"),
    [
        (
            "Weekly limit reached ∙ resets Oct 9, 10am (UTC)",
            _utc(2030, 10, 5, 12),
            _utc(2030, 10, 9, 10),
        ),
        (
            "You've hit your limit · resets Dec 3 at 9am (Europe/Berlin)",
            _utc(2030, 12, 1, 12),
            _utc(2030, 12, 3, 8),  # winter time: +01:00
        ),
        (
            "limit reached, resets October 9 at 10:30am (America/New_York)",
            _utc(2030, 10, 5, 12),
            _utc(2030, 10, 9, 14, 30),  # summer time: -04:00
        ),
        ("resets Jan 2, 9am (UTC)", _utc(2030, 12, 30, 12), _utc(2031, 1, 2, 9)),  # next year
        ("resets Feb 29 at 9am (UTC)", _utc(2032, 2, 27), _utc(2032, 2, 29, 9)),  # a leap year
        ("resets on Sept. 3rd, 15:00 (UTC)", _utc(2030, 9, 1), _utc(2030, 9, 3, 15)),
        ("resets jun 1 at 1pm (UTC)", NOW, _utc(2030, 6, 1, 13)),  # today, later
        # A weekday: the next such day at that time (NOW is a Saturday).
        ("Weekly limit reached ∙ resets Mon 10am (UTC)", NOW, _utc(2030, 6, 3, 10)),
        ("resets Saturday at 1pm (UTC)", NOW, _utc(2030, 6, 1, 13)),
        ("resets Sat 11am (UTC)", NOW, _utc(2030, 6, 8, 11)),  # today's is past: next week
        ("resets Tues, 9:05pm (Asia/Tokyo)", NOW, _utc(2030, 6, 4, 12, 5)),
    ],
)
def test_a_dated_reset_is_that_date_s_time_in_its_zone(
    text: str, now: float, expected: float
) -> None:
    assert reset_at(text, now) == expected


@pytest.mark.parametrize(
    "text",
    [
        "resets Oct 9, 10am (UTC)",  # months ahead: too far
        "resets Jun 1, 10am (UTC)",  # this morning: next year's, too far
        "resets Feb 30 at 9am (UTC)",  # no such day
        "resets Jun 3, 10 (UTC)",  # no time of day
        "resets May 5pm (UTC)",  # no day
        "resets Jun 3, 10am (Mars/Olympus_Mons)",
    ],
)
def test_a_dated_reset_that_cannot_be_or_is_too_far_is_none(text: str) -> None:
    assert reset_at(text, NOW) is None


def test_a_wall_time_without_a_zone_is_the_machine_s_local_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TZ", "Asia/Kolkata")  # +05:30, no summer time
    time.tzset()
    try:
        # 12:00 UTC is 17:30 there: 3pm is tomorrow's, 6pm today's.
        assert reset_at("limit reached ∙ resets 3pm", NOW) == _utc(2030, 6, 2, 9, 30)
        assert reset_at("limit reached ∙ resets 6pm", NOW) == _utc(2030, 6, 1, 12, 30)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("HTTP 429 Too Many Requests\nretry-after: 30", NOW + 30),
        ("429 Too Many Requests\r\nRetry-After: 120\r\n", NOW + 120),
        ('{"error": "rate_limit_error", "retry-after": "2.5"}', NOW + 2.5),
        ("HTTP/1.1 429\nRetry-After: Sat, 01 Jun 2030 12:05:00 GMT", NOW + 300),
        ("429\nRETRY-AFTER: Sat, 1 Jun 2030 13:00:00 GMT\n", NOW + 3600),
    ],
)
def test_retry_after_in_seconds_or_as_an_http_date(text: str, expected: float) -> None:
    assert reset_at(text, NOW) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Error: something failed",
        f"Claude AI usage limit reached|{int(NOW) - 60}",  # in the past
        f"Claude AI usage limit reached|{int(NOW)}",  # now is not ahead
        f"Claude AI usage limit reached|{int(NOW + MAX_RETRY_DELAY) + 60}",  # too far ahead
        "Claude AI usage limit reached|soon",
        "limit reached, resets 3pm (Mars/Olympus_Mons)",  # no such zone
        "limit reached, resets 3pm (../../etc/passwd)",
        "limit reached, resets 13pm (UTC)",
        "limit reached, resets 25:00 (UTC)",
        "limit reached, resets 10:75 (UTC)",
        "limit reached, resets 3 (UTC)",  # no time of day
        "connection reset by peer",
        "retry-after: 0",
        "retry-after: -5",
        "Retry-After: someday",
        "Retry-After: Sat, 01 Jun 2030 11:00:00 GMT",  # in the past
    ],
)
def test_garbage_or_a_past_or_far_reset_is_none(text: str) -> None:
    assert reset_at(text, NOW) is None


def test_of_several_resets_the_last_said_wins() -> None:
    text = (
        f"Claude AI usage limit reached|{int(NOW) + 60}\n"
        "then: limit reached, resets 3pm (UTC)\n"
        f"Claude AI usage limit reached|{int(NOW) - 5}"  # the last one is past: the one before
    )
    assert reset_at(text, NOW) == _utc(2030, 6, 1, 15)


@pytest.mark.parametrize(
    "text",
    [
        "Claude AI usage limit reached|1767225600",
        "5-hour limit reached ∙ resets 3pm (Europe/Berlin)",
        "Claude usage limit reached. Your limit will reset at 3pm (Europe/Berlin).",
        "Weekly limit reached ∙ resets Oct 9, 10am (UTC)",
        "You've hit your limit · resets Dec 3 at 9am (Europe/Berlin)",
        "upstream said\nretry-after: 30",
    ],
)
def test_usage_limit_texts_are_rate_limited(text: str) -> None:
    for stderr, stdout in ((text, ""), ("", text)):
        found = classify(exit_code=1, signal=None, stderr_tail=stderr, stdout_tail=stdout)
        assert found.error_type == "rate_limited", (text, stderr)


# --- the failure's record ------------------------------------------------------------------


def _spec() -> MapSpec:
    return MapSpec.model_validate({"items": [], "agent_template": [{"run": "true"}]})


def _decide(outcome: AttemptOutcome) -> tuple[ItemFailed, ItemRetryScheduled]:
    events = outcome_events(
        _spec(),
        "a",
        1,
        outcome,
        stopping=False,
        now=NOW,
        rng=random.Random(1),
        resources={},
    )
    failed, decision = events
    assert isinstance(failed, ItemFailed) and isinstance(decision, ItemRetryScheduled)
    return failed, decision


def test_a_rate_limited_failure_records_its_reset_from_message_stderr_or_stdout() -> None:
    reset = int(NOW) + 90
    said = f"Claude AI usage limit reached|{reset}"
    for outcome in (
        # A Claude envelope's error, as the agent's output reader reports it.
        AttemptOutcome(
            ok=False, duration=1, exit_code=1, error_type="rate_limited", error=f"failed: {said}"
        ),
        AttemptOutcome(ok=False, duration=1, exit_code=1, stderr_tail=f"boom\n{said}\n"),
        AttemptOutcome(ok=False, duration=1, exit_code=1, stdout_tail=said),
        AttemptOutcome(ok=False, duration=1, exit_code=1, stderr_tail=f"429\nretry-after: {90}"),
    ):
        failed, decision = _decide(outcome)
        assert failed.error_type == "rate_limited"
        assert failed.resets_at is not None and epoch(failed.resets_at) == reset, outcome
        assert (decision.not_before, decision.counted) == (failed.resets_at, False)


def test_no_reset_without_a_rate_limit_or_a_time() -> None:
    reset = int(NOW) + 90
    other = AttemptOutcome(
        ok=False,
        duration=1,
        exit_code=1,
        error_type="api_error",
        error=f"usage limit reached|{reset}",
    )
    failed, _ = _decide(other)
    assert failed.resets_at is None
    plain = AttemptOutcome(ok=False, duration=1, exit_code=1, stderr_tail="429 rate limited")
    failed, decision = _decide(plain)
    assert (failed.error_type, failed.resets_at, decision.counted) == ("rate_limited", None, True)


# --- runs ----------------------------------------------------------------------------------


def _ts(record: Record) -> float:
    return epoch(record.ts)


def _limited_workflow(
    tmp_path: Path, style: str, output: str = "claude-json", extra: str = ""
) -> Path:
    # Item a hits a usage limit 3 s ahead on its first attempt, b running beside it and
    # c, d still to be dispatched while the limit holds.
    write_script(
        tmp_path,
        {
            "default": {"ok": "fine"},
            "items": {
                "a": [{"usage_limit": 3, "usage_limit_style": style}, {"ok": "after the reset"}]
            },
        },
    )
    return write_workflow(
        tmp_path,
        f"""
        name: limits
        agent: {{command: "{MOCK}", output: {output}}}
        map:
          items: [a, b, c, d]
          id: "${{item}}"
          max_parallel: 2
          retry: {{max_attempts: 1}}
          agent_template: [{{claude: "x"}}]
        {extra}
        """,
    )


def _check_the_wait(events: list[Record]) -> tuple[Record, float]:
    """The usage-limit failure of a; no dispatch after it before its reset; a's retry waited
    uncounted and succeeded. Returns the failure's record and its reset."""
    failed = next(r for r in events if r.type == "item.failed")
    assert (failed.data.item, failed.data.attempt, failed.data.error_type) == (
        "a",
        1,
        "rate_limited",
    )
    assert failed.data.resets_at is not None
    reset = epoch(failed.data.resets_at)
    assert 1.5 <= reset - _ts(failed) <= 4.5
    retry, opened = events[failed.seq + 1], events[failed.seq + 2]  # one append
    assert retry.type == "item.retry_scheduled" and retry.data.counted is False
    assert retry.data.not_before == failed.data.resets_at
    assert opened.type == "circuit.opened"
    assert (opened.data.until, opened.data.item) == (failed.data.resets_at, "a")
    later = [r for r in events if r.seq > failed.seq and r.type == "item.dispatched"]
    assert later, "nothing was dispatched after the usage limit"
    early = [(r.data.item, r.ts) for r in later if _ts(r) < reset]
    assert not early, f"dispatched before the reset {failed.data.resets_at}: {early}"
    a = [r for r in events if r.type == "item.succeeded" and r.data.item == "a"]
    assert [r.data.attempt for r in a] == [2]
    return failed, reset


@pytest.mark.parametrize("style", ["epoch", "resets"])
def test_a_usage_limit_is_waited_for_with_the_circuit_open_and_no_attempt_counted(
    tmp_path: Path, style: str
) -> None:
    result = run_workflow(_limited_workflow(tmp_path, style), tmp_path / "home", max_parallel=2)
    assert result.exit_code == 0
    assert result.projections.run.status == "completed"
    events = records(result)
    assert [r.seq for r in events] == list(range(len(events)))
    failed, reset = _check_the_wait(events)
    state = result.projections.items.items["a"]
    assert (state.status, state.attempts, state.waits) == ("succeeded", 2, 1)
    # b ran while the limit held: its success dispatched nothing.
    b = next(r for r in events if r.type == "item.succeeded" and r.data.item == "b")
    assert _ts(b) < reset
    half = [r for r in events if r.type == "circuit.half_open"]
    closed = [r for r in events if r.type == "circuit.closed"]
    assert len(half) == len(closed) == 1 and failed.seq < half[0].seq < closed[0].seq
    assert half[0].data.probes == 1 and _ts(half[0]) >= reset
    assert result.projections.items.counts["succeeded"] == 4


def test_a_429_s_retry_after_on_stderr_opens_the_circuit_beside_a_circuit_breaker(
    tmp_path: Path,
) -> None:
    wf = _limited_workflow(
        tmp_path,
        "retry_after",
        output="text",
        extra="circuit_breaker: {threshold: 5, cooldown: 1s, on: [rate_limited],"
        " half_open_requests: 2}",
    )
    result = run_workflow(wf, tmp_path / "home", max_parallel=2)
    assert result.exit_code == 0
    events = records(result)
    _check_the_wait(events)
    half = next(r for r in events if r.type == "circuit.half_open")
    assert half.data.probes == 2
    assert result.projections.items.items["a"].waits == 1


@pytest.fixture
def engine_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    yield {**os.environ, "ENGINE_HOME": str(tmp_path / "home")}


def test_a_resumed_run_waits_for_a_reset_still_ahead(
    tmp_path: Path, engine_env: dict[str, str]
) -> None:
    write_script(
        tmp_path,
        {
            "default": {"ok": "fine"},
            "items": {"a": [{"usage_limit": 6}, {"ok": "after the reset"}]},
        },
    )
    wf = write_workflow(
        tmp_path,
        f"""
        name: limits
        agent: {{command: "{MOCK}", output: claude-json}}
        map:
          items: [a, b, c]
          id: "${{item}}"
          max_parallel: 1
          agent_template: [{{claude: "x"}}]
        """,
    )
    run = [ENGINE, "run", str(wf), "--run-id", "lim", "--no-progress"]
    proc = subprocess.Popen(
        run, cwd=tmp_path, env=engine_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    ledger = tmp_path / "home" / "runs" / "lim" / "ledger.ndjson"
    try:
        wait_for(lambda: ledger_has(ledger, "circuit.opened"), what="the circuit opened")
        proc.send_signal(2)
        proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    state = replay(ledger)
    assert state.circuit.state == "open" and state.circuit.until is not None
    until = epoch(state.circuit.until)
    assert until > time.time(), "the reset passed before the resume: the test proves nothing"
    resumed = subprocess.run(
        [ENGINE, "resume", "lim", "--no-progress"],
        cwd=tmp_path,
        env=engine_env,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr
    events = list(LedgerReader(ledger).records())
    start = next(r for r in events if r.type == "run.resumed")
    dispatched = [r for r in events if r.seq > start.seq and r.type == "item.dispatched"]
    assert dispatched and all(_ts(r) >= until for r in dispatched)
    assert replay(ledger).items.counts["succeeded"] == 3
