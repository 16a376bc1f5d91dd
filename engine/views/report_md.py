"""The audit report's sections as tables, and its Markdown form.

:func:`sections` lays a :class:`~engine.views.report_model.Report` out as titled
tables, once, for Markdown and HTML alike (no empty header rows: a key/value table has
``field | value``; an empty table is the line "none"). The Markdown form ends with the
whole Report as JSON (base64) in an HTML comment, ``<!-- engine-report ... -->``, so
``engine audit verify RUN --report FILE`` can check it; rendering is deterministic.
"""

from __future__ import annotations

import base64
import html
import re
import shlex
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import msgspec

from engine.views.durations import human_duration
from engine.views.report_cost import NO_USAGE, cost_tables
from engine.views.report_model import Report

__all__ = ["EMBED", "Section", "Table", "embedded_md", "render_markdown", "sections"]

EMBED = re.compile(rb"\n<!-- engine-report ([A-Za-z0-9+/=]+) -->\n\Z")
"""The trailing comment of a Markdown report that carries the Report."""


@dataclass(frozen=True)
class Link:
    """A table cell that links a file of the run (``href``: relative to the run directory)."""

    text: str
    href: str


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[Any]]
    none: str = "none"
    """What an empty table says instead."""


@dataclass
class Section:
    id: str
    title: str
    tables: list[Table] = field(default_factory=list)
    note: str = ""


def _n(value: Any) -> str:
    return "-" if value is None else str(value)


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _integrity(r: Report) -> Section:
    i = r.integrity
    verdict = "verified" if i.verified else f"NOT verified: {i.problem}"
    rows: list[list[Any]] = [
        ["hash chain", verdict],
        ["records", f"{i.records:,}"],
        ["head seq", i.head_seq],
        ["head hash", i.head_hash],
        ["ledger bytes", f"{i.ledger_bytes:,}"],
        [
            "torn tail",
            "yes (moved aside when a writer next opens the ledger)" if i.torn_tail else "no",
        ],
        ["checked at", r.generated_at],
        ["report by engine", r.generated_by],
    ]
    recoveries = [[x.seq, x.ts, x.offset, x.length, x.moved_to, x.reason] for x in i.recoveries]
    return Section(
        "integrity",
        "Integrity",
        [
            Table("", ["field", "value"], rows),
            Table(
                "Torn tails recovered",
                ["seq", "at", "offset", "bytes", "moved to", "reason"],
                recoveries,
            ),
        ],
    )


def _identity(r: Report) -> Section:
    d = r.identity
    w, snap = d.workflow, d.snapshot
    rows = [
        ["run", d.run_id],
        ["created by", _n(d.created_by)],
        ["engine version", _n(d.engine_version)],
        ["workflow", f"{_n(w.name)} ({_n(w.path)})"],
        ["workflow hash", _n(w.hash)],
        ["workspace snapshot", f"{_n(snap.id)} ({_n(snap.method)}, {_n(snap.files)} files)"],
        ["later snapshots", ", ".join(snap.later) or "-"],
        ["env files", ", ".join(d.env_files) or "-"],
    ]
    sessions = [
        [
            s.seq,
            s.kind,
            _n(s.user),
            s.host,
            s.pid,
            s.started_at,
            s.ended_at,
            s.records,
            _n(s.engine_version),
            s.command,
        ]
        for s in d.sessions
    ]
    return Section(
        "identity",
        "Identity",
        [
            Table("", ["field", "value"], rows),
            Table(
                "Engine sessions",
                [
                    "seq",
                    "did",
                    "user",
                    "host",
                    "pid",
                    "started",
                    "ended",
                    "records",
                    "engine",
                    "command",
                ],
                sessions,
            ),
            Table(
                "Pauses, cancels, resumes and DLQ requests",
                ["seq", "at", "request", "by", "detail"],
                [[c.seq, c.ts, c.type, _n(c.by), c.detail] for c in d.controls],
            ),
            Table("Variables", ["name", "value"], [[k, v] for k, v in d.variables.items()]),
            Table("Workflow changes on resume", ["change"], [[c] for c in w.changes]),
        ],
    )


def _outcome(r: Report) -> Section:
    o, st = r.outcome, r.outcome.stats
    rows: list[list[Any]] = [
        ["status", o.status + (f" ({o.reason})" if o.reason else "")],
        ["created", _n(o.created_at)],
        ["started", _n(o.started_at)],
        ["finished", _n(o.finished_at)],
        ["engine time (sessions)", human_duration(st.wall_s)],
        ["first to last record", human_duration(st.span_s)],
        ["sessions", st.sessions],
        ["attempts", st.attempts],
        [
            "attempt p50 / p95 / p99 (s)",
            f"{_s(st.attempt_p50_s)} / {_s(st.attempt_p95_s)} / {_s(st.attempt_p99_s)}",
        ],
        ["items per second", st.items_per_s],
        ["max parallel", _n(st.max_parallel)],
        [
            "parallel efficiency",
            "-" if st.parallel_efficiency is None else f"{st.parallel_efficiency:.1%}",
        ],
        ["failed attempts", st.failed_attempts],
        ["time in failed attempts (s)", _s(st.retry_time_s)],
        ["retry backoff (s)", _s(st.backoff_s)],
    ]
    tables = [
        Table("", ["field", "value"], rows),
        Table("Items by status", list(o.counts), [list(o.counts.values())]),
    ]
    if o.cost is None:
        tables.append(Table("Cost", ["figure", "value"], [], none=NO_USAGE))
    else:
        tables += [Table(t, h, rows_) for t, h, rows_ in cost_tables(o.cost)]
    return Section("outcome", "Outcome", tables)


def _log(ref: Any) -> Link | str:
    return "-" if ref is None else Link(f"{ref.path} ({ref.size:,} bytes, {ref.sha256})", ref.path)


def _failure_rows(r: Report) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
    f = r.failures
    run = r.identity.run_id
    attempts = [
        [
            a.item,
            a.attempt,
            a.seq,
            a.ts,
            a.error_type,
            _n(a.exit_code),
            _n(a.signal),
            _s(a.duration),
            a.message,
            a.stderr_tail[-500:],
            _log(a.stdout),
            _log(a.stderr),
            f"engine logs {shlex.quote(run)} {shlex.quote(a.item)} --attempt {a.attempt}",
        ]
        for a in f.attempts
    ]
    dlq = [
        [
            d.item_id,
            d.attempts,
            d.error_type,
            d.reason,
            d.failed_at,
            "reprocessable" if d.reprocessable else "needs review" if d.needs_review else "-",
            d.rule,
            d.last_error,
        ]
        for d in f.dlq
    ]
    sigs = [
        [s.signature, s.error_type, s.count, s.items, s.first_seen, s.last_seen, s.example]
        for s in f.signatures
    ]
    patterns = [
        [
            p.signature,
            p.error_type,
            p.runs,
            p.count,
            p.first_seen,
            p.last_seen,
            p.state,
            _n(p.note),
            p.remedy,
        ]
        for p in f.patterns
    ]
    return attempts, dlq, sigs, patterns


def _failures(r: Report) -> Section:
    f = r.failures
    attempts, dlq, sigs, patterns = _failure_rows(r)
    return Section(
        "failures",
        "Failures",
        [
            Table(
                "Failures by type",
                ["error type", "failed attempts"],
                [[k, v] for k, v in f.by_type.items()],
            ),
            Table(
                "Failed attempts",
                [
                    "item",
                    "attempt",
                    "seq",
                    "at",
                    "error type",
                    "exit",
                    "signal",
                    "seconds",
                    "message",
                    "stderr tail",
                    "stdout log",
                    "stderr log",
                    "read it with",
                ],
                attempts,
                none="none (log paths are relative to the run directory)",
            ),
            Table(
                "Dead-letter queue",
                ["item", "attempts", "error type", "why", "at", "triage", "rule", "last error"],
                dlq,
            ),
            Table(
                "Failure signatures",
                ["signature", "error type", "count", "items", "first seen", "last seen", "example"],
                sigs,
            ),
            Table(
                "Recurring across runs",
                [
                    "signature",
                    "error type",
                    "runs",
                    "count",
                    "first seen",
                    "last seen",
                    "state",
                    "acknowledged",
                    "remedy",
                ],
                patterns,
                none="none (or not looked up: no engine home given)",
            ),
        ],
    )


def item_tables(r: Report) -> list[Table]:
    items = [
        [
            i.item,
            i.status,
            len(i.attempts),
            _n(i.error_type),
            _s(i.duration),
            i.receipt.result_digest if i.receipt else "-",
        ]
        for i in r.items
    ]
    attempts = [
        [
            i.item,
            a.attempt,
            a.seq,
            a.dispatched_at,
            _n(a.finished_at),
            _s(a.duration),
            a.outcome,
            _n(a.worker),
            a.idempotency_key,
            _n(a.message),
        ]
        for i in r.items
        for a in i.attempts
    ]
    receipts = [
        [
            i.item,
            x.attempts,
            f"{x.first_seq}..{x.last_seq}",
            x.result_digest,
            x.head_hash,
            "; ".join(f"{a.path} ({a.size:,} bytes, {a.sha256})" for a in x.artifacts) or "-",
        ]
        for i in r.items
        if (x := i.receipt) is not None
    ]
    return [
        Table("", ["item", "status", "attempts", "error type", "seconds", "result digest"], items),
        Table(
            "Attempts",
            [
                "item",
                "attempt",
                "seq",
                "dispatched",
                "finished",
                "seconds",
                "outcome",
                "worker",
                "idempotency key",
                "message",
            ],
            attempts,
        ),
        Table(
            "Receipts",
            ["item", "attempts", "seqs", "result digest", "head hash", "artifacts"],
            receipts,
        ),
    ]


def sections(r: Report) -> list[Section]:
    """The report's sections in order (the items' and workflow's are the renderers')."""
    return [_integrity(r), _identity(r), _outcome(r), _failures(r)]


MD_SPECIAL = re.compile(r"([\\`*\[\]|])")
"""Characters a Markdown renderer would read as markup, escaped with a backslash."""


def md_text(value: Any) -> str:
    """Any text (an item id, a message, stderr) as inert Markdown on one line: no HTML,
    no markup, no table cell break."""
    text = html.escape("" if value is None else str(value), quote=False)
    return MD_SPECIAL.sub(r"\\\1", text).replace("\r", " ").replace("\n", " ")


def _md_table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    def cell(v: Any) -> str:
        if isinstance(v, Link):
            return f"[{md_text(v.text)}](<{urllib.parse.quote(v.href)}>)"
        return md_text(v)

    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return out


def _md_section(title: str, tables: list[Table]) -> list[str]:
    lines = ["", f"## {title}"]
    for t in tables:
        if t.title:
            lines += ["", f"### {md_text(t.title)}"]
        lines += [""] + (_md_table(t.headers, t.rows) if t.rows else [t.none])
    return lines


def render_markdown(r: Report) -> str:
    lines = [f"# Audit report: run {md_text(r.identity.run_id)}"]
    for s in sections(r):
        lines += _md_section(s.title, s.tables)
    lines += _md_section("Items", item_tables(r))
    text = r.identity.workflow.text.rstrip()
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    lines += ["", "## Workflow", "", fence + "yaml", text, fence, ""]
    embed = base64.b64encode(msgspec.json.encode(r)).decode()
    return "\n".join(lines) + f"\n<!-- engine-report {embed} -->\n"


def embedded_md(data: bytes) -> bytes | None:
    """The Report's JSON a Markdown report carries, or None."""
    match = EMBED.search(data)
    return None if match is None else base64.b64decode(match.group(1))
