"""The HTML audit report of a 10,000-item run: build, render, size, and opening it in Chromium.

    .venv/bin/python benchmarks/bench_report.py [--items N] [--repeat N] [--out FILE]

A synthetic run's ledger (written with the ledger's own writer): every item
dispatched, one in ten failing once with a timeout and retried, one in thirty
dead-lettered after three failures. Timed, median of N: `build_report` (one
replay and its folds), `render_html`; the page's size; in headless Chromium
(one browser, a fresh tab each time), navigation to the load event, to the
first frame drawn with the item table, and a sort of the table by duration.
The baseline is the same report with the item table written out as one static
HTML table of every item (no script).
"""

from __future__ import annotations

import argparse
import html
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from engine.views.report import build_report  # noqa: E402
from engine.views.report_html import render_html  # noqa: E402
from ledger import LedgerWriter  # noqa: E402
from ledger.events import (  # noqa: E402
    Event,
    ItemDeadLettered,
    ItemDispatched,
    ItemEnqueued,
    ItemFailed,
    ItemRetryScheduled,
    ItemSucceeded,
    RunCompleted,
    RunCreated,
    RunStarted,
)
from ledger.times import utc_now  # noqa: E402
from tests.browser import Browser, Page, asset, find_chromium  # noqa: E402

SIG = "sha256:" + "5" * 64


def _failure(item: str, attempt: int) -> list[Event]:
    return [
        ItemFailed(
            item=item,
            attempt=attempt,
            error_type="timeout",
            signature=SIG,
            message="timed out after 30s",
            stderr_tail="... waiting for the model\n" * 8,
            signal=9,
            duration=30.0,
        )
    ]


def _item_events(i: int) -> list[Event]:
    item = f"src/module_{i:05d}.py"
    key = f"bench-{i:05d}"
    tries = 3 if i % 30 == 0 else 2 if i % 10 == 0 else 1
    events: list[Event] = []
    for attempt in range(1, tries + 1):
        events.append(ItemDispatched(item=item, attempt=attempt, idempotency_key=key))
        last = attempt == tries
        if last and tries < 3:
            events.append(
                ItemSucceeded(item=item, attempt=attempt, duration=1.0 + i % 7, result={"n": i})
            )
            continue
        events += _failure(item, attempt)
        if not last:
            events.append(
                ItemRetryScheduled(item=item, attempt=attempt, delay=1.0, not_before=utc_now())
            )
    if tries == 3:
        events.append(
            ItemDeadLettered(
                item=item,
                attempt=3,
                error_type="timeout",
                signature=SIG,
                reason="retries exhausted",
            )
        )
    return events


def make_run(run_dir: Path, items: int) -> None:
    """A run's ledger of ``items`` items with retries and dead letters."""
    with LedgerWriter.open(run_dir, run_dir.name, create=True, command="bench") as w:
        w.append(
            RunCreated(
                workflow_name="bench",
                workflow_path="bench.yml",
                workflow_hash="sha256:" + "0" * 64,
                workflow="name: bench\n",
                user="bench",
                host="bench",
                engine_version="bench",
            )
        )
        w.append(RunStarted(pid=1, host="bench", max_parallel=8))
        w.append_many([ItemEnqueued(item=f"src/module_{i:05d}.py", index=i) for i in range(items)])
        for start in range(0, items, 500):
            w.append_many(
                [e for i in range(start, min(start + 500, items)) for e in _item_events(i)]
            )
        dead = len(range(0, items, 30))
        w.append(RunCompleted(succeeded=items - dead, dead=dead))


def static_page(page: str, report: object) -> str:
    """The same report, its item table one static HTML table (no script)."""
    rows = "".join(
        f"<tr><td>{html.escape(r.item)}</td><td>{html.escape(r.status)}</td>"
        f"<td>{len(r.attempts)}</td><td>{html.escape(r.error_type or '')}</td>"
        f"<td>{r.duration:.1f}</td></tr>"
        for r in report.items  # type: ignore[attr-defined]
    )
    table = (
        '<div id="items"><table><tr><th>item</th><th>status</th><th>attempts</th>'
        f"<th>error type</th><th>duration</th></tr>{rows}</table></div>"
    )
    return page.replace('<div id="items"></div>', table, 1).replace(asset("report.js"), "", 1)


def open_times(page: Page, path: Path) -> tuple[float, float, float | None]:
    """Seconds to the load event, to the first frame drawn after it, and to sort by duration."""
    t = time.perf_counter()
    page.navigate(path.as_uri())
    loaded = time.perf_counter() - t
    page.js("new Promise(r => requestAnimationFrame(() => setTimeout(r)))")
    drawn = time.perf_counter() - t
    sort = page.js(
        "(() => { const th = document.querySelector('#items-table th[data-key=duration]');"
        " if (!th) return null; const t = performance.now(); th.click();"
        " return (performance.now() - t) / 1000; })()"
    )
    return loaded, drawn, sort


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if find_chromium() is None:
        print("chromium is not installed: `make browser` installs it", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="bench-report-"))
    run_dir = work / "runs" / "bench"
    make_run(run_dir, args.items)
    builds, renders = [], []
    for _ in range(args.repeat):
        t = time.perf_counter()
        report = build_report(run_dir)
        builds.append(time.perf_counter() - t)
        t = time.perf_counter()
        text = render_html(report)
        renders.append(time.perf_counter() - t)
    pages = {"item table (report.js)": work / "report.html", "static table": work / "static.html"}
    pages["item table (report.js)"].write_text(text)
    pages["static table"].write_text(static_page(text, report))
    size_mb = {name: path.stat().st_size / 1e6 for name, path in pages.items()}
    opened: dict[str, list[tuple[float, float, float | None]]] = {k: [] for k in pages}
    with Browser(work, deadline=300) as browser:  # a bench, not a test: a slow page is a figure
        for _ in range(args.repeat):
            for name, path in pages.items():
                page = browser.new_page()
                opened[name].append(open_times(page, path))
                page.close()
    shutil.rmtree(work)
    lines = [
        f"## The HTML audit report (issue 16, {time.strftime('%Y-%m-%d')}, {args.items:,} items, "
        f"median of {args.repeat})",
        "",
        f"`build_report` {statistics.median(builds):.2f} s, `render_html` "
        f"{statistics.median(renders):.2f} s. Opening the page in headless Chromium:",
        "",
        "| page | size | to load event | to the table drawn | sort by duration |",
        "|---|---|---|---|---|",
    ]
    for name, path_times in opened.items():
        load, drawn, sort = (
            statistics.median(x) if None not in x else None for x in zip(*path_times, strict=True)
        )
        lines.append(
            f"| {name} | {size_mb[name]:.2f} MB | {load:.2f} s | {drawn:.2f} s | "
            + (f"{sort * 1000:.0f} ms |" if sort is not None else "- |")
        )
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
