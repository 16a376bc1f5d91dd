"""Plain-text renderings of records and projections for the terminal."""

from __future__ import annotations

import re
from typing import Any

import msgspec

from ledger.events import LogRef, Record
from projections.replay import Projections

__all__ = ["describe_record", "record_line", "summary_lines"]

_SKIP = frozenset({"item", "attempt"})


_DIGEST = re.compile(r"^((?:sha256:|ik:)?)([0-9a-f]{12})[0-9a-f]{52}$")


def _short(value: Any, limit: int = 60) -> str:
    text = value if isinstance(value, str) else msgspec.json.encode(value).decode()
    text = _DIGEST.sub(r"\1\2…", text)
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe_record(record: Record) -> str:
    """The payload's fields as ``key=value`` pairs, defaults and item left out."""
    data = record.data
    parts: list[str] = []
    for name, default in _fields(data):
        if name in _SKIP:
            continue
        value = getattr(data, name)
        if value is None or value == default or value in ("", {}, []):
            continue
        if isinstance(value, LogRef):
            value = value.path
        parts.append(f"{name}={_short(value)}")
    return " ".join(parts)


def _fields(data: Any) -> list[tuple[str, Any]]:
    names: tuple[str, ...] = data.__struct_fields__
    defaults: tuple[Any, ...] = data.__struct_defaults__
    pad = (msgspec.NODEFAULT,) * (len(names) - len(defaults))
    return list(zip(names, pad + defaults, strict=True))


def record_line(record: Record) -> str:
    """One record as one terminal line: seq, time, type, item/attempt, fields."""
    data = record.data
    item = getattr(data, "item", None)
    attempt = getattr(data, "attempt", None)
    who = ""
    if item is not None:
        item = _short(item, 40)
        who = item if attempt is None else f"{item}#{attempt}"
    text = f"{record.seq:>7} {record.ts} {record.type:<21} {who}"
    rest = describe_record(record)
    return f"{text} {rest}".rstrip() if who else f"{text}{rest}".rstrip()


def _n(count: int, one: str, many: str | None = None) -> str:
    return f"{count:,} {one if count == 1 else (many or one + 's')}"


def _count_line(label: str, counts: dict[str, int]) -> str:
    return f"{label:<10}" + " · ".join(f"{k} {v:,}" for k, v in counts.items())


def summary_lines(p: Projections, *, status: str, ledger: str) -> list[str]:
    """A human summary of every projection."""
    run = p.run
    counts = msgspec.structs.asdict(p.items.item_counts())
    attempts = p.attempts_view()
    lines = [
        f"run       {run.run_id or '-'}  workflow {run.workflow or '-'}  status {status}",
        f"ledger    {ledger}",
        f"events    {run.events:,} (last seq {run.last_seq}"
        + (f" at {run.last_ts})" if run.last_ts else ")"),
        _count_line("items", counts),
        f"attempts  {attempts.dispatched:,} dispatched · {attempts.retries:,} retries · "
        f"{attempts.running:,} running · max {attempts.max_attempts} per item",
        f"dlq       {_n(len(p.dlq.dead), 'item')}",
        f"workers   {len(p.workers.running):,} running attempts · "
        f"{p.workers.heartbeats:,} heartbeats",
        f"locks     {_n(len(run.lock_holders), 'holder')} · {_n(run.resumes, 'resume')} · "
        f"{_n(len(run.recoveries), 'recovery', 'recoveries')}",
    ]
    stats = p.signatures.to_json().signatures
    if stats:
        total = sum(s.count for s in stats)
        lines.append(f"failures  {total:,} in {len(stats):,} signatures; most frequent:")
        for s in stats[:5]:
            lines.append(
                f"          {s.signature.removeprefix('sha256:')[:12]:<12}  "
                f"{s.error_type:<16} x{s.count:<7,} "
                f"{_short(s.example, 40)}"
            )
    if run.reason:
        lines.append(f"reason    {run.reason}")
    return lines
