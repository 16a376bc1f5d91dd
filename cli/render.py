"""Plain-text renderings for the terminal: records, projections, tables and times.

Two rules every command's human output follows (``--json`` is for programs):

* **Tables fit the terminal, and only a terminal.** When standard output is
  a terminal, a table is fitted to its width (free text gives way first, and
  a cut value ends in ``…``; identifiers such as item and run ids, which are
  what a user types next, are never cut); when it is not (a pipe, a file), no
  value is ever cut, digests included: columns are as wide as their widest
  value. Columns left out on a narrow terminal are named on stderr.
* **Times are for people.** A moment is shown relative to now (``3m ago``,
  ``in 5s``, a date beyond a month), a length of time as ``1m12s``
  (:func:`human_time`, :func:`human_duration`); JSON keeps RFC 3339.
"""

from __future__ import annotations

import re
import shutil
import sys
import time
from collections.abc import Collection, Sequence
from typing import Any

import click
import msgspec

from engine.views.durations import human_duration
from ledger.events import LogRef, Record
from ledger.times import epoch
from projections.replay import Projections

__all__ = [
    "describe_record",
    "fit",
    "hidden_note",
    "human_duration",
    "human_time",
    "output_width",
    "print_table",
    "record_line",
    "span",
    "summary_lines",
    "table_lines",
]

_SKIP = frozenset({"item", "attempt"})


_DIGEST = re.compile(r"^((?:sha256:|ik:)?)([0-9a-f]{12})[0-9a-f]{52}$")


def _short(value: Any, limit: int | None = 60) -> str:
    """A value on one line, cut at ``limit`` (a digest to its first 12 hex digits);
    None: never cut, digests whole."""
    text = value if isinstance(value, str) else msgspec.json.encode(value).decode()
    if limit is not None:
        text = _DIGEST.sub(r"\1\2…", text)
    text = text.replace("\n", "\\n")
    return text if limit is None or len(text) <= limit else text[: limit - 1] + "…"


def describe_record(record: Record, *, whole: bool = False) -> str:
    """The payload's fields as ``key=value`` pairs, defaults and item left out; each
    value cut at 60 characters, unless ``whole``."""
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
        parts.append(f"{name}={_short(value, None if whole else 60)}")
    return " ".join(parts)


def _fields(data: Any) -> list[tuple[str, Any]]:
    names: tuple[str, ...] = data.__struct_fields__
    defaults: tuple[Any, ...] = data.__struct_defaults__
    pad = (msgspec.NODEFAULT,) * (len(names) - len(defaults))
    return list(zip(names, pad + defaults, strict=True))


def record_line(record: Record, *, whole: bool = False) -> str:
    """One record as one line: seq, time, type, item/attempt, fields (values cut for a
    terminal, unless ``whole``)."""
    data = record.data
    item = getattr(data, "item", None)
    attempt = getattr(data, "attempt", None)
    who = ""
    if item is not None:
        item = _short(item, None if whole else 40)
        who = item if attempt is None else f"{item}#{attempt}"
    text = f"{record.seq:>7} {record.ts} {record.type:<21} {who}"
    rest = describe_record(record, whole=whole)
    return f"{text} {rest}".rstrip() if who else f"{text}{rest}".rstrip()


def _n(count: int, one: str, many: str | None = None) -> str:
    return f"{count:,} {one if count == 1 else (many or one + 's')}"


def _count_line(label: str, counts: dict[str, int]) -> str:
    return f"{label:<10}" + " · ".join(f"{k} {v:,}" for k, v in counts.items())


def summary_lines(p: Projections, *, status: str, ledger: str, whole: bool = False) -> list[str]:
    """A human summary of every projection (failure examples cut, unless ``whole``)."""
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
                f"{_short(s.example, None if whole else 40)}"
            )
    if run.reason:
        lines.append(f"reason    {run.reason}")
    return lines


# --- times ---------------------------------------------------------------------------


def human_time(ts: str | None, now: float | None = None) -> str:
    """An RFC 3339 time relative to ``now``: ``just now``, ``3m ago``, ``in 5s``;
    beyond 30 days, its date (``2026-01-05``). ``-`` for none; text that is not a
    time is shown as it is."""
    if not ts:
        return "-"
    try:
        then = epoch(ts)
    except ValueError:
        return ts
    delta = (time.time() if now is None else now) - then
    if abs(delta) < 1:
        return "just now"
    if abs(delta) >= 30 * 86400:
        return ts[:10]
    text = _coarse(abs(delta))
    return f"{text} ago" if delta > 0 else f"in {text}"


def _coarse(seconds: float) -> str:
    """Seconds as its largest unit, or two when that one is small: ``45s``, ``3m``, ``1h20m``."""
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m"
    hours, rest = divmod(whole, 3600)
    if hours < 24:
        return f"{hours}h{rest // 60:02d}m" if hours < 10 else f"{hours}h"
    return f"{whole // 86400}d"


def span(start: str | None, end: str | None, now: float | None = None) -> float | None:
    """Seconds from ``start`` to ``end`` (to ``now`` when ``end`` is None); None without a start."""
    if not start:
        return None
    try:
        begin = epoch(start)
        finish = epoch(end) if end else (time.time() if now is None else now)
    except ValueError:
        return None
    return finish - begin


# --- tables ----------------------------------------------------------------------------


def output_width() -> int | None:
    """The terminal's width when standard output is one; None (never cut) when it is not."""
    try:
        if not sys.stdout.isatty():
            return None
    except (AttributeError, ValueError):
        return None
    return max(shutil.get_terminal_size().columns, 20)


def fit(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters: cut at a word when one is near, then ``…``."""
    if len(text) <= width:
        return text
    if width <= 1:
        return "…"[:width]
    cut = text[: width - 1]
    space = cut.rfind(" ")
    if space >= width * 2 // 3:
        cut = cut[:space]
    return cut.rstrip() + "…"


def table_lines(
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    width: int | None,
    text: Collection[str] = (),
    keep: Collection[str] = (),
    right: Collection[str] = (),
    rule: bool = False,
    header: bool = True,
) -> tuple[list[str], list[str]]:
    """A table as lines, and the columns left out (named, so the caller can say so).

    ``width`` None: every value whole, each column as wide as its widest value.
    Else the table is fitted to ``width``: columns that cannot fit at all are
    left out from the right, then the ``text`` columns (free text) give way
    first (down to 16 characters, then 8), then the widest; ``keep`` columns
    (identifiers) are never left out, and cut only when they alone are wider
    than ``width``; a value cut ends in ``…``.
    ``right`` columns are right-aligned; ``rule`` draws a line of dashes under
    the header; ``header=False`` leaves both out.
    """
    names = list(columns)
    cells = [list(r) for r in rows]
    widths = [
        max([len(c) if header else 0] + [len(r[i]) for r in cells]) for i, c in enumerate(names)
    ]
    hidden: list[str] = []
    if width is not None:
        _hide(names, widths, cells, hidden, keep, width)
        _shrink(
            widths,
            [i for i, c in enumerate(names) if c in text and c not in keep],
            [i for i, c in enumerate(names) if c not in keep],
            width - 2 * (len(widths) - 1),
        )

    def line(values: Sequence[str]) -> str:
        parts = []
        for value, name, w in zip(values, names, widths, strict=True):
            shown = fit(value, w)
            parts.append(shown.rjust(w) if name in right else shown.ljust(w))
        return "  ".join(parts).rstrip()

    lines = [line(names)] if header else []
    if rule and header:
        lines.append("  ".join("-" * w for w in widths))
    lines += [line(r) for r in cells]
    return lines, hidden


def _hide(
    names: list[str],
    widths: list[int],
    cells: list[list[str]],
    hidden: list[str],
    keep: Collection[str],
    width: int,
) -> None:
    """Leave out, from the right, the columns that cannot fit (``keep`` ones stay whole)."""

    def least() -> int:
        return sum(w if n in keep else min(w, 10) for n, w in zip(names, widths, strict=True))

    while len(names) > 1 and least() + 2 * (len(widths) - 1) > width:
        droppable = [i for i, n in enumerate(names) if n not in keep]
        if not droppable:
            break
        i = droppable[-1]
        hidden.insert(0, names.pop(i))
        widths.pop(i)
        for r in cells:
            r.pop(i)


def _shrink(widths: list[int], text: list[int], others: list[int], room: int) -> None:
    every = list(range(len(widths)))  # the last resort: kept columns wider than the screen
    for floor, candidates in ((16, text), (8, text), (6, others), (6, every)):
        while sum(widths) > room:
            shrinkable = [i for i in candidates if widths[i] > floor]
            if not shrinkable:
                break
            widest = max(shrinkable, key=lambda i: widths[i])
            widths[widest] -= 1


def hidden_note(hidden: Sequence[str], how: str = "--json") -> str:
    """What a table fitted to a narrow terminal left out, and where to see it."""
    return f"not shown (too narrow): {', '.join(hidden)}, which {how} has"


def print_table(
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    text: Collection[str] = (),
    keep: Collection[str] = (),
    right: Collection[str] = (),
    header: bool = True,
    how: str = "--json",
) -> None:
    """A table on stdout fitted to it (:func:`table_lines`); the columns it left out
    named on stderr (``how``: the option that shows them)."""
    lines, hidden = table_lines(
        columns, rows, width=output_width(), text=text, keep=keep, right=right, header=header
    )
    for line in lines:
        click.echo(line)
    if hidden:
        click.echo(f"engine: {hidden_note(hidden, how)}", err=True)
