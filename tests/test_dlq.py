"""`engine dlq`: list with filters, show, retry (attempts continue), purge, export."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import msgspec
from click.testing import CliRunner, Result

from cli.main import cli
from engine.map.classify import signature
from ledger import LedgerReader
from tests.engine_helpers import records, run_workflow, write_workflow


def _engine(home: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--home", str(home), *args], catch_exceptions=False)


def _failing_run(tmp_path: Path) -> tuple[Path, str]:
    """Three items die: two rate-limited (transient), one permission denied."""
    wf = write_workflow(
        tmp_path,
        """
        name: dlq
        map:
          items: [ok-1, flaky-1, flaky-2, locked-1]
          id: "${item}"
          retry: {max_attempts: 2, initial: 10ms}
          agent_template:
            - run: |
                case "$ENGINE_ITEM_ID" in
                  ok-*) echo fine ;;
                  flaky-*)
                    [ -f fixed ] && echo fine && exit 0
                    echo "429 rate limit" >&2; exit 1 ;;
                  locked-*) echo "open: permission denied" >&2; exit 13 ;;
                esac
        """,
    )
    result = run_workflow(wf, tmp_path / "home")
    assert result.status == "completed" and result.exit_code == 1
    return tmp_path / "home", result.run_id


def test_list_filters_and_triage(tmp_path: Path) -> None:
    home, run = _failing_run(tmp_path)
    listed = json.loads(_engine(home, "dlq", "list", run, "--json").output)
    by_id = {d["item_id"]: d for d in listed}
    assert set(by_id) == {"flaky-1", "flaky-2", "locked-1"}
    assert by_id["flaky-1"]["error_type"] == "rate_limited"
    assert by_id["flaky-1"]["reprocessable"] and not by_id["flaky-1"]["needs_review"]
    assert by_id["locked-1"]["needs_review"] and not by_id["locked-1"]["reprocessable"]
    assert by_id["flaky-1"]["attempts"] == 2 and by_id["locked-1"]["attempts"] == 1
    only = json.loads(
        _engine(home, "dlq", "list", run, "--error-type", "rate_limited", "--json").output
    )
    assert sorted(d["item_id"] for d in only) == ["flaky-1", "flaky-2"]
    sig = by_id["locked-1"]["signature"].removeprefix("sha256:")[:10]
    assert [
        d["item_id"]
        for d in json.loads(_engine(home, "dlq", "list", run, "--signature", sig, "--json").output)
    ] == ["locked-1"]
    assert (
        json.loads(_engine(home, "dlq", "list", run, "--since", "2999-01-01", "--json").output)
        == []
    )
    bad = _engine(home, "dlq", "list", run, "--since", "yesterday")
    assert bad.exit_code == 2 and "is not a time" in bad.output
    table = _engine(home, "dlq", "list", run).output
    assert "review" in table and "retry" in table


def test_show_has_the_whole_history(tmp_path: Path) -> None:
    home, run = _failing_run(tmp_path)
    shown = json.loads(_engine(home, "dlq", "show", run, "flaky-1", "--json").output)
    assert [h["attempt"] for h in shown["history"]] == [1, 2]
    assert all(h["error_type"] == "rate_limited" and h["exit_code"] == 1 for h in shown["history"])
    assert all("429 rate limit" in h["stderr_tail"] for h in shown["history"])
    stderr_log = home / "runs" / run / shown["history"][0]["stderr"]
    assert stderr_log.read_text() == "429 rate limit\n"
    text = _engine(home, "dlq", "show", run, "flaky-1").output
    assert "attempt 2" in text and "429 rate limit" in text and str(stderr_log) in text
    missing = _engine(home, "dlq", "show", run, "ok-1")
    assert missing.exit_code == 2 and "is not in the dead-letter queue" in missing.output


def test_retry_continues_attempts_and_success_leaves_the_dlq(tmp_path: Path) -> None:
    home, run = _failing_run(tmp_path)
    (tmp_path / "fixed").write_text("")
    retried = _engine(home, "dlq", "retry", run, "--error-type", "rate_limited", "--no-progress")
    assert retried.exit_code == 1, retried.output  # locked-1 is still dead
    left = json.loads(_engine(home, "dlq", "list", run, "--json").output)
    assert [d["item_id"] for d in left] == ["locked-1"]
    records = list(LedgerReader(home / "runs" / run / "ledger.ndjson").records())
    requeued = sorted(r.data.item for r in records if r.type == "item.requeued")
    assert requeued == ["flaky-1", "flaky-2"]
    third = [r.data for r in records if r.type == "item.dispatched" and r.data.item == "flaky-1"]
    assert [d.attempt for d in third] == [1, 2, 3]
    succeeded = {r.data.item: r.data.attempt for r in records if r.type == "item.succeeded"}
    assert succeeded == {"ok-1": 1, "flaky-1": 3, "flaky-2": 3}
    assert [r.type for r in records].count("run.completed") == 2
    stats = json.loads(_engine(home, "stats", run, "--json").output)
    assert stats["items_finished"] == 4 and stats["sessions"] == 2  # each item counted once
    assert stats["wall_s"] <= stats["span_s"]
    nothing = _engine(home, "dlq", "retry", run, "flaky-1")
    assert nothing.exit_code == 2 and "not in the dead-letter queue" in nothing.output


def test_purge_hides_without_deleting(tmp_path: Path) -> None:
    home, run = _failing_run(tmp_path)
    ledger = home / "runs" / run / "ledger.ndjson"
    before = ledger.read_bytes()
    purged = _engine(home, "dlq", "purge", run, "locked-1")
    assert purged.exit_code == 0 and "purged 1 item" in purged.output
    after = ledger.read_bytes()
    assert after.startswith(before)  # appended to, never rewritten
    left = [d["item_id"] for d in json.loads(_engine(home, "dlq", "list", run, "--json").output)]
    assert sorted(left) == ["flaky-1", "flaky-2"]
    assert "1 purged item(s) not shown" in _engine(home, "dlq", "list", run).output
    again = _engine(home, "dlq", "show", run, "locked-1")
    assert again.exit_code == 2 and "was purged from" in again.output
    types = [r.type for r in LedgerReader(ledger).records()]
    assert types.count("dlq.purged") == 1 and types.count("item.dead_lettered") == 3
    assert _engine(home, "audit", "verify", run).exit_code == 0


def test_export_jsonl_and_csv(tmp_path: Path) -> None:
    home, run = _failing_run(tmp_path)
    lines = _engine(home, "dlq", "export", run).output.splitlines()
    entries = [json.loads(line) for line in lines]
    assert sorted(e["item_id"] for e in entries) == ["flaky-1", "flaky-2", "locked-1"]
    assert all(e["history"] for e in entries)
    rows = list(
        csv.DictReader(io.StringIO(_engine(home, "dlq", "export", run, "--format", "csv").output))
    )
    assert sorted(r["item_id"] for r in rows) == ["flaky-1", "flaky-2", "locked-1"]
    assert {r["item_id"]: r["needs_review"] for r in rows}["locked-1"] == "True"


def test_a_failure_with_a_handler_is_what_the_failed_command_said(tmp_path: Path) -> None:
    """The handler's output (the same JSON for every item) is never the failure's message."""
    wf = write_workflow(
        tmp_path,
        """
        name: handled
        map:
          items: [config, perms, stdout]
          id: "${item}"
          retry: {max_attempts: 1}
          agent_template:
            - run: |
                case "$ENGINE_ITEM_ID" in
                  config) echo "cannot parse settings: unexpected end of input" >&2 ;;
                  perms) echo "open: permission denied" >&2 ;;
                  stdout) echo "check failed: expected a header line" ;;
                esac
                exit 3
              on_failure:
                - run: |
                    echo '{"notified": "on-call"}'
                    echo '{"notified": "on-call"}' >&2
        """,
    )
    result = run_workflow(wf, tmp_path / "home")
    assert result.exit_code == 1
    listed = _engine(tmp_path / "home", "dlq", "list", result.run_id, "--json")
    dead = {d["item_id"]: d for d in json.loads(listed.output)}
    assert {item: d["last_error"] for item, d in dead.items()} == {
        "config": "cannot parse settings: unexpected end of input",
        "perms": "open: permission denied",
        "stdout": "check failed: expected a header line",
    }
    assert len({d["signature"] for d in dead.values()}) == 3
    failed = {r.data.item: r.data for r in records(result, "item.failed")}
    assert all("notified" not in f.stderr_tail for f in failed.values())
    assert failed["perms"].signature == signature("command_failed", "open: permission denied")
    # The handler ran all the same: its output is in the attempt's logs.
    log = tmp_path / "home" / "runs" / result.run_id / failed["config"].stderr.path
    assert log.read_text().splitlines()[-1] == '{"notified": "on-call"}'


def test_show_says_what_an_item_not_in_the_dlq_is(tmp_path: Path) -> None:
    """Unknown, succeeded, pending, waiting, running, skipped, failed: each said so, exit 2."""
    from ledger.events import (
        CacheHit,
        ItemDispatched,
        ItemEnqueued,
        ItemFailed,
        ItemRetryScheduled,
        ItemSkipped,
        ItemSucceeded,
    )
    from ledger.writer import LedgerWriter

    names = ["done", "fresh", "waiting", "busy", "cached", "ignored"]
    writer = LedgerWriter.open(tmp_path / "home" / "runs" / "hm", "hm", create=True)
    failed = ItemFailed(item="x", attempt=1, error_type="timeout", signature="s", message="m")
    writer.append_many(
        [
            *(ItemEnqueued(item=name, index=n) for n, name in enumerate(names)),
            *(ItemDispatched(item=i, attempt=1, idempotency_key="ik:x") for i in ("done", "busy")),
            ItemSucceeded(item="done", attempt=1, duration=0.1),
            ItemDispatched(item="waiting", attempt=1, idempotency_key="ik:y"),
            msgspec.structs.replace(failed, item="waiting"),
            ItemRetryScheduled(
                item="waiting", attempt=1, delay=5.0, not_before="2030-01-01T00:00:05.000000Z"
            ),
            CacheHit(item="cached", key="k"),
            ItemSkipped(item="cached", reason="cache"),
            ItemDispatched(item="ignored", attempt=1, idempotency_key="ik:z"),
            msgspec.structs.replace(failed, item="ignored", error_type="command_failed"),
        ]
    )
    writer.close()
    said = {}
    for name in [*names, "nope"]:
        shown = _engine(tmp_path / "home", "dlq", "show", "hm", name)
        assert shown.exit_code == 2, shown.output
        assert len(shown.output.splitlines()) == 1 and "Traceback" not in shown.output
        said[name] = shown.output.removeprefix("engine: error: ").split(" (see ")[0]
    assert said == {
        "done": "item done succeeded (attempt 1); it is not in the dead-letter queue",
        "fresh": "item fresh is pending (not started yet); it is not in the dead-letter queue",
        "waiting": "item waiting is waiting for a retry (attempt 2, not before "
        "2030-01-01T00:00:05.000000Z); it is not in the dead-letter queue",
        "busy": "item busy is running (attempt 1); it is not in the dead-letter queue",
        "cached": "item cached was skipped (a cache hit); it is not in the dead-letter queue",
        "ignored": "item ignored failed (attempt 1: command_failed) and was not "
        "dead-lettered; it is not in the dead-letter queue",
        "nope": "run hm has no item 'nope'",
    }
