"""`engine run` end to end with real subprocesses: results, retries, DLQ, limits."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from tests.engine_helpers import MOCK, records, run_workflow, write_script, write_workflow


def _ts(value: str) -> float:
    return dt.datetime.fromisoformat(value).timestamp()


def test_success_results_and_reduce_aggregates(tmp_path: Path) -> None:
    wf = write_workflow(
        tmp_path,
        """
        name: squares
        map:
          items: [1, 2, 3, 4, 5]
          max_parallel: 3
          agent_template:
            - argv: [sh, -c, 'echo "{\\"n\\": $(($1 * $1))}"', sh, "${item}"]
              output: json
        reduce:
          - run: echo "${map.total} ${map.successful} ${map.failed} ${map.success_rate}" > agg.txt
          - run: cat "${map.results_file}" > results-copy.json
        """,
    )
    result = run_workflow(wf, tmp_path / "home")
    assert (result.status, result.exit_code) == ("completed", 0)
    assert (tmp_path / "agg.txt").read_text().split() == ["5", "5", "0", "1.0"]
    results = sorted(r.data.result["n"] for r in records(result, "item.succeeded"))
    assert results == [1, 4, 9, 16, 25]
    assert (tmp_path / "results-copy.json").read_text().count('"n"') == 5
    types = [r.type for r in records(result)]
    assert types[:3] == ["lock.acquired", "run.created", "run.started"]
    assert types[-1] == "run.completed"
    assert (result.run_dir / "workflow.yml").read_text() == wf.read_text()


def test_retry_counts_and_backoff_within_jitter(tmp_path: Path) -> None:
    write_script(
        tmp_path,
        {
            "default": {"ok": "fine"},
            "items": {"flaky": [{"rate_limit": True}, {"rate_limit": True}, {"ok": "third"}]},
        },
    )
    wf = write_workflow(
        tmp_path,
        f"""
        name: retries
        agent: {{command: "{MOCK}"}}
        map:
          items: [flaky, steady]
          id: "${{item}}"
          retry:
            {{max_attempts: 4, backoff: exponential, initial: 0.2s, multiplier: 2, jitter: true}}
          agent_template:
            - claude: "review ${{item}}"
              output: text
        """,
    )
    result = run_workflow(wf, tmp_path / "home")
    assert result.exit_code == 0
    dispatched = [
        r.data.attempt for r in records(result, "item.dispatched") if r.data.item == "flaky"
    ]
    assert dispatched == [1, 2, 3]
    retries = [r for r in records(result, "item.retry_scheduled") if r.data.item == "flaky"]
    delays = [r.data.delay for r in retries]
    assert 0.1 <= delays[0] <= 0.2 and 0.2 <= delays[1] <= 0.4
    # The next attempt never starts before its not_before.
    by_attempt = {
        r.data.attempt: r for r in records(result, "item.dispatched") if r.data.item == "flaky"
    }
    for retry in retries:
        assert _ts(by_attempt[retry.data.attempt + 1].ts) >= _ts(retry.data.not_before) - 0.001
    failed = [r.data for r in records(result, "item.failed")]
    assert {f.error_type for f in failed} == {"rate_limited"}
    assert result.projections.items.items["flaky"].attempts == 3


def test_non_retryable_goes_to_dlq_after_one_attempt(tmp_path: Path) -> None:
    write_script(tmp_path, {"default": {"fail": "validation failed: bad input", "exit": 2}})
    wf = write_workflow(
        tmp_path,
        f"""
        name: dlq
        agent: {{command: "{MOCK}"}}
        map:
          items: [a]
          id: "${{item}}"
          agent_template: [{{claude: "x"}}]
        """,
    )
    result = run_workflow(wf, tmp_path / "home")
    assert (result.status, result.exit_code) == ("completed", 1)
    dead = records(result, "item.dead_lettered")
    assert [(d.data.item, d.data.attempt, d.data.error_type, d.data.reason) for d in dead] == [
        ("a", 1, "validation_failed", "not retryable")
    ]


def test_exhausted_retries_dead_letter_with_history(tmp_path: Path) -> None:
    wf = write_workflow(
        tmp_path,
        """
        name: exhaust
        map:
          items: [a]
          retry: {max_attempts: 3, initial: 0.05s, jitter: false}
          agent_template:
            - run: echo "error 503 service unavailable at /srv/x/${item}" >&2; exit 1
        """,
    )
    result = run_workflow(wf, tmp_path / "home")
    entry = next(iter(result.projections.dlq.dead))
    view = result.projections.dlq.entry(entry)
    assert view is not None
    assert (view.attempts, view.error_type, view.reason) == (3, "api_error", "retries exhausted")
    assert [f.attempt for f in view.history] == [1, 2, 3]
    assert len({f.signature for f in view.history}) == 1


def test_timeout_kills_the_group(tmp_path: Path) -> None:
    wf = write_workflow(
        tmp_path,
        """
        name: slow
        map:
          items: [a]
          timeout: 0.5s
          retry: {max_attempts: 2, initial: 0.05s}
          agent_template:
            - run: (sleep 30; touch "child-survived") & sleep 30
        """,
    )
    result = run_workflow(wf, tmp_path / "home")
    failed = records(result, "item.failed")
    assert [f.data.error_type for f in failed] == ["timeout", "timeout"]
    assert all(f.data.duration < 10 for f in failed)
    assert result.projections.items.counts["dead"] == 1


def test_hung_detection(tmp_path: Path) -> None:
    write_script(
        tmp_path, {"items": {"quiet": {"hang": True}, "beating": {"sleep": 1.5, "ok": "x"}}}
    )
    wf = write_workflow(
        tmp_path,
        f"""
        name: hung
        agent: {{command: "{MOCK}"}}
        map:
          items: [quiet]
          id: "${{item}}"
          heartbeat: {{interval: 0.2s, hung_after: 0.6s}}
          retry: {{max_attempts: 1}}
          agent_template: [{{claude: "x"}}]
        """,
    )
    result = run_workflow(wf, tmp_path / "home")
    assert [f.data.error_type for f in records(result, "item.failed")] == ["hung"]
    assert records(result, "heartbeat")  # heartbeats were recorded while it ran


def test_touching_the_heartbeat_file_keeps_an_attempt_alive(tmp_path: Path) -> None:
    # A shell loop, not the mock agent: on a loaded machine a Python program can
    # take longer to start than hung_after, and be declared hung before its
    # first touch. Silent on stdout and stderr: only the touches show it alive.
    wf = write_workflow(
        tmp_path,
        """
        name: alive
        map:
          items: [a]
          timeout: 3s
          heartbeat: {interval: 0.3s, hung_after: 1.5s}
          retry: {max_attempts: 1}
          agent_template:
            - run: while :; do touch "$ENGINE_HEARTBEAT_FILE"; sleep 0.1; done
        """,
    )
    result = run_workflow(wf, tmp_path / "home")
    # It was never declared hung: it ran until the item timeout.
    assert [f.data.error_type for f in records(result, "item.failed")] == ["timeout"]
    beats = records(result, "heartbeat")
    assert any(b.data.touched_at for b in beats)


def test_setup_failure_fails_the_run_before_any_item(tmp_path: Path) -> None:
    wf = write_workflow(
        tmp_path,
        """
        name: setup-fails
        setup:
          - run: echo "cannot list files" >&2; exit 3
        map:
          items: [a, b]
          agent_template: [{run: "touch ran-${item}"}]
        """,
    )
    result = run_workflow(wf, tmp_path / "home")
    assert (result.status, result.exit_code) == ("failed", 1)
    assert "cannot list files" in (result.reason or "")
    assert not records(result, "item.enqueued") and not records(result, "item.dispatched")
    assert not list(tmp_path.glob("ran-*"))
    assert records(result)[-1].type == "run.failed"


def test_max_failures_stops_dispatching(tmp_path: Path) -> None:
    wf = write_workflow(
        tmp_path,
        """
        name: limit
        map:
          items: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
          max_parallel: 1
          max_failures: 3
          agent_template: [{run: "exit 2"}]
        """,
    )
    result = run_workflow(wf, tmp_path / "home")
    assert (result.status, result.exit_code) == ("failed", 1)
    assert len(records(result, "item.dispatched")) == 3
    assert result.projections.items.counts["pending"] == 7


def test_on_item_failure_fail_and_ignore(tmp_path: Path) -> None:
    for policy, status, dead in (("fail", "failed", 0), ("ignore", "completed", 0)):
        wf = write_workflow(
            tmp_path / policy,
            f"""
            name: {policy}
            map:
              items: [1, 2, 3]
              max_parallel: 1
              on_item_failure: {policy}
              agent_template: [{{run: "test ${{item}} != 1"}}]
            """,
        )
        result = run_workflow(wf, tmp_path / policy / "home")
        assert result.status == status
        assert result.projections.items.counts["dead"] == dead
        assert result.projections.items.counts["failed"] == 1


def test_setup_capture_and_duplicates_and_filter(tmp_path: Path) -> None:
    wf = write_workflow(
        tmp_path,
        """
        name: capture
        setup:
          - run: >-
              printf '%s\\n' '{"p": "a", "n": 3}' '{"p": "b", "n": 1}'
              '{"p": "a", "n": 9}' '{"p": "c", "n": 7}'
            capture_output: listing
            capture_format: text
        map:
          command: printf '%s\\n' "${listing}"
          id: "${item.p}"
          filter: "item.n > 1"
          sort_by: "item.n DESC"
          agent_template:
            - run: echo "${item.p}:${item.n}" >> order.txt
        """,
    )
    result = run_workflow(wf, tmp_path / "home", max_parallel=1)
    assert (tmp_path / "order.txt").read_text().split() == ["a:9", "c:7"]
    dup = records(result, "item.duplicate")
    assert [(d.data.item, d.data.first_index) for d in dup] == [("a", 0)]
    assert result.projections.items.item_counts().duplicate == 1


@pytest.mark.parametrize("policy", ["dlq"])
def test_exit_code_with_dead_items_is_one(tmp_path: Path, policy: str) -> None:
    wf = write_workflow(
        tmp_path,
        f"""
        name: partial
        map:
          items: [1, 2]
          on_item_failure: {policy}
          retry: {{max_attempts: 1}}
          agent_template: [{{run: "test ${{item}} = 1"}}]
        """,
    )
    result = run_workflow(wf, tmp_path / "home")
    assert (result.status, result.exit_code) == ("completed", 1)


def test_slots_and_write_ahead_hold_when_successes_carry_the_next_dispatch(
    tmp_path: Path,
) -> None:
    log = tmp_path / "events.log"
    wf = write_workflow(
        tmp_path,
        f"""
        name: slots
        map:
          command: seq 1 40
          max_parallel: 3
          agent_template:
            - run: |
                echo "start ${{item}} $(date +%s%N)" >> {log}
                sleep 0.02
                echo "end ${{item}} $(date +%s%N)" >> {log}
        """,
    )
    result = run_workflow(wf, tmp_path / "home")
    assert result.status == "completed"
    spans: dict[str, list[int]] = {}
    for line in log.read_text().splitlines():
        kind, item, ns = line.split()
        spans.setdefault(item, []).append(int(ns))
        assert kind == ("start" if len(spans[item]) == 1 else "end")
    assert sorted(spans, key=int) == [str(i) for i in range(1, 41)]
    assert all(len(times) == 2 for times in spans.values())  # each ran once
    moments = sorted([(t[0], 1) for t in spans.values()] + [(t[1], -1) for t in spans.values()])
    running = peak = 0
    for _ns, step in moments:
        running += step
        peak = max(peak, running)
    assert peak <= 3
    value_of = {r.data.item: r.data.value for r in records(result, "item.enqueued")}
    dispatched = {value_of[r.data.item]: _ts(r.ts) for r in records(result, "item.dispatched")}
    for item, (start, _end) in spans.items():
        assert dispatched[int(item)] <= start / 1e9 + 1e-3  # recorded before it started
    # A success and the next dispatch are staged together (one fsync for both).
    by_ts: dict[str, set[str]] = {}
    for r in records(result):
        by_ts.setdefault(r.ts, set()).add(r.type)
    assert any({"item.succeeded", "item.dispatched"} <= types for types in by_ts.values())
