"""`engine query`, `patterns ack`, `stats`, `audit report`; private files; secrets."""

from __future__ import annotations

import csv
import io
import json
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cli.main import cli
from engine.views.query import NAMED
from ledger import LedgerReader, LedgerWriter
from ledger.events import (
    ItemDeadLettered,
    ItemDispatched,
    ItemEnqueued,
    ItemFailed,
    ItemRequeued,
    ItemSkipped,
    ItemSucceeded,
    RunAborted,
)
from ledger.times import rfc3339
from tests.engine_helpers import MOCK, run_workflow, write_script, write_workflow

FAILING = """
name: {name}
map:
  items: [ok-1, ok-2, flaky-1, flaky-2, broken-1]
  id: "${{item}}"
  max_parallel: 2
  retry: {{max_attempts: 2, initial: 10ms}}
  agent_template:
    - run: |
        case "${{item}}" in
          ok-*) sleep 0.05; echo fine ;;
          flaky-*) echo "429 rate limit exceeded" >&2; exit 1 ;;
          broken-*) echo "open config.yml: permission denied" >&2; exit 13 ;;
        esac
"""


def _engine(home: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--home", str(home), *args], catch_exceptions=False)


def _run(tmp_path: Path, name: str = "q") -> tuple[Path, str]:
    wf = write_workflow(tmp_path / name, FAILING.format(name=name))
    result = run_workflow(wf, tmp_path / "home")
    return tmp_path / "home", result.run_id


def _json(result: Result) -> list[dict[str, object]]:
    assert result.exit_code == 0, result.output
    return json.loads(result.output)  # type: ignore[no-any-return]


def test_failures_by_signature_has_the_promised_columns_and_counts(tmp_path: Path) -> None:
    home, run = _run(tmp_path)
    rows = _json(_engine(home, "query", run, "failures by signature", "--format", "json"))
    assert list(rows[0]) == [
        "signature", "error_type", "count", "items", "first_seen", "last_seen", "example",
    ]  # fmt: skip
    by_type = {r["error_type"]: r for r in rows}
    assert by_type["rate_limited"]["count"] == 4 and by_type["rate_limited"]["items"] == 2
    assert by_type["command_failed"]["count"] == 1
    assert "permission denied" in str(by_type["command_failed"]["example"])
    # The same answer from the ledger itself, independently of DuckDB.
    failed = [r.data for r in LedgerReader(home / "runs" / run / "ledger.ndjson").records()
              if r.type == "item.failed"]  # fmt: skip
    assert sum(int(r["count"]) for r in rows) == len(failed)  # type: ignore[call-overload]
    text = _engine(home, "query", run, "failures", "by", "signature").output
    assert "…" not in text and "open config.yml: permission denied" in text  # a pipe: never cut
    table = list(csv.reader(io.StringIO(
        _engine(home, "query", run, "failures by signature", "--format", "csv").output
    )))  # fmt: skip
    assert table[0][:3] == ["signature", "error_type", "count"] and len(table) == 3


def test_every_named_query_runs_and_nothing_is_cut_in_a_pipe(tmp_path: Path) -> None:
    home, run = _run(tmp_path)
    listed = _engine(home, "query", "--list").output.splitlines()
    assert [line.split("  ")[0].strip() for line in listed] == list(NAMED)
    for name in NAMED:
        out = _engine(home, "query", run, name)
        assert out.exit_code == 0, (name, out.output)
        assert "…" not in out.output, name  # on a terminal: tests/test_cli_output.py
    dlq = _json(_engine(home, "query", run, "dlq", "--format", "json"))
    assert sorted(str(r["item"]) for r in dlq) == ["broken-1", "flaky-1", "flaky-2"]
    items = _json(
        _engine(home, "query", run, "--sql", "SELECT status, count(*) AS n FROM items "
                "GROUP BY status ORDER BY status", "--format", "json")
    )  # fmt: skip
    assert items == [{"status": "dead", "n": 3}, {"status": "succeeded", "n": 2}]


def test_bad_sql_and_unknown_names_are_one_line_exit_2(tmp_path: Path) -> None:
    home, run = _run(tmp_path)
    near = _engine(home, "query", run, "failures by signatur")
    assert near.exit_code == 2 and "did you mean 'failures by signature'" in near.output
    assert len(near.output.strip().splitlines()) == 1
    bad = _engine(home, "query", run, "--sql", "SELEC 1")
    assert bad.exit_code == 2 and "the query failed" in bad.output
    assert len(bad.output.strip().splitlines()) == 1 and "Traceback" not in bad.output


def test_a_torn_last_line_is_left_out(tmp_path: Path) -> None:
    home, run = _run(tmp_path)
    ledger = home / "runs" / run / "ledger.ndjson"
    whole = _json(_engine(home, "query", run, "--sql", "SELECT count(*) AS n FROM events",
                          "--format", "json"))  # fmt: skip
    with open(ledger, "ab") as f:
        f.write(b'{"v":1,"seq":99999,"ts":"2026-')  # an append caught half-way
    torn = _json(_engine(home, "query", str(ledger), "--sql", "SELECT count(*) AS n FROM events",
                         "--format", "json"))  # fmt: skip
    assert torn == whole


def test_failure_patterns_across_runs_ack_and_regression(tmp_path: Path) -> None:
    home, first = _run(tmp_path, "p1")
    _run(tmp_path, "p2")
    patterns = _json(_engine(home, "query", "--all", "failure patterns", "--format", "json"))
    rate = next(p for p in patterns if p["error_type"] == "rate_limited")
    assert rate["count"] == 8 and rate["runs"] == 2 and rate["state"] == "open"
    assert "max_parallel" in str(rate["remedy"]) and float(rate["priority"]) > 0  # type: ignore[arg-type]
    assert all(int(p["count"]) >= 3 for p in patterns)  # type: ignore[call-overload]
    signature = str(rate["signature"])
    acked = _engine(home, "patterns", "ack", signature[:12], "--note", "lowered max_parallel",
                    "--ref", "abc123")  # fmt: skip
    assert acked.exit_code == 0, acked.output
    ledger = home / "patterns" / "ledger.ndjson"
    assert [r.type for r in LedgerReader(ledger).records()][-1] == "pattern.acknowledged"
    assert _engine(home, "audit", "verify", str(ledger)).exit_code == 0
    after = _json(_engine(home, "query", "--all", "failure patterns", "--format", "json"))
    rate = next(p for p in after if p["signature"] == signature)
    assert rate["state"] == "acknowledged" and rate["ack_ref"] == "abc123"
    _run(tmp_path, "p3")  # it fails again after the fix: a regression
    again = _json(_engine(home, "query", "--all", "failure patterns", "--format", "json"))
    assert next(p for p in again if p["signature"] == signature)["state"] == "regression"
    short = _engine(home, "patterns", "ack", "ffff", "--note", "x")
    assert short.exit_code == 2 and "is not a signature (6 to 64 hex digits)" in short.output
    unknown = _engine(home, "patterns", "ack", "ffffff", "--note", "x")
    assert unknown.exit_code == 2 and "no failure has a signature" in unknown.output
    assert first


def test_stats(tmp_path: Path) -> None:
    home, run = _run(tmp_path)
    stats = json.loads(_engine(home, "stats", run, "--json").output)
    records = list(LedgerReader(home / "runs" / run / "ledger.ndjson").records())
    durations = sorted(
        r.data.duration for r in records if r.type in ("item.succeeded", "item.failed")
    )
    assert stats["attempts"] == len(durations) == 7  # 2 ok, 2 x 2 rate-limited, 1 not retried
    assert stats["attempt_p50_s"] == pytest.approx(durations[3], abs=1e-6)
    assert stats["attempt_p99_s"] <= durations[-1]
    assert stats["failed_attempts"] == 5 and stats["items_finished"] == 5
    assert stats["backoff_s"] > 0 and stats["max_parallel"] == 2
    assert 0 < stats["parallel_efficiency"] <= 1
    assert stats["items_per_s"] == pytest.approx(5 / stats["wall_s"], rel=1e-3)


def test_audit_report_markdown_json_and_self_contained_html(tmp_path: Path) -> None:
    home, run = _run(tmp_path)
    md = _engine(home, "audit", "report", run).output
    headings = ["## Integrity", "### Engine sessions", "### Torn tails recovered", "## Items"]
    headings += ["### Variables", "## Workflow"]
    for heading in headings:
        assert md.count(heading + "\n") == 1, heading
    assert "| workflow hash | sha256:" in md and "| workspace snapshot |" in md
    report = json.loads(_engine(home, "audit", "report", run, "--format", "json").output)
    assert {e["item"] for e in report["items"]} == {
        "ok-1", "ok-2", "flaky-1", "flaky-2", "broken-1",
    }  # fmt: skip
    flaky = next(e for e in report["items"] if e["item"] == "flaky-1")
    assert [a["outcome"] for a in flaky["attempts"]] == ["rate_limited", "rate_limited"]
    session = report["identity"]["sessions"][0]
    assert session["user"] and session["kind"] == "run"
    assert report["identity"]["workflow"]["hash"].startswith("sha256:")
    assert report["integrity"]["verified"] is True
    out = tmp_path / "report.html"
    assert _engine(home, "audit", "report", run, "--format", "html", "-o", str(out)).exit_code == 0
    page = out.read_text()
    assert page.count("<svg") == 2 and 'id="report-data"' in page and 'id="items"' in page
    assert "<script src" not in page and "<link" not in page  # one file, nothing fetched
    assert "broken-1" in page and "rate_limited" in page


def test_files_the_engine_creates_are_private(tmp_path: Path) -> None:
    wf = write_workflow(
        tmp_path,
        """
        name: private
        cache: {}
        map:
          items: [a, b]
          agent_template:
            - run: echo out; echo err >&2; mkdir -p build; echo x > "build/${item}"
              artifacts: ["build/${item}"]
              capture_output: seen
        setup:
          - run: echo setup
        """,
    )
    home = tmp_path / "home"
    run = run_workflow(wf, home)
    _engine(home, "patterns", "ack", "0" * 64, "--note", "n")
    _engine(home, "audit", "report", run.run_id, "-o", str(home / "runs" / run.run_id / "r.md"))
    checked = 0
    for root, dirs, files in os.walk(home):
        for d in dirs:
            mode = stat.S_IMODE(os.stat(os.path.join(root, d)).st_mode)
            assert mode == 0o700, (os.path.join(root, d), oct(mode))
        for f in files:
            mode = stat.S_IMODE(os.stat(os.path.join(root, f)).st_mode)
            assert mode == 0o600, (os.path.join(root, f), oct(mode))
            checked += 1
    assert stat.S_IMODE(os.stat(home).st_mode) == 0o700
    assert checked >= 10  # ledger, lock, workflow, snapshot, logs, results, cache, store, ...


def test_a_secret_appears_nowhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # One secret from the environment, with characters JSON must escape; one given
    # with --var. Commands print them whole, in two halves, and inside JSON.
    secret = 's3cr3t"Va\\lüe-91f2'
    given = "var-s3cr3t-7c1d"
    monkeypatch.setenv("MY_TOKEN", secret)
    monkeypatch.delenv("VAR_TOKEN", raising=False)
    wf = write_workflow(
        tmp_path,
        f"""
        name: secretive
        secrets: [MY_TOKEN, VAR_TOKEN]
        cache: {{}}
        setup:
          - run: echo "setup sees $MY_TOKEN and $VAR_TOKEN"
            capture_output: seen
        map:
          items: [a, b]
          retry: {{max_attempts: 1}}
          agent_template:
            - run: |
                echo "stdout $MY_TOKEN $VAR_TOKEN"
                echo "stderr $MY_TOKEN" >&2
                printf "half %s" "${{MY_TOKEN%???????}}" >&2; sleep 0.2
                printf "%s done\\n" "${{MY_TOKEN#???????????}}" >&2
                if [ "${{item}}" = b ]; then echo "error: token $MY_TOKEN rejected" >&2; exit 3; fi
            - argv: ["{sys.executable}", "-c",
                     "import json, os; print(json.dumps({{'t': os.environ['MY_TOKEN'],
                      'v': [os.environ['VAR_TOKEN']]}}))"]
              output: json
        reduce:
          - run: echo "reduce $MY_TOKEN ${{seen}}"
        """,
    )
    home = tmp_path / "home"
    result = run_workflow(
        wf, home, variables={"VAR_TOKEN": given}, command=f"engine run x --var VAR_TOKEN={given}"
    )
    assert result.projections.items.counts["succeeded"] == 1
    _engine(home, "audit", "report", result.run_id, "-o", str(result.run_dir / "report.md"))
    forms = {secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1], given}
    searched = redacted = 0
    for root in (result.run_dir, home / "cache", home / "store"):
        for path in root.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                for form in forms:
                    assert form.encode() not in data, (path, form)
                searched += 1
                redacted += b"***" in data
    assert searched >= 8 and redacted >= 4  # logs, ledger, results, cache entry
    records = list(LedgerReader(result.run_dir / "ledger.ndjson").records())
    failed = [r.data for r in records if r.type == "item.failed"]
    assert "token *** rejected" in failed[0].message
    succeeded = [r.data for r in records if r.type == "item.succeeded"]
    assert succeeded[0].result == {"t": "***", "v": ["***"]}
    created = next(r.data for r in records if r.type == "run.created")
    assert created.vars == {"VAR_TOKEN": "***"}


def _clock(times: list[int]) -> Callable[[], str]:
    """Each record at the next of these seconds."""
    pending = iter(times)
    return lambda: rfc3339(1_800_000_000 + next(pending))


def test_stats_leave_out_the_time_between_a_crash_and_the_resume(tmp_path: Path) -> None:
    run_dir = tmp_path / "home" / "runs" / "r"
    with LedgerWriter.open(run_dir, "r", create=True, command="a", clock=_clock([0, 10])) as w:
        w.append_many([ItemEnqueued(item="a", index=0), RunAborted(reason="crash")])
    with (run_dir / "ledger.ndjson").open("ab") as f:
        f.write(b'{"v":1,"seq":3,"ts":"2027')  # a torn tail, moved aside on opening
    with LedgerWriter.open(run_dir, "r", command="b", clock=_clock([1000, 1005])) as w:
        assert w.recovered is not None
        w.append(RunAborted(reason="again"))
    stats = json.loads(_engine(tmp_path / "home", "stats", "r", "--json").output)
    assert stats["sessions"] == 2 and stats["span_s"] == 1005
    assert stats["wall_s"] == 10 + 5  # not up to the resume's recovery record


def test_audit_report_shows_an_item_requeued_from_the_dlq_as_it_ended(tmp_path: Path) -> None:
    run_dir = tmp_path / "home" / "runs" / "r"
    with LedgerWriter.open(run_dir, "r", create=True, command="engine") as w:
        w.append_many(
            [
                ItemEnqueued(item="a", index=0),
                ItemEnqueued(item="b", index=1),
                ItemDispatched(item="a", attempt=1, idempotency_key="ik"),
                ItemFailed(item="a", attempt=1, error_type="timeout", signature="s"),
                ItemDeadLettered(item="a", attempt=1, error_type="timeout", signature="s"),
                ItemSkipped(item="b", reason="cache"),
                ItemRequeued(item="a"),
                ItemDispatched(item="a", attempt=2, idempotency_key="ik"),
                ItemSucceeded(item="a", attempt=2, duration=1.0),
            ]
        )
    report = json.loads(
        _engine(tmp_path / "home", "audit", "report", "r", "--format", "json").output
    )
    statuses = {e["item"]: e["status"] for e in report["items"]}
    assert statuses == {"a": "succeeded", "b": "skipped (cache)"}


SPENDING = f"""
name: {{name}}
agent: {{{{command: "{MOCK}", output: claude-json}}}}
map:
  items: [{{items}}]
  id: "${{{{item}}}}"
  retry: {{{{max_attempts: 2, initial: 10ms, max: 10ms, jitter: false}}}}
  agent_template:
    - claude: "review ${{{{item}}}}"
"""

SPENT = {
    "a": {"ok": "done", "cost": 0.25, "turns": 2, "session": "s-a", "model": "m-1",
          "tokens": {"input": 100, "output": 50, "cache_read": 30, "cache_creation": 20}},
    "b": [{"fail": "API Error: 500", "cost": 0.1}, {"ok": "done", "cost": 0.2}],
    "c": {"ok": "done", "cost": 0.07},
}  # fmt: skip


def _spending_run(tmp_path: Path, name: str, items: list[str]) -> tuple[Path, str]:
    wf = write_workflow(tmp_path / name, SPENDING.format(name=name, items=", ".join(items)))
    write_script(tmp_path / name, {"items": SPENT})
    result = run_workflow(wf, tmp_path / "home")
    return tmp_path / "home", result.run_id


def test_cost_queries_across_runs_name_each_run(tmp_path: Path) -> None:
    _, one = _spending_run(tmp_path, "one", ["a", "b"])
    home, two = _spending_run(tmp_path, "two", ["b", "c"])
    rows = _json(_engine(home, "query", "--all", "cost by item", "--format", "json"))
    assert sorted((r["run"], r["item"], r["cost_usd"], r["attempts"]) for r in rows) == sorted(
        [(one, "a", 0.25, 1), (one, "b", 0.3, 2), (two, "b", 0.3, 2), (two, "c", 0.07, 1)]
    )
    (by_type,) = _json(_engine(home, "query", "--all", "cost by error type", "--format", "json"))
    assert (by_type["error_type"], by_type["cost_usd"]) == ("api_error", 0.2)
    assert (by_type["attempts"], by_type["items"], by_type["runs"]) == (2, 2, 2)
    (by_sig,) = _json(_engine(home, "query", "--all", "cost by signature", "--format", "json"))
    assert (by_sig["cost_usd"], by_sig["runs"]) == (0.2, 2)
    spend = _json(_engine(home, "query", "--all", "spend over time", "--format", "json"))
    assert spend[-1]["total_usd"] == 0.92 and sum(int(r["runs"]) for r in spend) >= 2  # type: ignore[call-overload]
    alone = _json(_engine(home, "query", one, "cost by item", "--format", "json"))
    assert {r["run"] for r in alone} == {one}


def test_the_events_view_has_the_usage_columns(tmp_path: Path) -> None:
    home, run = _spending_run(tmp_path, "ev", ["a", "b"])
    columns = "type, cost_usd, input_tokens, output_tokens, cache_read_input_tokens, " \
        "cache_creation_input_tokens, turns, session_id, model"  # fmt: skip
    rows = _json(_engine(home, "query", run, "--sql",
                         f"SELECT data->>'item' AS item, {columns} FROM events ORDER BY seq",
                         "--format", "json"))  # fmt: skip
    (a,) = [r for r in rows if r["type"] == "item.succeeded" and r["item"] == "a"]
    assert a == {
        "item": "a", "type": "item.succeeded", "cost_usd": 0.25, "input_tokens": 100,
        "output_tokens": 50, "cache_read_input_tokens": 30, "cache_creation_input_tokens": 20,
        "turns": 2, "session_id": "s-a", "model": "m-1",
    }  # fmt: skip
    (failed,) = [r for r in rows if r["type"] == "item.failed"]
    assert (failed["item"], failed["cost_usd"]) == ("b", 0.1)
    others = [r for r in rows if r["type"] not in ("item.succeeded", "item.failed")]
    assert others and {r["type"] for r in others} >= {"run.created", "item.dispatched"}
    assert all(r[c] is None for r in others for c in columns.split(", ")[1:])
    # One definition: the usage view has the same columns, with the same values.
    sql = f"SELECT {columns} FROM usage WHERE item = 'a'"
    usage = _json(_engine(home, "query", run, "--sql", sql, "--format", "json"))
    assert usage == [{k: v for k, v in a.items() if k != "item"}]
