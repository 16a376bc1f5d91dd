"""``engine dlq``: the dead-letter queue of a run: list, show, retry, purge, export."""

from __future__ import annotations

import csv
import io
import sys
import time

import click
import msgspec

from cli.app import Context, cli, echo_json
from cli.render import human_duration, human_time, print_table
from cli.run_cmds import AS_JSON, JOBS, NO_PROGRESS, drive
from engine.errors import NothingSelected
from engine.git.inventory import AttemptWorktree, item_worktrees
from engine.run import RunOptions, control, resume_run
from engine.views.status import DLQItemView, dlq_entries, dlq_view, unknown_item
from ledger.times import epoch, rfc3339
from projections.items import ItemState
from projections.replay import Projections, replay

__all__ = ["dlq"]


def _since(value: str | None) -> str | None:
    """An RFC 3339 time (or a date) to compare ledger timestamps with."""
    if value is None:
        return None
    try:
        return rfc3339(epoch(value))
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not a time (use e.g. 2026-11-21 or 2026-11-21T09:30:00Z)",
            param_hint="--since",
        ) from None


def _select(
    p: Projections,
    items: tuple[str, ...],
    *,
    every: bool,
    error_type: str | None,
    signature: str | None,
    since: str | None = None,
    selectors: str = "--all, --error-type or --signature",
) -> list[DLQItemView]:
    """Dead items named, or matching the filters (``--all`` for every one)."""
    views = dlq_view(p)
    if items:
        dead = {v.item_id: v for v in views}
        missing = [i for i in items if i not in dead]
        if missing:
            where = "purged from" if all(m in p.dlq.purged for m in missing) else "not in"
            raise NothingSelected(
                f"{', '.join(missing[:5])}: {where} the dead-letter queue",
                items=missing,
                hint="see which items are: engine dlq list RUN",
            )
        views = [dead[i] for i in dict.fromkeys(items)]  # each once, in the order given
    elif not (every or error_type or signature or since):
        raise click.UsageError(f"name items, or select them with {selectors}")
    if error_type:
        views = [v for v in views if v.error_type == error_type]
    if signature:
        prefix = signature.removeprefix("sha256:")
        views = [v for v in views if v.signature.removeprefix("sha256:").startswith(prefix)]
    if since:
        views = [v for v in views if v.failed_at >= since]
    return views


@cli.group("dlq")
def dlq() -> None:
    """The dead-letter queue: items that failed for good."""


@dlq.command("list")
@click.argument("run")
@click.option("--error-type", help="Only items whose last error is of this type.")
@click.option("--signature", help="Only items with this failure signature (a prefix will do).")
@click.option("--since", help="Only items dead-lettered at or after this time (RFC 3339 or date).")
@click.option("--json", "as_json", is_flag=True, help="Print the items as JSON.")
@click.pass_obj
def dlq_list(
    obj: Context,
    run: str,
    error_type: str | None,
    signature: str | None,
    since: str | None,
    as_json: bool,
) -> None:
    """List a run's dead-lettered items (oldest first).

    Each says whether it is reprocessable (its failures look transient) and
    whether it needs review (permission, validation or corruption-like
    failures); docs/operations.md gives the rule.
    """
    p = replay(obj.run(run).ledger)
    views = _select(
        p, (), every=True, error_type=error_type, signature=signature, since=_since(since)
    )
    if as_json:
        echo_json(views)
        return
    if not views:
        click.echo("the dead-letter queue is empty" if not p.dlq.dead else "no item matches")
        return
    now = time.time()
    rows = [
        [
            v.item_id,
            str(v.attempts),
            v.error_type,
            v.signature.removeprefix("sha256:")[:12],
            "review" if v.needs_review else "retry" if v.reprocessable else "-",
            human_time(v.failed_at, now),
            v.last_error.replace("\n", " "),
        ]
        for v in views
    ]
    columns = ["ITEM", "ATT", "ERROR TYPE", "SIGNATURE", "TRIAGE", "DEAD", "ERROR"]
    print_table(columns, rows, text={"ERROR"}, keep={"ITEM"}, right={"ATT"})
    if p.dlq.purged:
        click.echo(f"({len(p.dlq.purged)} purged item(s) not shown)")


@dlq.command("show")
@click.argument("run")
@click.argument("item")
@click.option("--json", "as_json", is_flag=True, help="Print the entry as JSON.")
@click.pass_obj
def dlq_show(obj: Context, run: str, item: str, as_json: bool) -> None:
    """One dead item's whole failure history: every attempt, its error, its logs.

    Exit 2 when ITEM is not in the dead-letter queue, with one line saying
    what it is instead: not an item of the run, succeeded (and at which
    attempt), pending, waiting for a retry, running, skipped, failed without
    reaching the queue (on_item_failure: ignore or fail), or purged from it.
    With map.isolation: worktree it names the item's kept worktrees (path,
    branch, commits, state), kept for debugging until `engine worktree clean`.
    """
    ref = obj.run(run)
    p = replay(ref.ledger)
    entry = p.dlq.entry(item)
    if entry is None:
        raise _not_dead(p, item, ref.run_id)
    view = next(v for v in dlq_view(p) if v.item_id == item)
    trees = item_worktrees(ref, p, item)
    if as_json:
        data = msgspec.to_builtins(entry)
        data.update(reprocessable=view.reprocessable, needs_review=view.needs_review)
        data["worktrees"] = msgspec.to_builtins(trees)
        echo_json(data)
        return
    triage = (
        "needs review"
        if view.needs_review
        else "reprocessable"
        if view.reprocessable
        else "not transient"
    )
    click.echo(f"item      {entry.item_id}")
    click.echo(
        f"status    dead since {human_time(entry.failed_at)} ({entry.failed_at}; "
        f"{entry.reason}); {triage}"
    )
    click.echo(f"attempts  {entry.attempts}; last error {entry.error_type}: {entry.last_error}")
    for i, tree in enumerate(t for t in trees if t.kept):
        click.echo(f"{'worktree' if i == 0 else '':<10}{_kept_tree(tree)}")
    for f in entry.history:
        code = f"exit {f.exit_code}" if f.exit_code is not None else ""
        if f.signal is not None:
            code = f"signal {f.signal}"
        click.echo("")
        click.echo(
            f"attempt {f.attempt}  {human_time(f.ts)}  {f.error_type}  {code}  "
            f"took {human_duration(f.duration)}  "
            f"signature {f.signature.removeprefix('sha256:')[:12]}"
        )
        click.echo(f"  message  {f.message}")
        for name, path in (("stdout", f.stdout), ("stderr", f.stderr)):
            if path:
                click.echo(f"  {name}   {ref.run_dir / path}")
        if f.stderr_tail:
            click.echo("  stderr tail:")
            for line in f.stderr_tail.splitlines()[-20:]:
                click.echo(f"    {line}")


def _kept_tree(tree: AttemptWorktree) -> str:
    """A kept worktree of a dead item: where, which branch, what it holds."""
    commits = "? commits" if tree.commits is None else f"{tree.commits} commit"
    if tree.commits is not None and tree.commits != 1:
        commits += "s"
    if tree.uncommitted:
        commits += f" + {tree.uncommitted} uncommitted change{'s' if tree.uncommitted != 1 else ''}"
    gone = "" if tree.exists else "; its directory is gone"
    conflicts = f"; conflicts in {', '.join(tree.conflicts[:5])}" if tree.conflicts else ""
    return (
        f"{tree.path}  (attempt {tree.attempt}, branch {tree.branch}: {commits}, "
        f"{tree.state}{conflicts}{gone})"
    )


def _not_dead(p: Projections, item: str, run_id: str) -> NothingSelected:
    """Why ``item`` has no entry in the dead-letter queue, as the error that says so."""
    state = p.items.items.get(item)
    if state is None:
        message, hint = unknown_item(run_id, item, p.items.items)
        return NothingSelected(message, items=[item], hint=hint)
    if item in p.dlq.purged:
        what = "was purged from the dead-letter queue"
    else:
        what = f"{_item_status(state)}; it is not in the dead-letter queue"
    return NothingSelected(
        f"item {item} {what}",
        items=[item],
        hint=f"see its records: engine tail {run_id} --item {item} --all",
    )


def _item_status(state: ItemState) -> str:
    """Where an item that is not dead stands, in words."""
    n = state.attempts
    match state.status:
        case "succeeded":
            return f"succeeded (attempt {n})"
        case "running":
            return f"is running (attempt {n})"
        case "skipped":
            return "was skipped (a cache hit)" if state.cache_hit else "was skipped"
        case "failed":
            return f"failed (attempt {n}: {state.error_type}) and was not dead-lettered"
        case "pending" if state.retry_at:
            return f"is waiting for a retry (attempt {n + 1}, not before {state.retry_at})"
        case "pending" if state.requeued:
            return f"is back from the dead-letter queue, pending (attempt {n + 1} next)"
        case "pending" if n:
            return f"is pending (attempt {n + 1} next)"
        case "pending":
            return "is pending (not started yet)"
    return f"is {state.status}"


@dlq.command("retry")
@click.argument("run")
@click.argument("items", nargs=-1)
@click.option("--all", "every", is_flag=True, help="Every item in the dead-letter queue.")
@click.option("--error-type", help="Items whose last error is of this type.")
@click.option("--signature", help="Items with this failure signature (a prefix will do).")
@JOBS
@AS_JSON
@NO_PROGRESS
@click.pass_obj
def dlq_retry(
    obj: Context,
    run: str,
    items: tuple[str, ...],
    every: bool,
    error_type: str | None,
    signature: str | None,
    jobs: int | None,
    as_json: bool,
    no_progress: bool,
) -> None:
    """Run dead items again (named, or selected by filter).

    Each comes back with `item.requeued`; attempt numbers go on from the
    ledger; one that succeeds leaves the DLQ. The run resumes for them (and
    for anything else it had left), so its lock is taken: exit 3 if an
    engine holds it.
    """
    ref = obj.run(run, allow_ledger_file=False)
    selected = _select(
        replay(ref.ledger), items, every=every, error_type=error_type, signature=signature
    )
    if not selected:
        raise NothingSelected(
            f"no dead item of {ref.run_id} matches",
            items=list(items),
            hint=f"see them: engine dlq list {ref.run_id}",
        )
    options = RunOptions(max_parallel=jobs, requeue=[v.item_id for v in selected])
    drive(obj, lambda o: resume_run(ref.run_dir, o), options, as_json, no_progress)


@dlq.command("purge")
@click.argument("run")
@click.argument("items", nargs=-1)
@click.option("--all", "every", is_flag=True, help="Every item in the dead-letter queue.")
@click.option("--json", "as_json", is_flag=True, help="Print the purged items as JSON.")
@click.pass_obj
def dlq_purge(obj: Context, run: str, items: tuple[str, ...], every: bool, as_json: bool) -> None:
    """Hide dead items from the DLQ (a `dlq.purged` event; no ledger line is deleted).

    Takes the run's lock to write the event: exit 3 if an engine holds it.
    """
    ref = obj.run(run, allow_ledger_file=False)
    p = replay(ref.ledger)
    selected = _select(p, items, every=every, error_type=None, signature=None, selectors="--all")
    if not selected:
        if as_json:
            echo_json({"run_id": ref.run_id, "purged": []})
        else:
            click.echo("the dead-letter queue is empty: nothing to purge")
        return
    control.purge(ref, [v.item_id for v in selected], control.who())
    if as_json:
        echo_json({"run_id": ref.run_id, "purged": [v.item_id for v in selected]})
        return
    click.echo(f"purged {len(selected)} item(s) from the dead-letter queue of {ref.run_id}")


EXPORT_COLUMNS = (
    "item_id",
    "attempts",
    "error_type",
    "signature",
    "last_error",
    "failed_at",
    "reason",
    "reprocessable",
    "needs_review",
)


@dlq.command("export")
@click.argument("run")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "csv"]),
    default="jsonl",
    show_default=True,
    help="jsonl: one entry a line, with its whole history; csv: one row an item.",
)
@click.pass_obj
def dlq_export(obj: Context, run: str, fmt: str) -> None:
    """Write the dead-letter queue to standard output."""
    p = replay(obj.run(run).ledger)
    views = {v.item_id: v for v in dlq_view(p)}
    if fmt == "jsonl":
        encoder = msgspec.json.Encoder()
        for entry in dlq_entries(p):
            data = msgspec.to_builtins(entry)
            view = views[entry.item_id]
            data.update(reprocessable=view.reprocessable, needs_review=view.needs_review)
            sys.stdout.buffer.write(encoder.encode(data) + b"\n")
        return
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(EXPORT_COLUMNS)
    for view in views.values():
        writer.writerow([getattr(view, c) for c in EXPORT_COLUMNS])
    click.echo(out.getvalue(), nl=False)
