"""``engine audit report``: a run's audit trail for review, as Markdown, JSON or HTML.

Who ran it (user, host, engine version) and when; the workflow's hash and a
copy; the workspace snapshot; the variables (secrets as ``***``); every
lock holder and resume; ledger recoveries; and each item's timeline of
attempts and outcomes; and, when agents reported what they spent, the cost
(``engine/views/report_cost.py``). The HTML is one self-contained file (inline CSS and
SVG charts, no script, nothing fetched) that reads offline.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import msgspec

from engine.views.report_cost import NO_USAGE, cost_of, cost_tables
from engine.workflow.load import load_yaml
from ledger.events import RunCreated
from ledger.times import epoch
from projections.items import ItemsProjection, ItemState
from projections.replay import replay
from projections.run import RunProjection
from projections.stats import StatsProjection
from projections.timeline import Attempt, TimelineProjection

__all__ = ["build_report", "render_html", "render_markdown"]

CHART_ITEMS = 300
"""Items drawn in the HTML timeline (the tables list every one)."""


def build_report(run_dir: Path) -> dict[str, Any]:
    """The report's data: the run's projections, its timeline and stats, in one replay."""
    timeline = TimelineProjection()
    stats = StatsProjection()
    p = replay(run_dir / "ledger.ndjson", extra=(timeline, stats))
    run = p.run
    created = run.created
    workflow_text = created.workflow if created is not None else ""
    secrets, variables = _variables(workflow_text, created)
    entries = _timeline(p.items, timeline)
    failures = dict(sorted(_count_types(entries).items(), key=lambda kv: (-kv[1], kv[0])))
    return {
        "run_id": run.run_id,
        "status": run.status,
        "reason": run.reason,
        "ran_by": {
            "user": created.user if created is not None else None,
            "host": created.host if created is not None else None,
            "engine_version": created.engine_version if created is not None else None,
        },
        "when": {
            "created_at": run.created_at,
            "started_at": run.started_at,
            "finished_at": run.finished_at,
        },
        "workflow": {
            "name": run.workflow,
            "path": run.workflow_path,
            "hash": run.workflow_hash,
            "text": workflow_text,
        },
        "snapshot": _snapshot(run_dir, run.snapshot_id),
        "variables": variables,
        "secrets": secrets,
        "lock_holders": [msgspec.to_builtins(h) for h in run.lock_holders],
        "resumes": _resumes(run),
        "recoveries": [msgspec.to_builtins(r) for r in run.recoveries],
        "items": msgspec.to_builtins(p.items.item_counts()),
        "failures_by_type": failures,
        "cost": cost_of(
            stats,
            attempts={e["item"]: len(e["attempts"]) for e in entries},
            status={e["item"]: e["status"] for e in entries},
            failures=failures,
        ),
        "timeline": entries,
        "events": run.events,
    }


def _variables(workflow_text: str, created: RunCreated | None) -> tuple[list[str], dict[str, str]]:
    """The workflow's secrets, and the variables: ``env``, then ``--var``; secrets as ``***``."""
    secrets: list[str] = []
    env: dict[str, str] = {}
    try:
        spec = load_yaml(workflow_text) if workflow_text else {}
        if isinstance(spec, dict):
            secrets = [str(s) for s in spec.get("secrets") or []]
            env = {str(k): str(v) for k, v in (spec.get("env") or {}).items()}
    except Exception:
        pass
    variables = {**env, **(created.vars if created is not None else {})}
    variables.update(dict.fromkeys(secrets, "***"))
    return secrets, variables


def _snapshot(run_dir: Path, snapshot_id: str | None) -> dict[str, Any]:
    """The workspace snapshot: its id, and its manifest when the run directory has it."""
    snapshot: dict[str, Any] = {"id": snapshot_id}
    try:
        manifest = msgspec.json.decode((run_dir / "snapshot.json").read_bytes())
        snapshot.update(
            method=manifest.get("method"),
            files=len(manifest.get("files", {})),
            manifest=manifest.get("files", {}),
        )
    except (OSError, msgspec.DecodeError):
        pass
    return snapshot


def _resumes(run: RunProjection) -> list[dict[str, Any]]:
    return [
        {"seq": record.seq, "ts": record.ts, **msgspec.to_builtins(record.data)}
        for record in run.resumed
    ]


def _timeline(items: ItemsProjection, timeline: TimelineProjection) -> list[dict[str, Any]]:
    """Every enqueued item in index order, with its status and attempts."""
    states = {s.item: s for s in items.items.values()}
    return [
        {
            "item": item,
            "status": _status(states[item], timeline),
            "attempts": [_attempt(a) for a in timeline.attempts.get(item, ())],
        }
        for item in sorted(states, key=lambda i: states[i].index)
    ]


def _status(state: ItemState, timeline: TimelineProjection) -> str:
    """The item's status as ``engine status`` has it; a skipped one's with the reason."""
    reason = timeline.skip_reasons.get(state.item)
    return (
        f"skipped ({reason})" if state.status == "skipped" and reason is not None else state.status
    )


def _attempt(a: Attempt) -> dict[str, Any]:
    out: dict[str, Any] = {
        "attempt": a.attempt,
        "dispatched_at": a.dispatched_at,
        "outcome": a.outcome or "no outcome",
    }
    if a.outcome is not None:
        out["finished_at"] = a.finished_at
        out["duration"] = a.duration
        if a.message is not None:
            out["message"] = a.message
    return out


def _count_types(timeline: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for entry in timeline:
        for attempt in entry["attempts"]:
            outcome = attempt["outcome"]
            if outcome not in ("succeeded", "no outcome"):
                counts[outcome] = counts.get(outcome, 0) + 1
    return counts


# --- Markdown ----------------------------------------------------------------------------


def _md_table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    def cell(v: Any) -> str:
        return ("" if v is None else str(v)).replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return out


def _summary(r: dict[str, Any]) -> list[list[Any]]:
    return [
        ["status", r["status"] + (f" ({r['reason']})" if r["reason"] else "")],
        ["ran by", f"{r['ran_by']['user']} on {r['ran_by']['host']}"],
        ["engine version", r["ran_by"]["engine_version"]],
        ["created", r["when"]["created_at"]],
        ["started", r["when"]["started_at"]],
        ["finished", r["when"]["finished_at"] or "-"],
        ["workflow", f"{r['workflow']['name']} ({r['workflow']['path']})"],
        ["workflow hash", r["workflow"]["hash"]],
        [
            "workspace snapshot",
            f"{r['snapshot'].get('id')} ({r['snapshot'].get('files', '?')} files)",
        ],
        ["events", r["events"]],
    ]


Section = tuple[str, list[str], list[list[Any]]]


def _sections(r: dict[str, Any]) -> list[Section]:
    """The report's tables, in order: (title, headers, rows); both renderings use them."""
    timeline = [
        [
            entry["item"],
            entry["status"],
            a.get("attempt", ""),
            a.get("dispatched_at", ""),
            a.get("finished_at", ""),
            a.get("duration", ""),
            a.get("outcome", ""),
        ]
        for entry in r["timeline"]
        for a in entry["attempts"] or [{}]
    ]
    return [
        ("Items", list(r["items"]), [list(r["items"].values())]),
        ("Variables", ["name", "value"], [[k, v] for k, v in sorted(r["variables"].items())]),
        (
            "Lock holders",
            ["seq", "pid", "host", "since", "command"],
            [
                [h["seq"], h["pid"], h["host"], h["started_at"], h["command"]]
                for h in r["lock_holders"]
            ],
        ),
        (
            "Resumes",
            ["seq", "at", "pid", "host", "include dlq", "workflow changes"],
            [
                [x["seq"], x["ts"], x["pid"], x["host"], x["include_dlq"], "; ".join(x["changes"])]
                for x in r["resumes"]
            ],
        ),
        (
            "Ledger recoveries",
            ["seq", "at", "offset", "bytes", "moved to", "reason"],
            [
                [x["seq"], x["ts"], x["offset"], x["length"], x["moved_to"], x["reason"]]
                for x in r["recoveries"]
            ],
        ),
        (
            "Failures by type",
            ["error type", "attempts"],
            list(map(list, r["failures_by_type"].items())),
        ),
        (
            "Timeline",
            ["item", "status", "attempt", "dispatched", "finished", "seconds", "outcome"],
            timeline,
        ),
    ]


def render_markdown(r: dict[str, Any]) -> str:
    lines = [f"# Audit report: run `{r['run_id']}`", ""]
    lines += _md_table(["", ""], _summary(r))
    if r["cost"] is None:
        lines += ["", "## Cost", "", NO_USAGE]
    for i, (title, headers, rows) in enumerate(cost_tables(r["cost"]) if r["cost"] else ()):
        lines += ["", f"{'##' if i == 0 else '###'} {title}", ""]
        lines += _md_table(headers, rows) if rows else ["none"]
    for title, headers, rows in _sections(r):
        lines += ["", f"## {title}", ""]
        lines += _md_table(headers, rows) if rows else ["none"]
    lines += ["", "## Workflow", "", "```yaml", r["workflow"]["text"].rstrip(), "```", ""]
    return "\n".join(lines)


# --- HTML --------------------------------------------------------------------------------

COLORS = {"succeeded": "#2e7d32", "no outcome": "#9e9e9e"}
FAIL_COLOR = "#c62828"
STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:3px 8px;
text-align:left;vertical-align:top}th{background:#f5f5f5}code,pre{font:12px ui-monospace,monospace}
pre{background:#f7f7f7;padding:1em;overflow:auto}.muted{color:#777}
"""


def _h(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _html_table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{_h(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_h(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _timeline_svg(r: dict[str, Any]) -> str:
    entries = [e for e in r["timeline"] if e["attempts"]][:CHART_ITEMS]
    spans = [
        (epoch(a["dispatched_at"]), epoch(a.get("finished_at") or a["dispatched_at"]))
        for e in entries
        for a in e["attempts"]
    ]
    if not spans:
        return '<p class="muted">no attempts</p>'
    start = min(s for s, _ in spans)
    end = max(e for _, e in spans) or start
    total = max(end - start, 1e-6)
    row, left, width = 14, 190, 860
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 10}" '
        f'height="{row * len(entries) + 30}" role="img" aria-label="attempts over time">'
    ]
    for i, entry in enumerate(entries):
        y = 10 + i * row
        parts.append(
            f'<text x="{left - 6}" y="{y + 10}" font-size="10" text-anchor="end">'
            f"{_h(entry['item'][:32])}</text>"
        )
        for a in entry["attempts"]:
            s = epoch(a["dispatched_at"])
            e = epoch(a.get("finished_at") or a["dispatched_at"])
            x = left + (s - start) / total * width
            w = max((e - s) / total * width, 1.5)
            color = COLORS.get(a["outcome"], FAIL_COLOR)
            parts.append(
                f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row - 3}" fill="{color}">'
                f"<title>{_h(entry['item'])} attempt {a['attempt']}: {_h(a['outcome'])} "
                f"({a.get('duration', '?')} s)</title></rect>"
            )
    y = 10 + len(entries) * row + 14
    parts.append(f'<text x="{left}" y="{y}" font-size="10">0 s</text>')
    parts.append(
        f'<text x="{left + width}" y="{y}" font-size="10" text-anchor="end">{total:.1f} s</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


def _failures_svg(r: dict[str, Any]) -> str:
    counts = r["failures_by_type"]
    if not counts:
        return '<p class="muted">no failures</p>'
    top = max(counts.values())
    row, left, width = 22, 170, 600
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 60}" '
        f'height="{row * len(counts) + 10}" role="img" aria-label="failures by type">'
    ]
    for i, (kind, count) in enumerate(counts.items()):
        y = 5 + i * row
        w = count / top * width
        parts.append(
            f'<text x="{left - 6}" y="{y + 14}" font-size="12" text-anchor="end">{_h(kind)}</text>'
            f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{row - 6}" fill="{FAIL_COLOR}"/>'
            f'<text x="{left + w + 6}" y="{y + 14}" font-size="12">{count}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _cost_html(cost: dict[str, Any] | None) -> list[str]:
    if cost is None:
        return ["<h2>Cost</h2>", f"<p class='muted'>{NO_USAGE}</p>"]
    out: list[str] = []
    for i, (title, headers, rows) in enumerate(cost_tables(cost)):
        tag = "h2" if i == 0 else "h3"
        table = _html_table(headers, rows) if rows else "<p class='muted'>none</p>"
        out += [f"<{tag}>{_h(title)}</{tag}>", table]
    return out


def render_html(r: dict[str, Any]) -> str:
    shown = min(len([e for e in r["timeline"] if e["attempts"]]), CHART_ITEMS)
    body = [
        f"<h1>Audit report: run {_h(r['run_id'])}</h1>",
        _html_table(["", ""], _summary(r)),
        *_cost_html(r["cost"]),
        f"<h2>Timeline</h2><p class='muted'>each bar an attempt (green succeeded, red failed, "
        f"grey no outcome); the first {shown} items</p>",
        _timeline_svg(r),
        "<h2>Failures by type</h2>",
        _failures_svg(r),
    ]
    for title, headers, rows in _sections(r):
        body += [f"<h2>{_h(title)}</h2>", _html_table(headers, rows)]
    body += ["<h2>Workflow</h2>", f"<pre>{_h(r['workflow']['text'])}</pre>"]
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>Audit report: {_h(r['run_id'])}</title><style>{STYLE}</style></head><body>"
        + "\n".join(body)
        + "</body></html>\n"
    )
