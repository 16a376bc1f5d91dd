"""``engine audit verify RUN --report FILE``: does a report belong to the ledger?

A report embeds its integrity (head seq and hash) and, in every format, the whole
Report (JSON: itself; HTML: its data island; Markdown: a trailing comment). The check:

1. the ledger still has the record at ``head_seq`` with ``head_hash`` (a ledger that
   only grew since is fine: the report covers records 0..head_seq of more);
2. the report was made by this engine version, at a time after the last record it
   covers;
3. the report was not edited: the Report rebuilt from the ledger up to ``head_seq``
   at the file's ``generated_at`` (the cross-run patterns from the home's ledgers and
   acknowledgements as they stood then; the torn-tail flag, which is of the file's
   end at that time, taken from the file) equals the embedded one, and rendering it
   again gives the file's bytes.
"""

from __future__ import annotations

import time
from pathlib import Path

import msgspec

from engine import engine_version
from engine.views.report import build_report
from engine.views.report_html import embedded_html, render_html
from engine.views.report_md import embedded_md, render_markdown
from engine.views.report_model import Report
from ledger.times import epoch

__all__ = ["ReportCheck", "check_report", "render"]


class ReportCheck(msgspec.Struct, kw_only=True):
    ok: bool
    format: str | None = None
    head_seq: int | None = None
    records: int | None = None
    """Records in the ledger now."""
    problem: str | None = None
    """What differs (one line), when not ok."""
    message: str = ""


def render(report: Report, fmt: str) -> bytes:
    if fmt == "json":
        return msgspec.json.encode(report) + b"\n"
    if fmt == "html":
        return render_html(report).encode()
    return render_markdown(report).encode()


def _embedded(data: bytes) -> tuple[str, bytes | None]:
    """The file's format and the Report's JSON it carries."""
    if data.lstrip().startswith(b"{"):
        return "json", data
    if data.lstrip()[:15].lower().startswith(b"<!doctype html"):
        return "html", embedded_html(data)
    return "md", embedded_md(data)


def _first_difference(a: object, b: object, path: str = "") -> str:
    """Where two decoded JSON values first differ (a dotted path)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else key)
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{path} (length {len(a)} in the report, {len(b)} in the ledger)"
        for n, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y:
                return _first_difference(x, y, f"{path}[{n}]")
    return path or "(the whole report)"


def _after(generated_at: str, rebuilt: Report) -> bool:
    """Whether a report's time is after the last record it covers, and not in the future."""
    try:
        made = epoch(generated_at)
    except ValueError:
        return False
    last = rebuilt.integrity.head_ts
    return (last is None or made >= epoch(last)) and made <= time.time() + 300


def _bad(
    fmt: str | None, problem: str, *, head_seq: int | None = None, records: int | None = None
) -> ReportCheck:
    return ReportCheck(ok=False, format=fmt, problem=problem, head_seq=head_seq, records=records)


def check_report(
    run_dir: Path, data: bytes, *, records_now: int, home: Path | None = None
) -> ReportCheck:
    """Check a report file's bytes against the run's ledger (``records_now``: its size in
    records, already verified by the caller)."""
    fmt, raw = _embedded(data)
    if raw is None:
        return _bad(fmt, f"the {fmt} file carries no report data (not made by engine audit report)")
    try:
        claimed = msgspec.json.decode(raw, type=Report)
    except msgspec.DecodeError as exc:
        return _bad(fmt, f"the report data does not decode ({exc})")
    head = claimed.integrity.head_seq
    run_id = run_dir.name
    if claimed.identity.run_id != run_id:
        return _bad(fmt, f"the report is of run {claimed.identity.run_id!r}, not of {run_id!r}")
    if head < 0 or head >= records_now:
        return _bad(
            fmt, f"the report covers seq 0..{head} but the ledger has {records_now} records"
        )
    if claimed.generated_by != engine_version():
        return _bad(
            fmt,
            f"the report was made by engine {claimed.generated_by}; this is engine "
            f"{engine_version()}: verify it with the engine that made it",
        )
    rebuilt = build_report(run_dir, home=home, now=claimed.generated_at, until=head)
    if rebuilt.integrity.head_hash != claimed.integrity.head_hash:
        return _bad(
            fmt,
            f"the ledger changed: the record at seq {head} has hash "
            f"{rebuilt.integrity.head_hash[:16]}…, the report says "
            f"{claimed.integrity.head_hash[:16]}…",
            head_seq=head,
            records=records_now,
        )
    if not _after(claimed.generated_at, rebuilt):
        return _bad(
            fmt,
            f"the report says it was made at {claimed.generated_at}, before the last record "
            f"it covers (seq {head}) or after now: it was edited",
        )
    rebuilt = msgspec.structs.replace(
        rebuilt,
        integrity=msgspec.structs.replace(rebuilt.integrity, torn_tail=claimed.integrity.torn_tail),
    )
    a, b = msgspec.to_builtins(claimed), msgspec.to_builtins(rebuilt)
    if a != b:
        where = _first_difference(a, b)
        return _bad(fmt, f"the report was edited: {where} differs from the ledger", head_seq=head)
    if render(rebuilt, fmt) != data:
        return _bad(
            fmt, f"the report was edited: its {fmt} text differs from its data", head_seq=head
        )
    covers = f"records 0..{head} of {records_now}"
    return ReportCheck(
        ok=True,
        format=fmt,
        head_seq=head,
        records=records_now,
        message=f"the {fmt} report belongs to this ledger (it covers {covers})",
    )
