"""The HTML audit report as a person sees it: opened in a real headless Chromium.

Real mouse clicks on the item table's headers and rows, real typing in its
filter box; the page must log no error and fetch nothing but itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
from click.testing import CliRunner, Result

from cli.main import cli
from engine.views.report_md import render_markdown
from engine.views.report_model import (
    AttemptRow,
    Failures,
    Identity,
    Integrity,
    ItemRow,
    Outcome,
    Report,
    SnapshotInfo,
    WorkflowInfo,
)
from engine.views.stats import RunStats
from ledger import LedgerReader
from ledger.times import rfc3339
from projections.receipts import Receipt, ReceiptArtifact
from tests.browser import Browser, Page, island_page
from tests.engine_helpers import run_workflow, write_workflow

T0 = 1_795_000_000.0  # a fixed clock (epoch seconds)
HOSTILE = '<img src=x onerror="console.error(1)"></script><b>x'


def _stats() -> RunStats:
    return RunStats(
        run_id="r",
        wall_s=1.0,
        span_s=1.0,
        sessions=1,
        items_finished=0,
        items_per_s=0.0,
        attempts=0,
        attempt_p50_s=None,
        attempt_p95_s=None,
        attempt_p99_s=None,
        max_parallel=2,
        busy_s=0.0,
        parallel_efficiency=None,
        failed_attempts=0,
        retry_time_s=0.0,
        backoff_s=0.0,
        heartbeats=0,
    )


def _item(index: int, name: str, outcomes: list[tuple[str, float]]) -> ItemRow:
    """An item whose attempts ended as ``outcomes`` (outcome, duration), one after the other."""
    attempts, t = [], T0 + index
    for n, (outcome, seconds) in enumerate(outcomes, 1):
        attempts.append(
            AttemptRow(
                attempt=n,
                seq=10 * index + n,
                dispatched_at=rfc3339(t),
                finished_at=rfc3339(t + seconds),
                outcome=outcome,
                duration=seconds,
                message=None if outcome == "succeeded" else f"{outcome} after {seconds} s",
                idempotency_key=f"key-{index}",
                worker="local",
            )
        )
        t += seconds + 2
    last = outcomes[-1][0] if outcomes else "pending"
    failed = [o for o, _ in outcomes if o != "succeeded"]
    receipt = None
    if last == "succeeded":
        receipt = Receipt(
            run="r",
            item=name,
            attempts=len(outcomes),
            idempotency_key=f"key-{index}",
            first_seq=10 * index + 1,
            last_seq=10 * index + len(outcomes) + 1,
            result_digest="sha256:" + f"{index:x}".rjust(64, "d"),
            artifacts=[ReceiptArtifact(path=f"out/{index}.txt", sha256="ab" * 32, size=42)],
            head_hash="sha256:" + "e" * 64,
        )
    return ItemRow(
        item=name,
        index=index,
        status="succeeded" if last == "succeeded" else "dead_lettered",
        error_type=failed[-1] if failed else None,
        duration=sum(s for _, s in outcomes),
        attempts=attempts,
        receipt=receipt,
    )


def _report(items: list[ItemRow]) -> Report:
    return Report(
        generated_at=rfc3339(T0 + 3600),
        generated_by="test",
        integrity=Integrity(
            verified=True, records=1, head_seq=0, head_hash="sha256:" + "0" * 64, ledger_bytes=1
        ),
        identity=Identity(run_id="r", workflow=WorkflowInfo(), snapshot=SnapshotInfo()),
        outcome=Outcome(status="completed", stats=_stats()),
        failures=Failures(),
        items=items,
    )


def _page(tmp_path: Path, report: Report) -> Path:
    path = tmp_path / "report.html"
    path.write_text(island_page(msgspec.json.encode(report)))
    return path


def column(page: Page, k: int) -> list[str]:
    return page.js(  # type: ignore[no-any-return]
        "[...document.querySelectorAll('#items-table tr.item-row')]"
        f".map(r => r.cells[{k}].textContent)"
    )


def assert_clean(page: Page) -> None:
    """No error logged, nothing fetched but the page itself."""
    assert page.errors() == []
    assert page.requests() == [page.url]


SMALL = [
    ("ok-1", [("succeeded", 1.5)]),
    ("flaky-1", [("rate_limited", 0.25), ("succeeded", 12.0)]),
    (HOSTILE, [("succeeded", 3.0)]),
    ("broken-1", [("permission", 0.5), ("permission", 0.5), ("permission", 0.75)]),
    ("slow-1", [("timeout", 100.0), ("succeeded", 2.0)]),
]


def test_the_item_table_sorts_filters_and_opens_an_item(tmp_path: Path) -> None:
    path = _page(tmp_path, _report([_item(i, n, o) for i, (n, o) in enumerate(SMALL)]))
    with Browser(tmp_path) as browser:
        page = browser.open(path)
        assert page.js("document.getElementById('items').dataset.ready") == "true"
        assert column(page, 0) == [n for n, _ in SMALL]  # enqueue order
        assert page.js("document.querySelectorAll('img, b').length") == 0  # ids are text
        page.click("#items-table th[data-key=duration]")
        assert column(page, 0) == ["ok-1", "broken-1", HOSTILE, "flaky-1", "slow-1"]  # numeric
        page.click("#items-table th[data-key=duration]")
        assert column(page, 0) == ["slow-1", "flaky-1", HOSTILE, "broken-1", "ok-1"]
        page.click("#items-table th[data-key=attempts]")
        assert column(page, 2) == ["1", "1", "2", "2", "3"]
        page.type_text("timeout", "#items-filter")
        assert column(page, 0) == ["slow-1"]
        assert page.js("document.getElementById('items-count').textContent").startswith("1 of 1")
        page.js("document.getElementById('items-filter').select()")
        page.type_text("perm")  # the typed text replaces the selection
        assert column(page, 0) == ["broken-1"]
        page.click("#items-table tr.item-row")
        details = _details(page)
        assert details["attempts"] == [
            ["1", "permission", "key-3"],
            ["2", "permission", "key-3"],
            ["3", "permission", "key-3"],
        ]
        assert details["receipt"] == "no receipt (the item did not succeed)"
        assert details["ticks"] and all(len(t) == 8 and t[2] == ":" for t in details["ticks"])
        assert details["bars"] == 3
        assert_clean(page)


def test_the_markdown_form_carries_hostile_ids_as_inert_text() -> None:
    hostile = "<script>alert(1)</script> *x* [l](javascript:y) |"
    page = render_markdown(_report([_item(0, hostile, [("succeeded", 1.0)]), *[]]))
    body = page.rsplit("<!-- engine-report", 1)[0]  # the trailer is base64
    assert "<script>" not in body
    assert "](javascript" not in body.replace("\\](javascript", "")  # a link only if unescaped
    assert "&lt;script&gt;alert(1)&lt;/script&gt; \\*x\\* \\[l\\](javascript:y) \\|" in body


def test_items_named_like_object_properties_open_only_when_clicked(tmp_path: Path) -> None:
    names = ["constructor", "__proto__", "toString", "hasOwnProperty"]
    path = _page(
        tmp_path, _report([_item(i, n, [("succeeded", 1.0)]) for i, n in enumerate(names)])
    )
    with Browser(tmp_path) as browser:
        page = browser.open(path)
        assert column(page, 0) == names
        details = "document.querySelectorAll('#items-table tr.item-detail').length"
        assert page.js(details) == 0
        page.click("#items-table tr.item-row")
        assert page.js(details) == 1
        assert_clean(page)


def _details(page: Page) -> dict[str, Any]:
    return page.js(  # type: ignore[no-any-return]
        """(() => { const d = document.querySelector('#items-table tr.item-detail');
        if (!d) return null;
        const texts = s => [...d.querySelectorAll(s)].map(e => e.textContent);
        return {
          attempts: [...d.querySelectorAll('table.attempts tbody tr')].map(
            r => [r.cells[0].textContent, r.cells[4].textContent, r.cells[7].textContent]),
          receipt: (d.querySelector('.receipt') || {}).textContent,
          dd: texts('dl.receipt dd'), artifacts: texts('table.artifacts td'),
          ticks: texts('.attempt-axis .tick-label').filter(t => t.includes(':')),
          bars: d.querySelectorAll('.attempt-axis rect.bar').length };
        })()"""
    )


def test_an_items_receipt_and_its_attempts_on_a_clock_axis(tmp_path: Path) -> None:
    path = _page(tmp_path, _report([_item(i, n, o) for i, (n, o) in enumerate(SMALL)]))
    with Browser(tmp_path) as browser:
        page = browser.open(path)
        page.click("#items-table tr.item-row", 4)  # slow-1: 100 s, 2 s later 2 s
        details = _details(page)
        first = rfc3339(T0 + 4)[11:19]
        assert details["attempts"] == [["1", "timeout", "key-4"], ["2", "succeeded", "key-4"]]
        assert details["dd"][:3] == ["sha256:" + "4".rjust(64, "d"), "41..43", "sha256:" + "e" * 64]
        assert details["artifacts"] == ["out/4.txt", "ab" * 32, "42"]
        ticks = details["ticks"]
        assert ticks[0] <= first <= ticks[1] and len(ticks) <= 8  # round steps around the start
        page.click("#items-table tr.item-row", 4)  # closes it
        assert _details(page) is None
        assert_clean(page)


def test_ten_thousand_items_open_in_pages_under_ten_megabytes(tmp_path: Path) -> None:
    outcomes = [[("succeeded", 1.0)], [("timeout", 3.0), ("succeeded", 1.5)], [("timeout", 3.0)]]
    items = [
        _item(i, f"item-{i:05d}", outcomes[i % 3 if i % 10 == 0 else 0]) for i in range(10_000)
    ]
    path = _page(tmp_path, _report(items))
    assert path.stat().st_size < 10_000_000
    with Browser(tmp_path) as browser:
        page = browser.open(path)
        count = "document.querySelectorAll('#items-table tr.item-row').length"
        assert page.js(count) == 200
        page.click("#items-more")
        assert page.js(count) == 400
        page.js("const s = document.getElementById('items-error'); s.value = 'timeout';"
                "s.dispatchEvent(new Event('change'))")  # fmt: skip
        timeouts = [r.item for r in items if r.error_type == "timeout"]
        assert page.js("document.getElementById('items-count').textContent") == (
            f"200 of {len(timeouts)} items shown (10000 in all)"
        )
        page.click("#items-table th[data-key=item]")
        page.click("#items-table th[data-key=item]")  # descending
        assert column(page, 0) == sorted(timeouts, reverse=True)[:200]
        assert (
            json.loads(page.js("JSON.stringify(document.getElementById('items-more').hidden)"))
            is False
        )
        assert_clean(page)


RUN = """
name: browser
map:
  items: [ok-1, ok-2, ok-3, flaky-1, flaky-2, broken-1]
  id: "${item}"
  max_parallel: 3
  retry: {max_attempts: 2, initial: 10ms, max: 10ms, jitter: false}
  agent_template:
    - run: |
        case "${item}" in
          ok-*) echo fine ;;
          flaky-*) if [ -e "seen-${item}" ]; then echo fine; else
                     touch "seen-${item}"; echo "429 rate limit exceeded" >&2; exit 1; fi ;;
          broken-*) echo "open config.yml: permission denied" >&2; exit 13 ;;
        esac
"""


SECTIONS = ("integrity", "identity", "outcome", "failures", "timeline", "items-section", "workflow")


def _seq_range(page: Path, item: str) -> tuple[int, int]:
    """The seqs of the item's first dispatch and its success, from the run's ledger."""
    run_dir = next((page.parent / "home" / "runs").iterdir())
    seqs = [
        (r.type, r.seq)
        for r in LedgerReader(run_dir / "ledger.ndjson").records()
        if getattr(r.data, "item", None) == item
    ]
    return (
        next(s for t, s in seqs if t == "item.dispatched"),
        next(s for t, s in seqs if t == "item.succeeded"),
    )


def _real_report(tmp_path: Path) -> Path:
    """A real run (successes, retries, a dead letter), resumed with its DLQ, and its report."""
    wf = write_workflow(tmp_path / "wf", RUN)
    home = tmp_path / "home"
    first = run_workflow(wf, home)
    assert first.exit_code == 1, first.reason  # broken-1 in the DLQ
    resumed = _engine(home, "resume", first.run_id, "--include-dlq", "--no-progress")
    assert resumed.exit_code == 1, resumed.output  # broken-1 fails again
    out = tmp_path / "report.html"
    made = _engine(home, "audit", "report", first.run_id, "--format", "html", "-o", str(out))
    assert made.exit_code == 0, made.output
    return out


def _engine(home: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--home", str(home), *args], catch_exceptions=False)


def test_the_report_of_a_real_run_in_a_browser(tmp_path: Path) -> None:
    path = _real_report(tmp_path)
    with Browser(tmp_path) as browser:
        page = browser.open(path)
        ids = page.js("[...document.querySelectorAll('section[id]')].map(s => s.id)")
        assert ids == [*SECTIONS], ids
        line = page.js("document.getElementById('integrity-line').textContent")
        assert line.startswith("hash chain verified"), line
        assert column(page, 0) == ["ok-1", "ok-2", "ok-3", "flaky-1", "flaky-2", "broken-1"]
        page.click("#items-table th[data-key=status]")
        assert column(page, 1)[0] == "dead" and column(page, 0)[0] == "broken-1"
        page.click("#items-table th[data-key=attempts]")
        page.click("#items-table th[data-key=attempts]")  # most attempts first
        assert column(page, 2) == ["2", "2", "2", "1", "1", "1"]
        assert set(column(page, 0)[:3]) == {"flaky-1", "flaky-2", "broken-1"}
        page.click("#items-table tr.item-row", column(page, 0).index("broken-1"))
        details = _details(page)  # a dead letter: an attempt in each session, no receipt
        assert [a[1] for a in details["attempts"]] == ["command_failed", "command_failed"]
        assert details["receipt"] == "no receipt (the item did not succeed)"
        page.type_text("flaky", "#items-filter")
        assert sorted(column(page, 0)) == ["flaky-1", "flaky-2"]
        assert column(page, 1) == ["succeeded", "succeeded"]
        page.click("#items-table tr.item-row")
        details = _details(page)
        assert [a[1] for a in details["attempts"]] == ["rate_limited", "succeeded"]
        assert details["dd"][0].startswith("sha256:") and details["bars"] == 2
        assert details["dd"][1] == "{}..{}".format(*_seq_range(path, column(page, 0)[0]))
        assert_clean(page)
