"""The audit report as one self-contained HTML file (nothing fetched, reads offline).

The static sections are :func:`engine.views.report_md.sections` as tables, a timeline
of attempts on a clock-time axis and a failures chart (inline SVG). The item table is
drawn in the browser by ``report_assets/report.js`` into ``#items`` from the data
island ``<script type="application/json" id="report-data">``, which holds the whole
Report (``</`` escaped); ``report_assets/report.css`` is inlined in the page's style.
"""

from __future__ import annotations

import html
import re
import urllib.parse
from importlib import resources
from typing import Any

import msgspec

from engine.views.durations import human_duration
from engine.views.report_md import Link, Table, sections
from engine.views.report_model import Report
from ledger.times import epoch, rfc3339

__all__ = ["ISLAND", "embedded_html", "render_html"]

CHART_ITEMS = 300
"""Items drawn in the timeline (the item table lists every one)."""
OPEN_ROWS = 100
"""Rows of a static table shown open; the others are one click away."""
ISLAND = re.compile(rb'<script type="application/json" id="report-data">(.*?)</script>', re.S)
COLORS = {"succeeded": "#2e7d32", "no outcome": "#9e9e9e"}
FAIL_COLOR = "#c62828"
STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200)
STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ddd}
h3{font-size:1em;margin-top:1.2em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:3px 8px;
text-align:left;vertical-align:top}th{background:#f5f5f5}code,pre{font:12px ui-monospace,monospace}
pre{background:#f7f7f7;padding:1em;overflow:auto}.muted{color:#777}
.ok{color:#2e7d32;font-weight:600}.bad{color:#c62828;font-weight:600}
td.wrap{white-space:pre-wrap;max-width:28em;font:12px ui-monospace,monospace}
section>table,details>table{display:block;max-width:100%;overflow-x:auto}
td{overflow-wrap:break-word;max-width:36em}th{white-space:nowrap}
"""


def _h(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _asset(name: str) -> str:
    return resources.files("engine.views").joinpath("report_assets", name).read_text("utf-8")


def _cell(v: Any) -> str:
    if isinstance(v, Link):  # a file of the run: the report read from the run directory
        return f"<td><a href='{_h(urllib.parse.quote(v.href))}'>{_h(v.text)}</a></td>"
    return f"<td>{_h(v)}</td>"


def _rows(rows: list[list[Any]]) -> str:
    return "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)


def _table(t: Table, level: str = "h3") -> str:
    """A table; past :data:`OPEN_ROWS` rows the rest in a closed ``<details>`` (every row is
    in the page, but a browser lays out only the ones shown: a big run's report opens fast)."""
    title = f"<{level}>{_h(t.title)}</{level}>" if t.title else ""
    if not t.rows:
        return f"{title}<p class='muted'>{_h(t.none)}</p>"
    head = f"<thead><tr>{''.join(f'<th>{_h(h)}</th>' for h in t.headers)}</tr></thead>"
    shown, rest = t.rows[:OPEN_ROWS], t.rows[OPEN_ROWS:]
    table = f"{title}<table>{head}<tbody>{_rows(shown)}</tbody></table>"
    if not rest:
        return table
    return (
        f"{table}<details><summary>{len(rest):,} more rows</summary>"
        f"<table>{head}<tbody>{_rows(rest)}</tbody></table></details>"
    )


def _clock(seconds: float) -> str:
    whole = int(seconds) % 86400
    return f"{whole // 3600:02d}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def _ticks(start: float, end: float) -> list[float]:
    span = max(end - start, 1e-6)
    step = next((s for s in STEPS if span / s <= 8), 86400)
    first = (int(start) // step + 1) * step
    return [float(t) for t in range(first, int(end) + 1, step)]


def _timeline_svg(r: Report) -> str:
    entries = [i for i in r.items if i.attempts][:CHART_ITEMS]
    spans = [
        (epoch(a.dispatched_at), epoch(a.finished_at or a.dispatched_at))
        for i in entries
        for a in i.attempts
    ]
    if not spans:
        return "<p class='muted'>no attempts</p>"
    start = min(s for s, _ in spans)
    end = max(e for _, e in spans)
    total = max(end - start, 1e-6)
    row, left, width = 14, 190, 860
    height = row * len(entries) + 40
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 40}" '
        f'height="{height}" role="img" aria-label="attempts over time">'
    ]
    for t in _ticks(start, end):
        x = left + (t - start) / total * width
        parts.append(
            f'<line x1="{x:.1f}" y1="5" x2="{x:.1f}" y2="{height - 25}" stroke="#e0e0e0"/>'
            f'<text x="{x:.1f}" y="{height - 12}" font-size="10" text-anchor="middle">'
            f"{_clock(t)}</text>"
        )
    for n, item in enumerate(entries):
        y = 10 + n * row
        parts.append(
            f'<text x="{left - 6}" y="{y + 10}" font-size="10" text-anchor="end">'
            f"{_h(item.item[:32])}</text>"
        )
        for a in item.attempts:
            s = epoch(a.dispatched_at)
            e = epoch(a.finished_at or a.dispatched_at)
            x = left + (s - start) / total * width
            w = max((e - s) / total * width, 1.5)
            color = COLORS.get(a.outcome, FAIL_COLOR)
            ends = f"{_clock(e)}" if a.finished_at else "no outcome"
            parts.append(
                f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row - 3}" fill="{color}">'
                f"<title>{_h(item.item)} attempt {a.attempt}: {_h(a.outcome)}, "
                f"{_clock(s)} to {ends} ({human_duration(a.duration)})</title></rect>"
            )
    parts.append("</svg>")
    return "".join(parts)


def _timeline_note(r: Report) -> str:
    with_attempts = [i for i in r.items if i.attempts]
    if not with_attempts:
        return ""
    times = [epoch(a.dispatched_at) for i in with_attempts for a in i.attempts]
    ends = [epoch(a.finished_at or a.dispatched_at) for i in with_attempts for a in i.attempts]
    day = rfc3339(min(times))[:10]
    shown = min(len(with_attempts), CHART_ITEMS)
    return (
        f"<p class='muted'>each bar an attempt (green succeeded, red failed, grey no outcome); "
        f"clock times UTC on {_h(day)}, {human_duration(max(ends) - min(times))} in all; "
        f"{shown} of {len(with_attempts)} items with attempts</p>"
    )


def _failures_svg(counts: dict[str, int]) -> str:
    if not counts:
        return ""
    top = max(counts.values())
    row, left, width = 22, 170, 600
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 60}" '
        f'height="{row * len(counts) + 10}" role="img" aria-label="failures by type">'
    ]
    for n, (kind, count) in enumerate(counts.items()):
        y = 5 + n * row
        w = count / top * width
        parts.append(
            f'<text x="{left - 6}" y="{y + 14}" font-size="12" text-anchor="end">{_h(kind)}</text>'
            f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{row - 6}" fill="{FAIL_COLOR}"/>'
            f'<text x="{left + w + 6}" y="{y + 14}" font-size="12">{count}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def island(r: Report) -> str:
    """The Report as JSON for a ``<script>`` element (no ``</`` nor ``<!--`` inside)."""
    raw = msgspec.json.encode(r).decode()
    return raw.replace("</", "<\\/").replace("<!--", "<\\u0021--")


def _integrity_line(r: Report) -> str:
    i = r.integrity
    if i.verified:
        return (
            f"<p id='integrity-line' class='ok'>hash chain verified: {i.records:,} records, "
            f"head seq {i.head_seq}, head hash <code>{_h(i.head_hash)}</code></p>"
        )
    return f"<p id='integrity-line' class='bad'>NOT verified: {_h(i.problem)}</p>"


def render_html(r: Report) -> str:
    body = [f"<h1>Audit report: run {_h(r.identity.run_id)}</h1>", _integrity_line(r)]
    for s in sections(r):
        body.append(f"<section id='{s.id}'><h2>{_h(s.title)}</h2>")
        for t in s.tables:
            body.append(_table(t))
            if t.title == "Failures by type":
                body.append(_failures_svg(r.failures.by_type))
        body.append("</section>")
    body += [
        "<section id='timeline'><h2>Timeline</h2>",
        _timeline_note(r),
        _timeline_svg(r),
        "</section>",
        '<section id="items-section"><h2>Items</h2><div id="items"></div>'
        "<noscript><p class='muted'>the item table needs JavaScript; the Markdown and JSON "
        "forms of this report list every item, its attempts and receipt</p></noscript>"
        "</section>",
        f"<section id='workflow'><h2>Workflow</h2><pre>{_h(r.identity.workflow.text)}</pre>"
        "</section>",
        f'<script type="application/json" id="report-data">{island(r)}</script>',
        f"<script>{_asset('report.js')}</script>",
    ]
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>Audit report: {_h(r.identity.run_id)}</title>"
        f"<style>{STYLE}{_asset('report.css')}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def embedded_html(data: bytes) -> bytes | None:
    """The Report's JSON an HTML report carries (its data island), or None."""
    match = ISLAND.search(data)
    return None if match is None else match.group(1)
