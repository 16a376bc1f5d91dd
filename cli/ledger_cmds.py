"""Commands over a run's ledger: replay, tail, audit verify, schema."""

from __future__ import annotations

import collections
import fnmatch
import sys
from collections.abc import Callable
from pathlib import Path

import click
import msgspec
import watchfiles

from cli.app import EXIT_FAILED, Context, cli, echo_json
from cli.render import output_width, record_line, summary_lines
from engine.home import effective_status
from engine.store.receipts import check_receipts
from engine.views.report import build_report
from engine.views.report_check import check_report
from engine.views.report_check import render as render_report
from engine.views.schemas import generate_schemas, render, write_schemas
from ledger.atomic import atomic_write
from ledger.errors import EngineError, LedgerCorrupt
from ledger.events import (
    Record,
    RunAborted,
    RunCompleted,
    RunCreated,
    RunFailed,
    RunResumed,
    RunStarted,
)
from ledger.lock import RunLock
from ledger.reader import LedgerReader, ScanResult, TornTail, verify_ledger
from projections.replay import replay

__all__ = ["audit", "audit_report", "replay_cmd", "schema_cmd", "tail_cmd"]


def _warn_torn(torn: TornTail | None, ledger: Path) -> None:
    if torn is not None:
        click.echo(
            f"engine: warning: {ledger}: torn tail at byte offset {torn.offset} "
            f"({torn.length} bytes, {torn.reason}); read up to it. The next writer "
            f"moves it aside to {ledger.name}.torn-{torn.offset}",
            err=True,
        )


# --- replay --------------------------------------------------------------------


@cli.command("replay")
@click.argument("run")
@click.option("--until", type=click.IntRange(min=0), help="Stop after this seq.")
@click.option("--json", "as_json", is_flag=True, help="Print every projection as JSON.")
@click.option(
    "--full", is_flag=True, help="Fold every record from the first, ignoring the run's snapshot."
)
@click.pass_obj
def replay_cmd(obj: Context, run: str, until: int | None, as_json: bool, full: bool) -> None:
    """Rebuild a run's state by replaying its ledger.

    RUN is a run id, `latest`, or a path to a run directory or ledger file.
    """
    ref = obj.run(run)
    projections = replay(ref.ledger, until=until, snapshot=not full)
    assert projections.scan is not None
    _warn_torn(projections.scan.torn, ref.ledger)
    if as_json:
        echo_json(projections.to_json())
        return
    status = (
        projections.run.status if until is not None else effective_status(projections, ref.run_dir)
    )
    whole = output_width() is None  # not a terminal: nothing cut
    for line in summary_lines(projections, status=status, ledger=str(ref.ledger), whole=whole):
        click.echo(line)


# --- tail ------------------------------------------------------------------------


def _matcher(types: str | None, item: str | None) -> Callable[[Record], bool]:
    patterns = [p.strip() for p in types.split(",") if p.strip()] if types else []

    def keep(record: Record) -> bool:
        if patterns and not any(fnmatch.fnmatchcase(record.type, p) for p in patterns):
            return False
        return item is None or getattr(record.data, "item", None) == item

    return keep


@cli.command("tail")
@click.argument("run")
@click.option("-f", "--follow", is_flag=True, help="Keep printing records as they are appended.")
@click.option(
    "--type",
    "types",
    metavar="PATTERN",
    help="Only these event types: a glob, or several separated by commas (e.g. 'item.*').",
)
@click.option("--item", metavar="ID", help="Only records of this item.")
@click.option(
    "-n",
    "--lines",
    "count",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    help="How many of the newest matching records to print first.",
)
@click.option("-a", "--all", "show_all", is_flag=True, help="Print every matching record.")
@click.option("--json", "as_json", is_flag=True, help="Print the ledger lines themselves.")
@click.pass_obj
def tail_cmd(
    obj: Context,
    run: str,
    follow: bool,
    types: str | None,
    item: str | None,
    count: int,
    show_all: bool,
    as_json: bool,
) -> None:
    """Print a run's newest ledger records; with -f, follow new ones.

    With -f it exits (0) once the run has ended: its last run.completed,
    run.failed or run.aborted is printed (or filtered out) and no engine
    holds the run. A run whose engine was killed has no such record: it is
    followed until an engine resumes and ends it, or until Ctrl-C.
    """
    ref = obj.run(run)
    keep = _matcher(types, item)
    out = sys.stdout.buffer
    ending = _Ending()
    whole = output_width() is None  # not a terminal: no value cut

    def emit(line: bytes, record: Record) -> None:
        if as_json:
            out.write(line + b"\n")
        else:
            out.write(record_line(record, whole=whole).encode() + b"\n")

    reader = LedgerReader(ref.ledger)
    window: collections.deque[tuple[bytes, Record]] = collections.deque(
        maxlen=None if show_all else count
    )
    for _offset, line, record in reader.lines():
        ending.see(record)
        if keep(record):
            window.append((line, record))
    for line, record in window:
        emit(line, record)
    out.flush()
    assert reader.result is not None
    if not follow:
        _warn_torn(reader.result.torn, ref.ledger)
        return
    try:
        _follow(ref.ledger, ref.run_dir, reader.result, ending, keep, emit)
    except KeyboardInterrupt:
        out.flush()


class _Ending:
    """Whether the run's newest start or end record is an end."""

    ENDS = frozenset({RunCompleted.TYPE, RunFailed.TYPE, RunAborted.TYPE})
    STARTS = frozenset({RunCreated.TYPE, RunStarted.TYPE, RunResumed.TYPE})

    def __init__(self) -> None:
        self.ended = False

    def see(self, record: Record) -> None:
        if record.type in self.ENDS:
            self.ended = True
        elif record.type in self.STARTS:
            self.ended = False

    def over(self, run_dir: Path) -> bool:
        """Ended, and no engine holds the run (none is about to write more)."""
        return self.ended and RunLock(run_dir).probe() is None


def _follow(
    ledger: Path,
    run_dir: Path,
    position: ScanResult,
    ending: _Ending,
    keep: Callable[[Record], bool],
    emit: Callable[[bytes, Record], None],
) -> None:
    """Print records appended after ``position`` until the run is over, or interrupted."""
    if ending.over(run_dir):
        return
    target = str(ledger.resolve())

    def only_ledger(_change: object, path: str) -> bool:
        return path == target

    for _changes in watchfiles.watch(
        ledger.parent,
        watch_filter=only_ledger,
        debounce=20,
        step=10,
        rust_timeout=1000,
        yield_on_timeout=True,
        recursive=False,
    ):
        if ledger.stat().st_size > position.end_offset:
            reader = LedgerReader(ledger, start=position)
            for _offset, line, record in reader.lines():
                ending.see(record)
                if keep(record):
                    emit(line, record)
            sys.stdout.buffer.flush()
            assert reader.result is not None
            position = reader.result
        if ending.over(run_dir):  # checked at least once a second (rust_timeout)
            return


# --- audit -----------------------------------------------------------------------


@cli.group("audit")
def audit() -> None:
    """Check and report on a run's audit trail."""


@audit.command("verify")
@click.argument("run")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option(
    "--report",
    "report_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also check that this report (from engine audit report: md, json or html) "
    "belongs to the ledger and was not edited.",
)
@click.pass_obj
def audit_verify(obj: Context, run: str, as_json: bool, report_file: Path | None) -> None:
    """Check a ledger's hash chain, sequence and records.

    RUN is a run id, `latest`, or a path to a run directory or ledger file.
    Every record is also decoded as every other command reads it (a known
    type, data of the right types). Then every receipt under `receipts/`
    is checked against the ledger: a receipt that differs (naming the
    field), that does not decode, of no succeeded item, and a succeeded
    item without a receipt are each one line. Exit 0 when intact (a torn
    tail is a warning); 1 on corruption or tampering, naming the first bad
    seq and its byte offset, or on a receipt's problem. With --report FILE:
    1 also when the report was made of a ledger since changed (one that
    only grew is fine), or was edited.
    """
    ref = obj.run(run)
    report_data = _read_report(report_file)
    try:
        result = verify_ledger(ref.ledger)
    except LedgerCorrupt as exc:
        if as_json:
            echo_json(
                {
                    "ok": False,
                    "ledger": str(ref.ledger),
                    "corrupt": {"seq": exc.seq, "offset": exc.offset, "reason": exc.reason},
                }
            )
        else:
            click.echo(
                f"CORRUPT {ref.ledger}: seq {exc.seq} at byte offset {exc.offset}: {exc.reason}",
                err=True,
            )
        sys.exit(EXIT_FAILED)
    torn = result.torn
    checked = (
        None
        if report_data is None
        else check_report(ref.run_dir, report_data, records_now=result.records, home=obj.home)
    )
    receipts = check_receipts(ref.run_dir, ref.ledger)
    if as_json:
        echo_json(
            {
                "ok": (checked is None or checked.ok) and receipts.ok,
                **({} if checked is None else {"report": msgspec.to_builtins(checked)}),
                "ledger": str(ref.ledger),
                "records": result.records,
                "last_seq": result.records - 1,
                "last_hash": result.last_hash.decode(),
                "bytes": result.end_offset,
                "torn": None
                if torn is None
                else {"offset": torn.offset, "length": torn.length, "reason": torn.reason},
                "receipts": msgspec.to_builtins(receipts),
            }
        )
    else:
        click.echo(
            f"ok {ref.ledger}: {result.records:,} records, chain intact "
            f"(last seq {result.records - 1}, hash {result.last_hash.decode()[:16]}…)"
        )
        for line in receipts.problems:
            click.echo(f"RECEIPT {line}", err=True)
        click.echo(receipts.summary(), err=not receipts.ok or not receipts.directory)
    _warn_torn(torn, ref.ledger)
    if checked is not None and not as_json:
        if checked.ok:
            click.echo(f"ok {report_file}: {checked.message}")
        else:
            click.echo(f"REPORT MISMATCH {report_file}: {checked.problem}", err=True)
    if (checked is not None and not checked.ok) or not receipts.ok:
        sys.exit(EXIT_FAILED)


def _read_report(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise EngineError(
            f"{path}: cannot read the report ({exc.strerror})",
            hint="give the file written by engine audit report -o FILE",
        ) from None


# --- schema ------------------------------------------------------------------------


@audit.command("report")
@click.argument("run")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["md", "json", "html"]),
    default="md",
    show_default=True,
    help="html: one self-contained file with a timeline and a failures chart.",
)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here.")
@click.pass_obj
def audit_report(obj: Context, run: str, fmt: str, output: Path | None) -> None:
    """A run's audit trail for review: who, when, what, and every item's attempts.

    Integrity first: whether the ledger's hash chain verified (exit 1 when it did
    not: the report is still made, of the records before the damage). The links to
    the logs are relative to the run directory: write the report there (-o
    RUN_DIR/report.html) for them to open; `engine logs` reads them anywhere.
    """
    ref = obj.run(run, allow_ledger_file=False)
    report = build_report(ref.run_dir, home=obj.home)
    data = render_report(report, fmt)
    if output is None:
        click.echo(data.decode(), nl=False)
    else:
        try:
            atomic_write(output, data)
        except OSError as exc:
            raise EngineError(
                f"{output}: cannot write the report ({exc.strerror})",
                hint="check that its directory exists and is writable",
            ) from None
        click.echo(f"wrote {output}")
    if not report.integrity.verified:  # the report says so too; so does the exit code
        click.echo(f"LEDGER NOT VERIFIED: {report.integrity.problem}", err=True)
        raise SystemExit(1)


@cli.command("schema")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write one file per schema under this directory (e.g. schemas/).",
)
def schema_cmd(out: Path | None) -> None:
    """Print or write the JSON Schemas of every event type and the projections."""
    if out is None:
        sys.stdout.buffer.write(render(generate_schemas()))
        return
    for path in write_schemas(out):
        click.echo(str(path))
