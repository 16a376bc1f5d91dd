"""`engine audit report`'s sections, and `engine audit verify RUN --report FILE`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cli.main import cli
from ledger import LedgerWriter
from ledger.events import (
    DLQPurged,
    ItemDeadLettered,
    ItemDispatched,
    ItemEnqueued,
    ItemFailed,
    ItemSucceeded,
    LogRef,
    RunCancelRequested,
    RunPaused,
    RunUnpaused,
)


def _engine(home: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--home", str(home), *args], catch_exceptions=False)


def _ledger(home: Path) -> Path:
    run_dir = home / "runs" / "r"
    with LedgerWriter.open(run_dir, "r", create=True, command="engine run") as w:
        w.append_many(
            [
                ItemEnqueued(item="a", index=0),
                ItemEnqueued(item="b", index=1),
                ItemEnqueued(item="c", index=2),
                ItemDispatched(item="a", attempt=1, idempotency_key="ik-a"),
                ItemFailed(
                    item="a",
                    attempt=1,
                    error_type="timeout",
                    signature="sig-t",
                    message="timed out",
                    signal=15,
                    duration=2.0,
                    stderr_tail="still waiting...",
                    stderr=LogRef(path="logs/a-1.err", sha256="sha256:00", size=17),
                ),
                ItemDispatched(item="a", attempt=2, idempotency_key="ik-a"),
                ItemSucceeded(item="a", attempt=2, duration=1.0, result={"ok": 1}),
                ItemDispatched(item="b", attempt=1, idempotency_key="ik-b"),
                ItemFailed(
                    item="b",
                    attempt=1,
                    error_type="agent_error",
                    signature="sig-p",
                    message="permission denied: /etc/x",
                    exit_code=1,
                ),
                ItemDeadLettered(
                    item="b",
                    attempt=1,
                    error_type="agent_error",
                    signature="sig-p",
                    reason="not retryable",
                ),
                ItemDispatched(item="c", attempt=1, idempotency_key="ik-c"),
                ItemFailed(item="c", attempt=1, error_type="timeout", signature="sig-t"),
                ItemDeadLettered(
                    item="c",
                    attempt=1,
                    error_type="timeout",
                    signature="sig-t",
                    reason="retries exhausted",
                ),
            ]
        )
    with LedgerWriter.open(run_dir, "r", command="engine pause") as w:
        w.append(RunPaused(by="ann@box pid 7"))
        w.append(RunUnpaused(by="bob@box pid 8"))
        w.append(RunCancelRequested(by="ann@box pid 9", force=True))
    return run_dir


def _report(home: Path, fmt: str = "json", *, code: int = 0) -> str:
    result = CliRunner().invoke(cli, ["--home", str(home), "audit", "report", "r", "--format", fmt])
    assert result.exit_code == code, result.output
    return result.stdout


def test_every_section_has_what_the_ledger_recorded(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _ledger(home)
    r = json.loads(_report(home))
    assert (
        r["integrity"]["verified"] and r["integrity"]["records"] == r["integrity"]["head_seq"] + 1
    )
    sessions = r["identity"]["sessions"]
    assert [s["command"] for s in sessions] == ["engine run", "engine pause"]
    assert sessions[1]["kind"] == "pause" and all(s["user"] for s in sessions)
    controls = [(c["type"], c["by"]) for c in r["identity"]["controls"]]
    assert controls == [
        ("run.paused", "ann@box pid 7"),
        ("run.unpaused", "bob@box pid 8"),
        ("run.cancel_requested", "ann@box pid 9"),
    ]
    failed = r["failures"]["attempts"]
    assert [(f["item"], f["error_type"]) for f in failed] == [
        ("a", "timeout"), ("b", "agent_error"), ("c", "timeout"),
    ]  # fmt: skip
    assert failed[0]["signal"] == 15 and failed[0]["stderr_tail"] == "still waiting..."
    assert failed[0]["stderr"]["path"] == "logs/a-1.err" and failed[1]["exit_code"] == 1
    dlq = {d["item_id"]: d for d in r["failures"]["dlq"]}
    assert dlq["b"]["needs_review"] and "'permission denied'" in dlq["b"]["rule"]
    assert dlq["c"]["reprocessable"] and "transient" in dlq["c"]["rule"]
    assert {s["signature"]: s["count"] for s in r["failures"]["signatures"]} == {
        "sig-t": 2, "sig-p": 1,
    }  # fmt: skip
    a = r["items"][0]
    assert [x["outcome"] for x in a["attempts"]] == ["timeout", "succeeded"]
    assert a["attempts"][0]["idempotency_key"] == "ik-a" and a["error_type"] == "timeout"
    assert a["receipt"]["attempts"] == 2 and a["receipt"]["result_digest"].startswith("sha256:")
    assert r["items"][1]["receipt"] is None
    md = _report(home, "md")
    assert "| timeout | 2 |" in md and "logs/a-1.err" in md and a["receipt"]["head_hash"] in md
    assert "| field | value |" in md and not any(x.startswith("|  |") for x in md.splitlines())


def test_a_corrupt_ledger_is_reported_not_verified_up_to_the_bad_record(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run_dir = _ledger(home)
    ledger = run_dir / "ledger.ndjson"
    lines = ledger.read_bytes().splitlines(keepends=True)
    lines[5] = lines[5].replace(b'"timed out"', b'"timed_out"')
    ledger.write_bytes(b"".join(lines))
    r = json.loads(_report(home, code=1))
    assert not r["integrity"]["verified"] and "seq 5" in r["integrity"]["problem"]
    assert r["integrity"]["head_seq"] == 4
    assert "NOT verified: seq 5" in _report(home, "html", code=1)


@pytest.mark.parametrize("fmt", ["md", "json", "html"])
def test_verify_report_accepts_its_own_ledger_and_a_grown_one(tmp_path: Path, fmt: str) -> None:
    home = tmp_path / "home"
    run_dir = _ledger(home)
    out = tmp_path / f"report.{fmt}"
    assert _engine(home, "audit", "report", "r", "--format", fmt, "-o", str(out)).exit_code == 0
    ok = _engine(home, "audit", "verify", "r", "--report", str(out))
    assert ok.exit_code == 0 and "belongs to this ledger" in ok.output, ok.output
    with LedgerWriter.open(run_dir, "r", command="engine dlq purge") as w:
        w.append(DLQPurged(items=["c"], by="ann@box pid 10"))
    grown = _engine(home, "audit", "verify", "r", "--report", str(out), "--json")
    assert grown.exit_code == 0
    check = json.loads(grown.output)["report"]
    assert check["ok"] and check["records"] == check["head_seq"] + 3  # lock.acquired, purge


@pytest.mark.parametrize("fmt", ["md", "json", "html"])
def test_verify_report_fails_a_changed_ledger_and_an_edited_report(
    tmp_path: Path, fmt: str
) -> None:
    home = tmp_path / "home"
    run_dir = _ledger(home)
    out = tmp_path / f"report.{fmt}"
    _engine(home, "audit", "report", "r", "--format", fmt, "-o", str(out))
    text = out.read_text()
    edited = text.replace("permission denied", "all fine, really", 1)
    assert edited != text
    out.write_text(edited)
    bad = _engine(home, "audit", "verify", "r", "--report", str(out))
    assert bad.exit_code == 1 and "the report was edited" in bad.output
    out.write_text(text)
    other = tmp_path / "other"
    _ledger(other)  # the same events, but another ledger (other times, other hashes)
    (home / "runs" / "r").rename(tmp_path / "old")
    (other / "runs" / "r").rename(home / "runs" / "r")
    changed = _engine(home, "audit", "verify", "r", "--report", str(out))
    assert changed.exit_code == 1 and "the ledger changed" in changed.output
    assert run_dir.name == "r"


def test_verify_report_fails_a_backdated_a_foreign_and_another_runs_report(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    _ledger(home)
    out = tmp_path / "report.json"
    assert _engine(home, "audit", "report", "r", "--format", "json", "-o", str(out)).exit_code == 0
    made = json.loads(out.read_text())
    for change, says in [
        ({"generated_at": "2020-01-01T00:00:00.000000Z"}, "before the last record it covers"),
        ({"generated_by": "9.9.9"}, "the report was made by engine 9.9.9"),
    ]:
        out.write_text(json.dumps({**made, **change}))
        bad = _engine(home, "audit", "verify", "r", "--report", str(out))
        assert bad.exit_code == 1 and says in bad.output, bad.output
    made["identity"]["run_id"] = "another"
    out.write_text(json.dumps(made))
    bad = _engine(home, "audit", "verify", "r", "--report", str(out))
    assert bad.exit_code == 1 and "the report is of run 'another', not of 'r'" in bad.output


def test_a_report_of_a_corrupt_ledger_is_made_and_exits_1(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ledger = _ledger(home) / "ledger.ndjson"
    lines = ledger.read_bytes().splitlines(keepends=True)
    lines[5] = lines[5].replace(b'"timed out"', b'"timed_out"')
    ledger.write_bytes(b"".join(lines))
    out = tmp_path / "report.html"
    done = _engine(home, "audit", "report", "r", "--format", "html", "-o", str(out))
    assert done.exit_code == 1 and "LEDGER NOT VERIFIED: seq 5" in done.output, done.output
    assert "NOT verified: seq 5" in out.read_text()


SIG = "abcdef012345"


def test_verify_report_checks_its_patterns_as_the_home_had_them(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _ledger(home)
    with LedgerWriter.open(home / "runs" / "r2", "r2", create=True, command="engine run") as w:
        w.append_many(
            [
                ItemEnqueued(item="x", index=0),
                ItemDispatched(item="x", attempt=1, idempotency_key="ik-x"),
                *[
                    ItemFailed(item="x", attempt=n, error_type="timeout", signature=SIG)
                    for n in (1, 2, 3)
                ],
            ]
        )
    assert _engine(home, "patterns", "ack", SIG, "--note", "raised the timeout").exit_code == 0
    out = tmp_path / "report.json"
    assert _engine(home, "audit", "report", "r2", "--format", "json", "-o", str(out)).exit_code == 0
    made = json.loads(out.read_text())
    (pattern,) = made["failures"]["patterns"]
    assert (pattern["signature"], pattern["state"], pattern["runs"]) == (SIG, "acknowledged", 1)
    # Later work in the home (another ack, another run) does not change what it had then.
    assert _engine(home, "patterns", "ack", SIG, "--note", "and again").exit_code == 0
    ok = _engine(home, "audit", "verify", "r2", "--report", str(out))
    assert ok.exit_code == 0, ok.output
    pattern["note"] = "approved by the auditor"
    out.write_text(json.dumps(made))
    bad = _engine(home, "audit", "verify", "r2", "--report", str(out))
    assert bad.exit_code == 1 and "failures.patterns[0].note differs" in bad.output, bad.output
