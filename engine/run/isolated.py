"""A run with ``map.isolation: worktree``: its worktrees opened, its merges settled.

* :func:`check_workspace`: before a new run is created, the workspace must
  be in a git repository with a commit (else exit 2, nothing created);
* :func:`open_isolation`: the run's branch and worktree created (a new
  run) or found again (a resume), and the run's :class:`Isolation` set up,
  its ``on_conflict`` steps wired to the step runner;
* :func:`settle_merges`: on resume, the merges a dead engine owed: found
  done (recorded) or done again; then the worktrees no longer needed
  (items that succeeded, orphans) removed;
* :func:`merge_variables`: ``${merge.*}`` for the ``merge`` steps.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from engine.errors import IsolationError
from engine.git import worktrees as wt
from engine.git.isolation import Isolation
from engine.git.repo import Git, GitError, git_environment
from engine.map.outcomes import failure_events, machine_resources
from engine.run.context import RunContext
from engine.run.loading import in_thread
from engine.run.steps import run_steps
from ledger import LEDGER_NAME, LedgerReader
from ledger.events import WorktreeCommitted

__all__ = ["check_workspace", "merge_variables", "open_isolation", "settle_merges"]


def isolated(run: RunContext) -> bool:
    return run.spec.map is not None and run.spec.map.isolation == "worktree"


async def check_workspace(run: RunContext) -> wt.Workspace:
    """The workspace's repository, or :class:`IsolationError` saying why isolation cannot work."""
    directory = run.loaded.directory
    git = Git(git_environment(run.process_env()))
    try:
        found = await wt.find_workspace(git, directory)
    except GitError as exc:
        raise IsolationError(
            f"map.isolation: worktree: {exc}", path=str(directory), hint="is git installed?"
        ) from None
    if found is None:
        raise IsolationError(
            f"map.isolation: worktree needs the workspace to be a git repository: "
            f"{directory} is not in one",
            path=str(directory),
            hint="run `git init` and commit there, or set map.isolation: none",
        )
    if found.head is None:
        raise IsolationError(
            f"map.isolation: worktree: the repository {found.top} has no commit yet "
            "(the run's branch starts from the workspace's HEAD)",
            path=str(found.top),
            hint="commit once, e.g. `git commit --allow-empty -m start`",
        )
    return found


async def open_isolation(run: RunContext, *, resuming: bool = False) -> None:
    """The run's worktree ready and ``run.isolation`` set (a new run or a resume: then
    the lock files of git commands the dead engine left killed are removed first)."""
    spec = run.spec.map
    assert spec is not None
    known = run.p.worktrees.run
    found = await check_workspace(run)
    if known is not None and known.repository and Path(known.repository) != found.top:
        raise IsolationError(
            f"the run's repository was {known.repository}, the workspace is now in {found.top}",
            path=str(found.top),
            hint="resume the run from where it began",
        )
    git = Git(git_environment(run.process_env()))
    git.identity(not found.identity)
    isolation = Isolation(
        git=git,
        home=run.run_dir.parent.parent,
        run_id=run.run_id,
        top=found.top,
        prefix=found.prefix if spec.work_at == "workflow" else "",
        projections=run.p,
        append=run.append,
        warn=run.options.warn,
        commit_leftovers=spec.commit_leftovers,
        on_conflict=_conflict_runner(run) if spec.on_conflict else None,
        stopping=lambda: run.stopping,
    )
    try:
        if resuming:
            await isolation.clear_stale_locks()
        events = await isolation.open(found.head, found.branch)
    except GitError as exc:
        raise IsolationError(str(exc), path=str(isolation.path)) from None
    if events:
        await run.append(events)
    if known is None:
        _ignore_home(run, found.top)
        await _say_uncommitted(run, git, found)
    run.isolation = isolation


def _ignore_home(run: RunContext, top: Path) -> None:
    """A home inside the repository ignored by git (a ``.gitignore`` of its own, ``*``):
    the runs' worktrees in it are not taken for the user's files by ``git add -A``."""
    home = run.run_dir.parent.parent.resolve()
    marker = home / ".gitignore"
    if home.is_relative_to(top.resolve()) and not marker.exists():
        with contextlib.suppress(OSError):
            marker.write_text("# the engine's home: runs, stores and worktrees\n*\n")


async def _say_uncommitted(run: RunContext, git: Git, found: wt.Workspace) -> None:
    """One line when the workspace has changes its HEAD lacks (the engine's home aside):
    the worktrees start from HEAD, without them."""
    home = run.run_dir.parent.parent.resolve()
    left = [
        name
        for name in await wt.dirty(git, found.top, untracked="normal")
        if not (found.top / name).resolve().is_relative_to(home)
    ]
    if left:
        run.options.warn(
            f"engine: the workspace has {len(left)} uncommitted change"
            f"{'s' if len(left) > 1 else ''} ({', '.join(left[:3])}"
            f"{', ...' if len(left) > 3 else ''}): the run's worktrees start from its HEAD "
            f"{(found.head or '')[:12]} without them"
        )


def _conflict_runner(run: RunContext) -> Any:
    """The ``on_conflict`` steps, run in the run's worktree with ``${merge.*}``."""
    spec = run.spec.map
    assert spec is not None

    async def resolve(item: str, attempt: int, merge: dict[str, Any]) -> bool:
        state = run.p.items.items.get(item)
        e = run.values.enqueued.get(item)
        context = {
            **run.context,
            "item": run.stored(e.value, e.value_ref) if e is not None else None,
            "item_id": item,
            "item_index": state.index if state is not None else 0,
            "item_total": len(run.p.items.items),
            "attempt": attempt,
            "merge": merge,
        }
        conflicts = sum(1 for t in run.p.worktrees.attempts.values() if t.conflicts)
        failure = await run_steps(
            run,
            "on_conflict",
            list(spec.on_conflict),
            hold=run.hold,
            context=context,
            item=item,
            run_as=conflicts,
        )
        return failure is None

    return resolve


async def settle_merges(run: RunContext) -> None:
    """On resume: the merges a dead engine owed, finished; worktrees no longer needed removed.

    An owed merge whose head is already in the run's branch is recorded (not
    repeated); one that is not is done now (a half-done one was aborted when
    the run's worktree was opened). Its item's success (or its conflict's
    failure) is recorded as the live engine would have. A merge done whose
    success is not recorded (a conflict the workflow's ``on_conflict`` steps
    had committed, an append cut short after ``worktree.merged``) gets its
    success: the item is not run and merged again.
    """
    isolation = run.isolation
    assert isolation is not None
    try:
        await _settle_owed(run, isolation)
        await _settle_merged(run, isolation)
    except GitError as exc:
        raise IsolationError(
            f"cannot finish the merges the stopped engine owed: {exc}",
            path=str(isolation.path),
            hint=f"see `git -C {isolation.path} status`; once git works there, resume again",
        ) from None
    for state in run.p.items.items.values():
        if state.status in ("succeeded", "skipped"):
            await isolation.settle_item(state.item)
    await isolation.remove_orphans()


async def _settle_owed(run: RunContext, isolation: Isolation) -> None:
    """Owed merges of attempts a dead engine left running: found done, or done now."""
    spec = run.spec.map
    assert spec is not None
    for item, owed in list(run.p.worktrees.owed.items()):
        state = run.p.items.items.get(item)
        if state is None or state.status != "running" or state.attempts != owed.attempt:
            continue
        landing = await isolation.merge_owed(owed, resuming=True)
        if landing.failure is None:
            await run.append(landing.events)
        else:
            kind, message = landing.failure
            await run.append(
                failure_events(
                    spec,
                    item,
                    owed.attempt,
                    kind,
                    message,
                    now=run.options.clock(),
                    resources=machine_resources(),
                )
            )


async def _settle_merged(run: RunContext, isolation: Isolation) -> None:
    """Attempts a dead engine left running whose merge is done but whose success is not
    recorded: a ``worktree.merged`` recorded without the success appended with it (the
    append cut short), or a conflict ``on_conflict`` had resolved and committed (found
    in the run's branch). Their success is recorded: the item is not run again."""
    done: dict[tuple[str, int], str] = {}
    for state in run.p.items.items.values():
        tree = run.p.worktrees.attempts.get((state.item, state.attempts))
        if state.status == "running" and tree and tree.state in ("merged", "conflicted"):
            done[(state.item, state.attempts)] = tree.state
    if not done:
        return
    ledger = run.run_dir / LEDGER_NAME
    committed = await in_thread(lambda: _committed(ledger, set(done)))
    for owed in committed:
        if done[(owed.item, owed.attempt)] == "merged":
            await run.append([owed.outcome])
            continue
        landing = await isolation.found_merged(owed, resolved_by="on_conflict")
        if landing is not None:
            await run.append(landing.events)


def _committed(ledger: Path, attempts: set[tuple[str, int]]) -> list[WorktreeCommitted]:
    """The ``worktree.committed`` records of ``attempts`` (the success each was to have)."""
    found: dict[tuple[str, int], WorktreeCommitted] = {}
    for record in LedgerReader(ledger).records():
        data = record.data
        if isinstance(data, WorktreeCommitted) and (data.item, data.attempt) in attempts:
            found[(data.item, data.attempt)] = data
    return list(found.values())


async def merge_variables(run: RunContext) -> dict[str, Any]:
    """``${merge.*}`` for the ``merge`` steps: the run's branch into the workspace's."""
    isolation = run.isolation
    assert isolation is not None
    tree = run.p.worktrees.run
    target = tree.target_branch if tree is not None else None
    variables = {**isolation.merge_context(target), "files": []}
    base = target or (tree.base if tree is not None else isolation.branch)
    try:
        variables["commits"] = await wt.commits_between(
            isolation.git, isolation.path, base, isolation.branch
        )
    except (GitError, ValueError):
        variables["commits"] = 0
    return variables
