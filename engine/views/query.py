"""Ad-hoc questions to ledgers, answered by DuckDB.

DuckDB reads the NDJSON ledger files directly (one run, or every run under
the home directory) as the view ``events(v, seq, ts, type, run, data,
hash)`` with ``data`` as JSON; convenience views (``failures``,
``attempts``, ``items``, ``heartbeats``, ``acks``) and named queries are
built on it (docs/query.md). A ledger being appended to can be queried: a
torn last line is left out, not an error.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from engine.errors import QueryError
from ledger.events import AgentUsage

__all__ = ["NAMED", "QueryError", "QueryResult", "connect", "run_named", "run_sql"]

COLUMNS = (
    "{'v': 'INTEGER', 'seq': 'BIGINT', 'ts': 'VARCHAR', 'type': 'VARCHAR', "
    "'run': 'VARCHAR', 'data': 'JSON', 'hash': 'VARCHAR'}"
)


@dataclass
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]

    def records(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _read(paths: Sequence[Path]) -> str:
    files = "[" + ", ".join(_literal(str(p)) for p in paths) + "]"
    return (
        f"read_json({files}, format = 'newline_delimited', columns = {COLUMNS}, "
        "ignore_errors = true)"
    )


USAGE_COLUMNS: tuple[tuple[str, str], ...] = tuple(
    (f.name, {float: "DOUBLE", int: "BIGINT"}.get(f.type, "VARCHAR"))
    for f in msgspec.structs.fields(AgentUsage)
)
"""The fields of an outcome's ``usage`` (what its agent spent) and their SQL types, in the
ledger's order: columns of ``events`` (NULL where a record has no usage) and of ``usage``."""


def _usage_columns() -> str:
    """``events``' usage columns, read from the record's ``data``."""
    return ", ".join(
        f"CAST(data->'usage'->>{_literal(name)} AS {kind}) AS {name}"
        for name, kind in USAGE_COLUMNS
    )


VIEWS = """
CREATE VIEW failures AS
SELECT run, seq, ts, data->>'item' AS item, CAST(data->>'attempt' AS INTEGER) AS attempt,
       data->>'error_type' AS error_type, data->>'signature' AS signature,
       data->>'message' AS message, CAST(data->>'exit_code' AS INTEGER) AS exit_code,
       CAST(data->>'signal' AS INTEGER) AS signal, CAST(data->>'duration' AS DOUBLE) AS duration,
       data->>'worker' AS worker
FROM events WHERE type = 'item.failed';

CREATE VIEW heartbeats AS
SELECT run, seq, ts, data->>'item' AS item, CAST(data->>'attempt' AS INTEGER) AS attempt,
       CAST(data->>'pid' AS INTEGER) AS pid, CAST(data->>'rss' AS BIGINT) AS rss,
       CAST(data->>'cpu' AS DOUBLE) AS cpu, CAST(data->>'output_bytes' AS BIGINT) AS output_bytes
FROM events WHERE type = 'heartbeat';

CREATE VIEW attempts AS
WITH d AS (
    SELECT run, data->>'item' AS item, CAST(data->>'attempt' AS INTEGER) AS attempt,
           ts AS dispatched_at, data->>'worker' AS worker
    FROM events WHERE type = 'item.dispatched'
), o AS (
    SELECT run, data->>'item' AS item, CAST(data->>'attempt' AS INTEGER) AS attempt, ts,
           CASE type WHEN 'item.succeeded' THEN 'succeeded' ELSE 'failed' END AS outcome,
           CAST(data->>'duration' AS DOUBLE) AS duration, data->>'error_type' AS error_type,
           data->>'worker' AS worker
    FROM events WHERE type IN ('item.succeeded', 'item.failed')
)
SELECT d.run, d.item, d.attempt, d.dispatched_at, o.ts AS finished_at,
       coalesce(o.outcome, 'no outcome') AS outcome, o.duration, o.error_type,
       coalesce(o.worker, d.worker) AS worker
FROM d LEFT JOIN o USING (run, item, attempt);

CREATE VIEW usage AS
SELECT run, seq, ts, type, data->>'item' AS item, CAST(data->>'attempt' AS INTEGER) AS attempt,
       data->>'phase' AS phase,
       CASE WHEN type IN ('item.failed', 'step.failed') THEN 'failed' ELSE 'succeeded' END
           AS outcome,
       data->>'error_type' AS error_type, data->>'signature' AS signature, {usage}
FROM events
WHERE type IN ('item.succeeded', 'item.failed', 'step.succeeded', 'step.failed')
  AND json_type(data->'usage') = 'OBJECT';

CREATE VIEW items AS
WITH e AS (
    SELECT run, seq, ts, type, data->>'item' AS item
    FROM events
    WHERE type IN ('item.enqueued', 'item.dispatched', 'item.succeeded', 'item.failed',
                   'item.retry_scheduled', 'item.dead_lettered', 'item.requeued', 'item.skipped')
), last AS (
    SELECT run, item, arg_max(type, seq) AS last_type, max(ts) AS updated_at,
           count(*) FILTER (WHERE type = 'item.dispatched') AS attempts
    FROM e GROUP BY run, item
)
SELECT run, item,
       CASE last_type
           WHEN 'item.enqueued' THEN 'pending' WHEN 'item.requeued' THEN 'pending'
           WHEN 'item.retry_scheduled' THEN 'pending' WHEN 'item.dispatched' THEN 'running'
           WHEN 'item.succeeded' THEN 'succeeded' WHEN 'item.failed' THEN 'failed'
           WHEN 'item.dead_lettered' THEN 'dead' WHEN 'item.skipped' THEN 'skipped'
       END AS status,
       attempts, updated_at
FROM last;
""".replace("{usage}", ", ".join(name for name, _ in USAGE_COLUMNS))

REMEDIES = {
    "rate_limited": "lower max_parallel, or enable the circuit breaker on rate_limited",
    "api_error": "retry later; enable the circuit breaker on api_error",
    "timeout": "raise the step's timeout, or split the item's work",
    "hung": "check what the command waits for; raise heartbeat.hung_after if it is just quiet",
    "resource_exhausted": "lower max_parallel, or give the machine more memory or disk",
    "worker_lost": "check the machine or worker that ran it",
    "interrupted": "nothing to fix in the item: resume the run",
    "command_failed": "read the stderr tail (engine dlq show) and fix the command or input",
    "validation_failed": "fix the command's output format, or the item's data",
    "merge_conflict": "rebase or resolve the conflicting change, then retry",
    "unknown": "read the logs (engine dlq show) and add a classify rule",
}

TYPE_WEIGHT = {
    "resource_exhausted": 1.5,
    "validation_failed": 1.4,
    "hung": 1.3,
    "worker_lost": 1.3,
    "api_error": 1.2,
    "merge_conflict": 1.2,
    "timeout": 1.1,
    "rate_limited": 1.0,
    "command_failed": 1.0,
    "unknown": 1.0,
    "interrupted": 0.5,
}


def _case(mapping: dict[str, Any], column: str, default: str) -> str:
    whens = " ".join(
        f"WHEN {_literal(k)} THEN {v if isinstance(v, float) else _literal(str(v))}"
        for k, v in mapping.items()
    )
    return f"CASE {column} {whens} ELSE {default} END"


@dataclass(frozen=True)
class Named:
    name: str
    summary: str
    sql: str


NAMED: dict[str, Named] = {
    q.name: q
    for q in (
        Named(
            "failures by signature",
            "failures grouped by signature: type, count, items, first/last seen, an example",
            """
            SELECT signature, error_type, count(*) AS count,
                   count(DISTINCT run || '/' || item) AS items,
                   min(ts) AS first_seen, max(ts) AS last_seen, arg_min(message, seq) AS example
            FROM failures GROUP BY signature, error_type ORDER BY count DESC, last_seen DESC
            """,
        ),
        Named(
            "failures by type",
            "failures grouped by error type: count, distinct items and runs, first/last seen",
            """
            SELECT error_type, count(*) AS count, count(DISTINCT run || '/' || item) AS items,
                   count(DISTINCT run) AS runs, min(ts) AS first_seen, max(ts) AS last_seen
            FROM failures GROUP BY error_type ORDER BY count DESC
            """,
        ),
        Named(
            "attempts by item",
            "items by number of attempts, with failures and where they stand",
            """
            SELECT i.run, i.item, i.attempts,
                   (SELECT count(*) FROM failures f WHERE f.run = i.run AND f.item = i.item)
                       AS failures,
                   i.status
            FROM items i ORDER BY i.attempts DESC, i.run, i.item
            """,
        ),
        Named(
            "slowest items",
            "successful attempts by duration, longest first",
            """
            SELECT run, item, attempt, duration, finished_at
            FROM attempts WHERE outcome = 'succeeded' ORDER BY duration DESC LIMIT 100
            """,
        ),
        Named(
            "retries",
            "every scheduled retry: its delay and what the next attempt did",
            """
            SELECT r.run, r.data->>'item' AS item, CAST(r.data->>'attempt' AS INTEGER) AS attempt,
                   CAST(r.data->>'delay' AS DOUBLE) AS delay, r.ts AS scheduled_at,
                   coalesce(a.outcome, 'not yet') AS next_outcome
            FROM events r
            LEFT JOIN attempts a ON a.run = r.run AND a.item = r.data->>'item'
                 AND a.attempt = CAST(r.data->>'attempt' AS INTEGER) + 1
            WHERE r.type = 'item.retry_scheduled' ORDER BY r.run, r.seq
            """,
        ),
        Named(
            "throughput",
            "items finished per minute (succeeded, dead-lettered or skipped)",
            """
            SELECT date_trunc('minute', ts) AS minute, count(*) AS finished,
                   count(*) FILTER (WHERE type = 'item.succeeded') AS succeeded,
                   count(*) FILTER (WHERE type = 'item.dead_lettered') AS dead,
                   count(*) FILTER (WHERE type = 'item.skipped') AS skipped
            FROM events
            WHERE type IN ('item.succeeded', 'item.dead_lettered', 'item.skipped')
            GROUP BY minute ORDER BY minute
            """,
        ),
        Named(
            "cost by item",
            "what each item's agent runs spent: cost, of it on failed attempts, tokens, turns",
            """
            SELECT run, item, round(sum(cost_usd), 6) AS cost_usd,
                   round(coalesce(sum(cost_usd) FILTER (WHERE outcome = 'failed'), 0), 6)
                       AS wasted_usd,
                   count(*) AS attempts, sum(input_tokens) AS input_tokens,
                   sum(output_tokens) AS output_tokens,
                   sum(cache_read_input_tokens) AS cache_read_input_tokens, sum(turns) AS turns
            FROM usage WHERE item IS NOT NULL
            GROUP BY run, item ORDER BY cost_usd DESC, run, item
            """,
        ),
        Named(
            "cost by error type",
            "what failed attempts spent, by error type",
            """
            SELECT error_type, round(sum(cost_usd), 6) AS cost_usd, count(*) AS attempts,
                   count(DISTINCT run || '/' || item) AS items, count(DISTINCT run) AS runs,
                   sum(turns) AS turns
            FROM usage WHERE outcome = 'failed' GROUP BY error_type
            ORDER BY cost_usd DESC, error_type
            """,
        ),
        Named(
            "cost by signature",
            "what failed attempts spent, by failure signature",
            """
            SELECT signature, error_type, round(sum(cost_usd), 6) AS cost_usd,
                   count(*) AS attempts, count(DISTINCT run || '/' || item) AS items,
                   count(DISTINCT run) AS runs
            FROM usage WHERE outcome = 'failed'
            GROUP BY signature, error_type ORDER BY cost_usd DESC, signature
            """,
        ),
        Named(
            "spend over time",
            "what the agents spent per minute, and in all so far",
            """
            SELECT date_trunc('minute', ts) AS minute, round(sum(cost_usd), 6) AS cost_usd,
                   round(sum(sum(cost_usd)) OVER (ORDER BY date_trunc('minute', ts)), 6)
                       AS total_usd,
                   count(*) AS outcomes, count(DISTINCT run) AS runs
            FROM usage GROUP BY minute ORDER BY minute
            """,
        ),
        Named(
            "heartbeat gaps",
            "the longest silence of each attempt (from dispatch, between heartbeats, to its end)",
            """
            WITH marks AS (
                SELECT run, data->>'item' AS item, CAST(data->>'attempt' AS INTEGER) AS attempt,
                       ts, type
                FROM events
                WHERE type IN ('item.dispatched', 'heartbeat', 'item.succeeded', 'item.failed')
            ), gaps AS (
                SELECT run, item, attempt, type,
                       epoch(ts) - epoch(lag(ts) OVER (PARTITION BY run, item, attempt ORDER BY ts))
                           AS gap
                FROM marks
            )
            SELECT run, item, attempt, round(max(gap), 3) AS longest_gap_s,
                   count(*) FILTER (WHERE type = 'heartbeat') AS heartbeats
            FROM gaps GROUP BY run, item, attempt HAVING max(gap) IS NOT NULL
            ORDER BY longest_gap_s DESC
            """,
        ),
        Named(
            "dlq",
            "items in the dead-letter queue now (not requeued, succeeded or purged since)",
            """
            WITH dead AS (
                SELECT run, seq, ts, data->>'item' AS item, CAST(data->>'attempt' AS INTEGER)
                           AS attempts, data->>'error_type' AS error_type,
                       data->>'signature' AS signature, data->>'reason' AS reason
                FROM events WHERE type = 'item.dead_lettered'
            ), later AS (
                SELECT run, data->>'item' AS item, seq FROM events
                WHERE type IN ('item.requeued', 'item.succeeded', 'item.skipped')
                UNION ALL
                SELECT run, unnest(from_json(data->'items', '["VARCHAR"]')) AS item, seq
                FROM events WHERE type = 'dlq.purged'
            )
            SELECT d.run, d.item, d.attempts, d.error_type, d.signature, d.reason,
                   d.ts AS failed_at
            FROM dead d
            WHERE d.seq = (SELECT max(seq) FROM dead x WHERE x.run = d.run AND x.item = d.item)
              AND NOT EXISTS (SELECT 1 FROM later l
                              WHERE l.run = d.run AND l.item = d.item AND l.seq > d.seq)
            ORDER BY failed_at
            """,
        ),
        Named(
            "failure patterns",
            "signatures seen 3+ times across runs, by priority, with a remedy and their ack",
            f"""
            WITH g AS (
                SELECT signature, arg_max(error_type, seq) AS error_type, count(*) AS count,
                       count(DISTINCT run) AS runs, count(DISTINCT run || '/' || item) AS items,
                       min(ts) AS first_seen, max(ts) AS last_seen,
                       arg_min(message, seq) AS example
                FROM failures GROUP BY signature HAVING count(*) >= 3
            ), a AS (
                SELECT signature, arg_max(note, ts) AS note, arg_max(ref, ts) AS ref,
                       max(ts) AS acknowledged_at
                FROM acks GROUP BY signature
            ), now_ AS (SELECT max(ts) AS now FROM events)
            SELECT g.signature, g.error_type, g.count,
                   round(ln(1 + g.count)
                         * {_case(TYPE_WEIGHT, "g.error_type", "1.0")}
                         / (1 + (epoch(now_.now) - epoch(g.last_seen)) / 604800.0), 2)
                       AS priority,
                   CASE WHEN a.acknowledged_at IS NULL THEN 'open'
                        WHEN g.last_seen > a.acknowledged_at THEN 'regression'
                        ELSE 'acknowledged' END AS state,
                   {_case(REMEDIES, "g.error_type", _literal(REMEDIES["unknown"]))} AS remedy,
                   g.runs, g.items, g.first_seen, g.last_seen,
                   a.note AS ack_note, a.ref AS ack_ref, g.example
            FROM g CROSS JOIN now_ LEFT JOIN a USING (signature)
            ORDER BY priority DESC, g.count DESC
            """,
        ),
    )
}


def connect(ledgers: Sequence[Path], acks: Path | None = None, *, until: str | None = None) -> Any:
    """A DuckDB connection with ``events``, the convenience views and ``acks`` (of the
    records up to ``until``, an RFC 3339 time, when given)."""
    import duckdb  # noqa: PLC0415 - only the query commands need it

    if not ledgers:
        raise QueryError("there are no ledgers to query", hint="run a workflow first")
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    upto = (
        ""
        if until is None
        else (f" AND CAST(ts AS TIMESTAMP) <= CAST({_literal(until)} AS TIMESTAMP)")
    )
    con.execute(
        "CREATE VIEW events AS SELECT v, seq, CAST(ts AS TIMESTAMP) AS ts, type, run, data, hash, "
        f"{_usage_columns()} FROM {_read(ledgers)} WHERE hash IS NOT NULL AND type IS NOT NULL"
        + upto
    )
    con.execute(VIEWS)
    if acks is not None and acks.is_file():
        con.execute(
            "CREATE VIEW acks AS SELECT CAST(ts AS TIMESTAMP) AS ts, data->>'signature' AS "
            "signature, data->>'note' AS note, data->>'ref' AS ref, data->>'by' AS by "
            f"FROM {_read([acks])} WHERE type = 'pattern.acknowledged'" + upto
        )
    else:
        con.execute(
            "CREATE VIEW acks AS SELECT NULL::TIMESTAMP AS ts, NULL::VARCHAR AS signature, "
            "NULL::VARCHAR AS note, NULL::VARCHAR AS ref, NULL::VARCHAR AS by WHERE false"
        )
    return con


def run_sql(con: Any, sql: str) -> QueryResult:
    import duckdb  # noqa: PLC0415

    try:
        cursor = con.execute(sql)
        rows = cursor.fetchall()
    except duckdb.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise QueryError(
            f"the query failed: {first}",
            hint="views: events, failures, attempts, items, heartbeats, usage, acks "
            "(docs/query.md)",
        ) from None
    columns = [d[0] for d in cursor.description] if cursor.description else []
    return QueryResult(columns, rows)


def find_named(name: str) -> Named:
    key = " ".join(name.lower().replace("_", " ").replace("-", " ").split())
    if key in NAMED:
        return NAMED[key]
    close = difflib.get_close_matches(key, list(NAMED), n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}?" if close else "see them with: engine query --list"
    raise QueryError(f"no query named {name!r}", hint=hint)


def run_named(con: Any, name: str) -> QueryResult:
    return run_sql(con, find_named(name).sql)
