"""``engine query``, ``engine patterns ack`` and ``engine stats``: questions to ledgers."""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
import textwrap
from pathlib import Path
from typing import Any

import click
import msgspec

from cli.app import Context, cli, echo_json
from cli.render import (
    hidden_note,
    human_duration,
    human_time,
    output_width,
    print_table,
    table_lines,
)
from engine.errors import QueryError
from engine.home import list_runs
from engine.run.control import ack, patterns_ledger, who
from engine.views.query import NAMED, QueryResult, connect, find_named, run_sql
from engine.views.stats import SPEND_FIELDS, run_stats
from ledger.times import FORMAT

__all__ = ["patterns", "query_cmd", "stats_cmd"]


SECONDS_COLUMNS = frozenset({"duration", "delay", "gap", "longest_gap_s"})
"""Columns that are lengths of time in seconds: a table shows them as ``1m12s``, as
``engine stats`` does (json and csv keep the seconds)."""


def _cell(value: Any, column: str = "") -> str:
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return human_time(_json_value(value))  # json and csv have it whole
    if column in SECONDS_COLUMNS and isinstance(value, int | float) and math.isfinite(value):
        return human_duration(value)
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") if not math.isnan(value) else "NaN"
    if column == "signature" and isinstance(value, str):
        return value.removeprefix("sha256:")[:10]  # the first 10 hex digits identify it
    return str(value).replace("\n", " ")


TEXT_COLUMNS = {"example", "message", "remedy", "ack_note", "last_error", "reason", "ack_ref"}
"""Long free text: shrunk first when a table is too wide (json and csv keep it whole)."""

KEEP_COLUMNS = {"item", "item_id", "run", "run_id"}
"""Identifiers (what a user types next): never cut to fit a terminal."""


def format_table(result: QueryResult, width: int | None) -> str:
    """The rows as a table: fitted to ``width`` (free-text columns give way first, then
    the widest; columns that cannot fit at all are left out, and named), or, with
    ``width`` None, every value whole."""
    if not result.columns:
        return ""
    columns = list(result.columns)
    cells = [[_cell(v, c) for v, c in zip(row, columns, strict=True)] for row in result.rows]
    lines, hidden = table_lines(
        columns, cells, width=width, text=TEXT_COLUMNS, keep=KEEP_COLUMNS, rule=True
    )
    count = f"({len(result.rows)} row{'s' if len(result.rows) != 1 else ''}"
    if hidden:
        count += f"; {hidden_note(hidden, '--format json')}"
    lines += textwrap.wrap(count + ")", width) if width else [count + ")"]
    return "\n".join(lines)


def _json_value(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.strftime(FORMAT)
    return value


def emit(result: QueryResult, fmt: str) -> None:
    if fmt == "json":
        echo_json([{k: _json_value(v) for k, v in r.items()} for r in result.records()])
    elif fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(result.columns)
        for row in result.rows:
            writer.writerow([_json_value(v) for v in row])
        click.echo(out.getvalue(), nl=False)
    else:
        click.echo(format_table(result, output_width()))


def _ledgers(obj: Context, run: str | None, every: bool) -> list[Path]:
    if every:
        return [ref.ledger for ref in list_runs(obj.home) if ref.ledger.is_file()]
    assert run is not None
    return [obj.run(run).ledger]


@cli.command("query")
@click.argument("args", nargs=-1)
@click.option("--all", "every", is_flag=True, help="Query every run under the home directory.")
@click.option(
    "--sql", help="Run this SQL (views: events, failures, attempts, items, heartbeats, usage)."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
    help="table fits the terminal (a value is never cut when output is not one); "
    "json is an array of row objects.",
)
@click.option("--json", "as_json", is_flag=True, help="The same as --format json.")
@click.option("--list", "list_", is_flag=True, help="List the named queries (in any --format).")
@click.pass_obj
def query_cmd(
    obj: Context,
    args: tuple[str, ...],
    every: bool,
    sql: str | None,
    fmt: str,
    as_json: bool,
    list_: bool,
) -> None:
    """Ask a run's ledger (or every run's, with --all) a named question or SQL.

    \b
    engine query RUN "failures by signature"
    engine query --all "failure patterns"
    engine query RUN --sql "SELECT type, count(*) AS n FROM events GROUP BY type"
    """
    fmt = "json" if as_json else fmt
    if list_:
        _list_named(fmt)
        return
    words = list(args)
    run = None if every else (words.pop(0) if words else None)
    if run is None and not every:
        raise click.UsageError("name a run (or --all), then a query name or --sql")
    name = " ".join(words)
    if sql is None and not name:
        raise click.UsageError("name a query (engine query --list) or give --sql")
    if sql is not None and name:
        raise click.UsageError("give a query name or --sql, not both")
    if sql is not None and not sql.strip():
        raise QueryError("--sql is empty", hint="give a SELECT over events, failures, ...")
    query = find_named(name).sql if sql is None else sql
    con = connect(_ledgers(obj, run, every), acks=patterns_ledger(obj.home))
    emit(run_sql(con, query), fmt)


def _list_named(fmt: str) -> None:
    """The named queries: name and summary, one a line (json: objects; csv: rows)."""
    rows = [[q.name, q.summary] for q in NAMED.values()]
    if fmt == "table":
        print_table(
            ["name", "summary"],
            rows,
            text={"summary"},
            keep={"name"},
            header=False,
            how="--format json",
        )
        return
    emit(QueryResult(columns=["name", "summary"], rows=[tuple(r) for r in rows]), fmt)


@cli.group("patterns")
def patterns() -> None:
    """Recurring failures and their remediation."""


@patterns.command("ack")
@click.argument("signature")
@click.option("--note", required=True, help="What was done about it.")
@click.option("--ref", help="A commit, ticket or link for the fix.")
@click.option("--json", "as_json", is_flag=True, help="Print what was recorded as JSON.")
@click.pass_obj
def patterns_ack(obj: Context, signature: str, note: str, ref: str | None, as_json: bool) -> None:
    """Record that a recurring failure was addressed.

    Kept in a ledger of its own under the home directory (same format and
    guarantees as a run's). `engine query --all "failure patterns"` then
    shows the signature as acknowledged, and as a regression if it fails
    again afterwards. A prefix of the signature will do if it is unique.
    """
    if not note.strip():
        raise QueryError("--note is empty", hint="say what was done about it")
    full = _resolve_signature(obj, signature)
    by = who()
    ack(obj.home, full, note, link=ref, by=by)
    if as_json:
        echo_json({"signature": full, "note": note, "ref": ref, "by": by})
        return
    click.echo(f"acknowledged {full.removeprefix('sha256:')[:12]}: {note}")


def _resolve_signature(obj: Context, given: str) -> str:
    """The full signature a (unique) prefix names, as the ledgers record it."""
    wanted = given.removeprefix("sha256:").lower()
    if any(c not in "0123456789abcdef" for c in wanted) or not 6 <= len(wanted) <= 64:
        raise QueryError(
            f"{given!r} is not a signature (6 to 64 hex digits)",
            hint='see them: engine query --all "failures by signature"',
        )
    ledgers = [ref.ledger for ref in list_runs(obj.home) if ref.ledger.is_file()]
    found: list[str] = []
    if ledgers:
        sql = (
            "SELECT DISTINCT signature FROM failures "
            f"WHERE starts_with(replace(signature, 'sha256:', ''), '{wanted}')"
        )
        found = [str(r[0]) for r in run_sql(connect(ledgers), sql).rows]
    if len(found) == 1:
        return found[0]
    if not found:
        if len(wanted) == 64:
            return wanted  # not seen (yet): acknowledged ahead of time
        raise QueryError(
            f"no failure has a signature starting with {given!r}",
            hint='see them: engine query --all "failures by signature"',
        )
    raise QueryError(
        f"{given!r} matches {len(found)} signatures", hint="give more of it (or all 64 hex digits)"
    )


DURATIONS = frozenset(
    {"wall_s", "span_s", "attempt_p50_s", "attempt_p95_s", "attempt_p99_s", "busy_s"}
    | {"retry_time_s", "backoff_s"}
)
"""The figures of ``engine stats`` that are lengths of time (shown as ``1m12s``)."""


@cli.command("stats")
@click.argument("run", default="latest")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON (seconds).")
@click.pass_obj
def stats_cmd(obj: Context, run: str, as_json: bool) -> None:
    """Wall time, items/s, attempt duration percentiles, parallel efficiency, retry cost.

    The table shows lengths of time as `1m12s` (`wall`, `busy`, ...); --json has
    them in seconds (`wall_s`, `busy_s`, ...).
    """
    stats = run_stats(obj.run(run).ledger)
    if as_json:
        echo_json(stats)
        return
    for key, value in msgspec.to_builtins(stats).items():
        if key in SPEND_FIELDS and not stats.agent_calls:
            continue  # no agent said what it spent
        label = key
        if value is None:
            shown = "-"
        elif key in DURATIONS:
            shown = human_duration(value)
        else:
            shown = _cell(value)
        if key in DURATIONS:
            label = key.removesuffix("_s")  # the JSON key has the unit; the table, a duration
        click.echo(f"{label:<26} {shown}")
