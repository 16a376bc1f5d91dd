"""``engine worktree list|clean``: the git worktrees of a run with ``map.isolation: worktree``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from cli.app import EXIT_FAILED, Context, cli, echo_json
from cli.render import print_table
from engine.views.worktrees import IsolationStatus

if TYPE_CHECKING:  # git's modules load with the worktree commands, not with `engine status`
    from engine.git.cleanup import Cleaned, CleanReport
    from engine.git.inventory import AttemptWorktree, WorktreeList

__all__ = [
    "branch_line",
    "branch_next",
    "branch_summary",
    "worktree",
    "worktree_clean",
    "worktree_list",
]


def _sha(value: str | None) -> str:
    return value[:12] if value else "-"


def commits_text(view: AttemptWorktree) -> str:
    """An attempt's commits (and what it left uncommitted) in a few words."""
    text = "-" if view.commits is None else str(view.commits)
    if view.uncommitted:
        text += f" +{view.uncommitted} uncommitted"
    return text


def _no_isolation(run_id: str) -> str:
    return f"run {run_id} does not use isolation (map.isolation: worktree): it has no worktrees"


# --- the run's branch in the summary of run and resume, and in status -----------------


def branch_summary(iso: IsolationStatus) -> str:
    """What the run's branch holds, and where its worktree is."""
    held = f"{iso.merged} merged item{'s' if iso.merged != 1 else ''}" if iso.merged else "nothing"
    return f"run branch: {iso.branch} holds {held}; its worktree: {iso.worktree}"


def branch_next(iso: IsolationStatus, run_id: str) -> list[str]:
    """The commands that take the run's work to the user's branch, and show what is kept."""
    lines = []
    if iso.merged:
        where = f"in {iso.repository}" if iso.repository else "in your checkout"
        if iso.target_branch:
            where += f", on {iso.target_branch}"
        lines.append(f"  {iso.merge_command}        # {where}: the run's work into your branch")
    if iso.kept:
        kept = f"{iso.kept} attempt worktree{'s' if iso.kept != 1 else ''} kept"
        lines.append(f"  engine worktree list {run_id}        # {kept}, for debugging")
    return lines


def branch_line(iso: IsolationStatus, run_id: str) -> str:
    """The run's branch in ``engine status``: what it holds, what is kept."""
    line = f"branch    {iso.branch} · {iso.merged:,} item{'s' if iso.merged != 1 else ''} merged"
    if iso.kept:
        line += f" · {iso.kept:,} worktree{'s' if iso.kept != 1 else ''} kept"
        line += f" (engine worktree list {run_id})"
    return line


# --- engine worktree ------------------------------------------------------------------


@cli.group("worktree")
def worktree() -> None:
    """The git worktrees of a run with map.isolation: worktree."""


@worktree.command("list")
@click.argument("run")
@click.option("--json", "as_json", is_flag=True, help="Print the worktrees as one JSON object.")
@click.pass_obj
def worktree_list(obj: Context, run: str, as_json: bool) -> None:
    """Every worktree of a run: its own, each attempt's, and the orphans.

    The run's worktree is on the run's branch engine/RUN-ID, which holds
    every merged item's work. Each attempt's row: its item's STATUS, its
    worktree's STATE (active: created, and so a failed attempt's stays;
    committed: its merge owed; merged; conflicted), KEPT (kept for
    debugging, or removed), its COMMITS (+ changes left uncommitted), the
    MERGE commit, and the CONFLICTS. Orphans are worktrees (or directories)
    under the run's worktrees directory that no ledger record claims.
    `engine worktree clean RUN` removes the kept ones and the orphans. For a
    run without isolation it says so (exit 0). docs/worktrees.md describes
    the JSON.
    """
    from engine.git.inventory import list_worktrees  # noqa: PLC0415 - on use

    view = list_worktrees(obj.run(run))
    if as_json:
        echo_json(view)
        return
    if not view.isolation:
        click.echo(_no_isolation(view.run_id))
        return
    _print_list(view)


def _print_list(view: WorktreeList) -> None:
    run = view.run
    assert run is not None
    gone = "" if run.exists else " (removed)" if run.removed else " (missing)"
    on = f"on {run.target_branch}" if run.target_branch else "a detached HEAD"
    click.echo(f"run branch  {run.branch}  {view.merged} item(s) merged, base {_sha(run.base)}")
    click.echo(f"worktree    {run.path}{gone}")
    click.echo(f"repository  {run.repository or '-'}  ({on} when the run began)")
    if view.attempts:
        click.echo("")
        rows = [
            [
                a.item,
                str(a.attempt),
                a.item_status,
                a.state,
                "kept" if a.kept else "removed",
                commits_text(a),
                _sha(a.merge),
                a.path,
                a.branch,
                ", ".join(a.conflicts) or "-",
            ]
            for a in view.attempts
        ]
        columns = ["ITEM", "ATT", "STATUS", "STATE", "KEPT", "COMMITS"]
        columns += ["MERGE", "PATH", "BRANCH", "CONFLICTS"]
        print_table(columns, rows, text={"CONFLICTS"}, keep={"ITEM", "PATH"}, right={"ATT"})
    if view.orphans:
        click.echo("")
        click.echo(f"orphans (no ledger record claims them): {len(view.orphans)}")
        for orphan in view.orphans:
            on = f"  branch {orphan.branch}" if orphan.branch else ""
            click.echo(f"  {orphan.path}{on}")
    kept = sum(1 for a in view.attempts if a.kept)
    if kept or view.orphans:
        click.echo("")
        click.echo(f"remove them: engine worktree clean {view.run_id}")


@worktree.command("clean")
@click.argument("run")
@click.option(
    "--all",
    "everything",
    is_flag=True,
    help="Also remove the run's own worktree (never its branch).",
)
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@click.option("--json", "as_json", is_flag=True, help="Print what was done as one JSON object.")
@click.pass_obj
def worktree_clean(obj: Context, run: str, everything: bool, dry_run: bool, as_json: bool) -> None:
    """Remove a run's kept worktrees (and their branches) and its orphans.

    Kept worktrees are failed, dead or interrupted attempts' (kept for
    debugging) and any whose removal failed before. Never removed: one whose
    item is running, or whose merge is owed (engine resume merges it); and
    never the run's branch engine/RUN-ID, which holds the merged work (--all
    removes the run's worktree only; the output says how to delete the
    branch with git). Each removal the ledger knows is recorded
    (worktree.removed, reason clean) under the run's lock: exit 3 while an
    engine holds the run (--dry-run does not need it). Exit 1 when a
    worktree could not be removed (one line each on stderr; nothing recorded
    for it; --json still prints the report).
    """
    from engine.git.cleanup import clean  # noqa: PLC0415 - on use

    report = clean(obj.run(run, allow_ledger_file=False), everything=everything, dry_run=dry_run)
    failed = bool(report.failures)
    if as_json:
        echo_json(report)
    else:
        _print_clean(report, everything)
    for failure in report.failures:
        click.echo(failure.why, err=True)
    if failed:
        raise SystemExit(EXIT_FAILED)


def _what(c: Cleaned) -> str:
    if c.kind == "run":
        return f"the run's worktree {c.path}"
    owner = f"item {c.item} attempt {c.attempt}" if c.kind == "attempt" else "orphan"
    return f"{owner}: {c.path}" + (f" (branch {c.branch})" if c.branch else "")


def _print_clean(report: CleanReport, everything: bool) -> None:
    if not report.isolation:
        click.echo(_no_isolation(report.run_id) + ": nothing to clean")
        return
    verb = "would remove" if report.dry_run else "removed"
    for c in report.removed:
        click.echo(f"{verb} {_what(c)}")
    for c in report.skipped:
        click.echo(f"left {_what(c)}: {c.why}")
    if not report.removed and not report.failures:
        click.echo(f"nothing to clean in {report.run_id}")
    elif not report.dry_run:
        click.echo(f"{len(report.removed)} removed, {len(report.failures)} failed")
    if report.held_by:
        click.echo(f"note: {report.held_by}: clean refuses until it ends")
    if everything and report.branch_hint:
        click.echo(report.branch_hint)
