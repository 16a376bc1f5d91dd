"""Isolation: a git worktree per attempt, merged into the run's branch one at a time.

The run's branch ``engine/<run-id>`` starts at the workspace's HEAD; the
run's worktree (``<home>/worktrees/<run-id>/run``) is where setup, reduce,
``on_conflict`` and ``merge`` steps run. Each attempt gets a worktree of its
own (``<home>/worktrees/<run-id>/<item>-<attempt>``) on the branch
``engine-item/<run-id>/<item>-<attempt>``, forked from the run branch's head
when it is dispatched. The user's checkout is never touched: only the
repository's refs and worktree records change.

A successful attempt *lands* (:meth:`Isolation.land`): what it left
uncommitted is committed (or refused), ``worktree.committed`` records its
head together with the success it will have, and under the merge lock its
head is merged (``git merge --no-ff``) into the run's worktree. The item
succeeds in the same append as ``worktree.merged``; a conflict is recorded
(``worktree.conflicted``), handed to ``on_conflict`` and, unresolved,
aborted: the attempt fails ``merge_conflict``.

The order makes a crash harmless (:mod:`engine.run.recovery` finishes it):
a merge owed but not recorded is either found done (its head already an
ancestor of the run branch: recorded, not repeated) or done again after a
half-done one is aborted.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from engine.exec.executor import AttemptRequest
from engine.git import worktrees as wt
from engine.git.refs import attempt_branch, read_head, run_branch, safe_name
from engine.git.repo import Git, GitError
from engine.home import worktrees_dir
from ledger.events import (
    Event,
    ItemSucceeded,
    WorktreeCommitted,
    WorktreeConflicted,
    WorktreeCreated,
    WorktreeMerged,
    WorktreeRemoved,
)
from projections.replay import Projections
from projections.worktrees import AttemptTree

__all__ = ["ConflictSteps", "Isolation", "Landing"]

ConflictSteps = Callable[[str, int, dict[str, Any]], Awaitable[bool]]
"""Runs the workflow's ``on_conflict`` steps for (item, attempt, ``${merge.*}``); whether
they all succeeded (the merge's state in git says whether they resolved it)."""


@dataclass
class Landing:
    """How a successful attempt's work landed: merged (``events``: the success to
    append), or refused (``failure``: its error type and message)."""

    events: list[Event]
    failure: tuple[str, str] | None = None


class Isolation:
    """The worktrees of one run, and its merge queue."""

    def __init__(
        self,
        *,
        git: Git,
        home: Path,
        run_id: str,
        top: Path,
        prefix: str,
        projections: Projections,
        append: Callable[[list[Event]], Awaitable[None]],
        warn: Callable[[str], None],
        commit_leftovers: bool = True,
        on_conflict: ConflictSteps | None = None,
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        self.git = git
        self.run_id = run_id
        self.top = top
        """The workspace's repository (its top directory)."""
        self.prefix = prefix
        """The workspace's place in it: steps run in the same place in every worktree."""
        self.root = worktrees_dir(home, run_id)
        self.path = self.root / "run"
        """The run's worktree."""
        self.branch = run_branch(run_id)
        self.p = projections
        self.append = append
        self.warn = warn
        self.commit_leftovers = commit_leftovers
        self.on_conflict = on_conflict
        self.stopping = stopping
        """The run is stopping: a conflict then interrupts the attempt, not fails it."""
        self.stash: list[tuple[str, str]] | None = None
        """The workspace's stash entries (commit, subject) when this engine began."""
        self.lock = asyncio.Lock()
        """One merge at a time (asyncio's lock is fair: merges go in the order asked)."""
        self.admin = asyncio.Lock()
        """One worktree added or removed at a time: git's own records of them are not safe
        to change side by side ("failed to read .git/worktrees/<name>/commondir")."""

    def workdir(self, tree: Path) -> Path:
        """Where steps run in a worktree: the workspace's place in it."""
        return tree / self.prefix if self.prefix else tree

    # --- the run's worktree ------------------------------------------------------------

    async def open(self, base: str | None, target_branch: str | None) -> list[Event]:
        """The run's branch and worktree, created (a new run: ``base`` is the workspace's
        HEAD) or found again (a resume: made again from the branch if it was removed)."""
        await self.guard_stash()
        known = self.p.worktrees.run
        if known is None:
            assert base is not None
            await wt.add_worktree(self.git, self.top, self.path, self.branch, base)
            return self._run_tree_made(base, str(self.top), target_branch)
        if await wt.ref(self.git, self.top, self.branch) is None:
            raise GitError(
                ["rev-parse", self.branch],
                None,
                f"the run's branch {self.branch} is gone from {self.top}: its merged work "
                "is lost to this run (restore the branch, e.g. from the reflog, to resume)",
            )
        if not (self.path / ".git").exists():
            await wt.add_worktree(self.git, self.top, self.path, self.branch, None)
            # Made again (``worktree clean --all`` removed it): recorded, as it was first.
            return self._run_tree_made(known.base, known.repository, known.target_branch)
        if await wt.merge_in_progress(self.git, self.path):
            # A merge a dead engine left half done: aborted here, done again by the resume.
            await wt.restore(self.git, self.path, await wt.head_of(self.git, self.path))
        return []

    def _run_tree_made(
        self, base: str, repository: str | None, target_branch: str | None
    ) -> list[Event]:
        """The run's worktree just made: its place for steps there, its record."""
        self.workdir(self.path).mkdir(parents=True, exist_ok=True)
        return [
            WorktreeCreated(
                path=str(self.path),
                branch=self.branch,
                base=base,
                repository=repository,
                target_branch=target_branch,
            )
        ]

    async def clear_stale_locks(self) -> None:
        """Lock files a killed git command of this run left (:func:`wt.stale_locks`)."""
        for path in await wt.stale_locks(self.git, self.path, self.branch, self.run_id):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                self.warn(f"engine: removed {path}, left by a git command the engine was killed in")

    def merge_context(self, target_branch: str | None) -> dict[str, Any]:
        """``${merge.*}`` without the conflict's files."""
        return {
            "repository": str(self.top),
            "worktree": str(self.workdir(self.path)),
            "source_branch": self.branch,
            "target_branch": target_branch or "",
        }

    # --- an attempt's worktree ---------------------------------------------------------

    async def prepare(self, plans: Sequence[tuple[str, int]]) -> tuple[list[Event], dict[str, str]]:
        """Worktrees for attempts about to be dispatched: their ``worktree.created``, and
        why any could not be made (by item)."""
        await self.guard_stash()
        base = read_head(self.path) or await wt.head_of(self.git, self.path)
        failed: dict[str, str] = {}

        async def one(item: str, attempt: int) -> Event | None:
            path = self.root / f"{safe_name(item)}-{attempt}"
            branch = attempt_branch(self.run_id, item, attempt)
            try:
                await wt.add_worktree(self.git, self.top, path, branch, base)
                # The workspace's place may be a directory the commit does not have yet.
                self.workdir(path).mkdir(parents=True, exist_ok=True)
            except (GitError, OSError) as exc:
                failed[item] = f"cannot create the attempt's worktree: {exc}"
                return None
            return WorktreeCreated(
                item=item, attempt=attempt, path=str(path), branch=branch, base=base
            )

        async with self.admin:
            made = [await one(item, attempt) for item, attempt in plans]
        return [event for event in made if event is not None], failed

    def request(self, request: AttemptRequest) -> AttemptRequest:
        """The attempt's request with its worktree: where it runs, and its variables."""
        tree = self.p.worktrees.attempts[(request.item_id, request.attempt)]
        path = Path(tree.path)
        return dataclasses.replace(
            request,
            cwd=self.workdir(path),
            worktree=path,
            env={**request.env, "ENGINE_WORKTREE": str(path), "ENGINE_RUN_BRANCH": self.branch},
        )

    def tree(self, item: str, attempt: int) -> AttemptTree:
        return self.p.worktrees.attempts[(item, attempt)]

    def attempt_dir(self, item: str, attempt: int) -> Path:
        """Where the attempt's steps work (their artifacts are found there)."""
        return self.workdir(Path(self.tree(item, attempt).path))

    # --- landing a success -------------------------------------------------------------

    async def land(self, item: str, attempt: int, events: list[Event]) -> Landing:
        """A successful attempt's work committed, merged, and its success to record.

        ``events``: what its success records (``item.succeeded`` among them). An
        attempt that made no commit and left nothing merges nothing.
        """
        await self.guard_stash()
        tree = self.tree(item, attempt)
        path = Path(tree.path)
        unfinished = await wt.left_unfinished(self.git, path, tree.branch)
        if unfinished is not None:
            return Landing(
                [], ("validation_failed", f"the attempt left {unfinished}: its worktree is kept")
            )
        left = await wt.dirty(self.git, path)
        if left and not self.commit_leftovers:
            shown = ", ".join(left[:5]) + (f" and {len(left) - 5} more" if len(left) > 5 else "")
            return Landing(
                [],
                (
                    "validation_failed",
                    f"the attempt left changes it did not commit ({shown}) and "
                    "map.commit_leftovers is false",
                ),
            )
        if left:
            message = f"engine: commit what item {item} attempt {attempt} left uncommitted"
            nested = await wt.commit_all(self.git, path, _message(message))
            if nested:
                return Landing(
                    [],
                    (
                        "validation_failed",
                        f"the attempt left a git repository inside its worktree "
                        f"({', '.join(nested[:5])}): committed, its files would be lost "
                        "(only a link to it is kept); its worktree is kept",
                    ),
                )
        head = await wt.head_of(self.git, path)
        work = await wt.work_between(self.git, path, tree.base, head)
        if work.commits == 0:
            return Landing(events)
        success = next(e for e in events if isinstance(e, ItemSucceeded))
        before = [e for e in events if e is not success]
        await self.append(
            [
                *before,
                WorktreeCommitted(
                    item=item,
                    attempt=attempt,
                    branch=tree.branch,
                    head=head,
                    commits=work.commits,
                    shas=work.shas,
                    files=work.files,
                    files_total=work.files_total,
                    leftovers=bool(left),
                    outcome=success,
                ),
            ]
        )
        return await self.merge_owed(self.p.worktrees.owed[item])

    async def merge_owed(self, owed: WorktreeCommitted, *, resuming: bool = False) -> Landing:
        """Merge a committed attempt's head (its turn in the merge queue), or find it merged.

        ``resuming``: a dead engine owed it, and may have been killed in its merge:
        what that merge had written of its paths in the run's worktree is put back
        first (:func:`~engine.git.worktrees.restore_paths`).
        """
        async with self.lock:
            run_head = await wt.head_of(self.git, self.path)
            found = await self._found(owed, run_head)
            if found is not None:
                return found
            if resuming and await wt.dirty(self.git, self.path):
                await wt.restore_paths(self.git, self.path, run_head, owed.head)
            merged = WorktreeMerged(
                item=owed.item, attempt=owed.attempt, branch=owed.branch, head=owed.head, merge=""
            )
            message = _message(
                f"engine: merge item {_line(owed.item)} (attempt {owed.attempt})\n\n"
                f"Engine-Run: {self.run_id}\nEngine-Item: {_line(owed.item)}\n"
                f"Engine-Attempt: {owed.attempt}"
            )
            result = await wt.merge(self.git, self.path, owed.head, message)
            if result.merged:
                assert result.commit is not None
                return Landing([msgspec.structs.replace(merged, merge=result.commit), owed.outcome])
            return await self._conflict(owed, run_head, result)

    async def guard_stash(self) -> None:
        """The workspace's stash entries an attempt took, put back (:func:`wt.put_back_stash`)."""
        if self.stash is None:
            self.stash = await wt.stash_entries(self.git, self.top)
            return
        for subject in await wt.put_back_stash(self.git, self.top, self.stash):
            self.warn(f"engine: an attempt took the stash entry {subject!r}: put back")

    async def found_merged(
        self, owed: WorktreeCommitted, resolved_by: str | None = None
    ) -> Landing | None:
        """The attempt's head found in the run's branch already (a merge done, its record
        not made): its ``worktree.merged`` (``found``) and success; None when it is not."""
        async with self.lock:
            return await self._found(owed, await wt.head_of(self.git, self.path), resolved_by)

    async def _found(
        self, owed: WorktreeCommitted, run_head: str, resolved_by: str | None = None
    ) -> Landing | None:
        if not await wt.is_ancestor(self.git, self.path, owed.head, run_head):
            return None
        commit = await wt.merge_commit_of(self.git, self.path, run_head, owed.head)
        found = WorktreeMerged(
            item=owed.item,
            attempt=owed.attempt,
            branch=owed.branch,
            head=owed.head,
            merge=commit,
            resolved_by=resolved_by,
            found=True,
        )
        return Landing([found, owed.outcome])

    async def _conflict(
        self, owed: WorktreeCommitted, run_head: str, result: wt.MergeResult
    ) -> Landing:
        """A merge git refused: recorded, given to ``on_conflict``, else aborted."""
        await self.append(
            [
                WorktreeConflicted(
                    item=owed.item,
                    attempt=owed.attempt,
                    branch=owed.branch,
                    head=owed.head,
                    files=result.conflicts,
                )
            ]
        )
        if self.on_conflict is not None and result.conflicts and not self.stopping():
            target = self.p.worktrees.run.target_branch if self.p.worktrees.run else None
            context = {
                **self.merge_context(target),
                "source_branch": owed.branch,
                "target_branch": self.branch,
                "commits": owed.commits,
                "files": result.conflicts,
            }
            await self.on_conflict(owed.item, owed.attempt, context)
            now = await wt.head_of(self.git, self.path)
            if (
                now != run_head
                and not await wt.merge_in_progress(self.git, self.path)
                and await wt.is_ancestor(self.git, self.path, owed.head, now)
                and not await wt.dirty(self.git, self.path, untracked="no")
            ):
                merged = WorktreeMerged(
                    item=owed.item,
                    attempt=owed.attempt,
                    branch=owed.branch,
                    head=owed.head,
                    merge=now,
                    resolved_by="on_conflict",
                )
                return Landing([merged, owed.outcome])
        await wt.restore(self.git, self.path, run_head)
        if self.stopping():  # a cancel or a signal: not the attempt's fault
            return Landing([], ("interrupted", "stopped while its merge conflict was handled"))
        files = ", ".join(result.conflicts[:10]) or result.message[:300]
        return Landing(
            [], ("merge_conflict", f"merging {owed.branch} into {self.branch} conflicts: {files}")
        )

    # --- cleanup -----------------------------------------------------------------------

    async def remove(self, trees: Sequence[AttemptTree], reason: str) -> list[Event]:
        """Remove attempts' worktrees and branches; their ``worktree.removed``.

        A failure is said (one line) and leaves that worktree kept: it never
        turns what was done into a failure.
        """
        events: list[Event] = []
        for tree in trees:
            try:
                async with self.admin:
                    await wt.remove_worktree(self.git, self.top, Path(tree.path), tree.branch)
            except (GitError, OSError) as exc:
                self.warn(f"engine: cannot remove the worktree {tree.path}: {exc} (kept)")
                continue
            events.append(
                WorktreeRemoved(
                    item=tree.item,
                    attempt=tree.attempt,
                    path=tree.path,
                    branch=tree.branch,
                    reason=reason,
                )
            )
        return events

    async def settle_item(self, item: str) -> None:
        """An item succeeded: its attempts' worktrees removed, recorded."""
        trees = [tree for tree in self.p.worktrees.of_item(item) if not tree.removed]
        if trees:
            reason = "merged" if item in self.p.worktrees.merged else "succeeded"
            events = await self.remove(trees, reason)
            if events:
                await self.append(events)

    async def orphans(self) -> list[Path]:
        """Worktrees git knows under this run's directory that the ledger does not claim."""
        claimed = {Path(tree.path) for tree in self.p.worktrees.attempts.values()}
        claimed.add(self.path)
        listed = await wt.listed_worktrees(self.git, self.top)
        found = {w.path for w in listed if w.path.parent == self.root and w.path not in claimed}
        if self.root.is_dir():
            found |= {d for d in self.root.iterdir() if d not in claimed}
        return sorted(found)

    async def remove_orphans(self) -> int:
        """Orphans removed (and their branches); how many.

        Git's records of this run's worktrees that a killed ``git worktree add``
        left half written go first: every ``git worktree`` command dies on one.
        """
        async with self.admin:
            for record in await wt.broken_records(self.git, self.top, self.root):
                await asyncio.to_thread(shutil.rmtree, record, True)
                self.warn(f"engine: removed {record}, left half written by a git command")
        removed = 0
        try:
            orphans = await self.orphans()
        except GitError as exc:
            self.warn(f"engine: cannot list the run's worktrees: {exc} (orphans kept)")
            return 0
        listed = {w.path: w.branch for w in await wt.listed_worktrees(self.git, self.top)}
        for path in orphans:
            branch = await wt.orphan_branch(self.git, self.top, self.run_id, path, listed.get(path))
            try:
                async with self.admin:
                    await wt.remove_worktree(self.git, self.top, path, branch)
            except (GitError, OSError) as exc:
                self.warn(f"engine: cannot remove the orphan worktree {path}: {exc}")
                continue
            removed += 1
        kept = {tree.branch for tree in self.p.worktrees.kept()}
        for branch in await wt.stray_branches(self.git, self.top, self.run_id, kept):
            deleted = await self.git.run(self.top, "branch", "-D", "-q", branch, check=False)
            if deleted.code != 0:
                self.warn(f"engine: cannot delete the branch {branch}: {deleted.err.strip()}")
        return removed


def _line(text: str) -> str:
    """An item id on one line of a commit message (no trailer of its own)."""
    return " ".join(text.splitlines())


def _message(text: str) -> str:
    """A commit message with no control character but newlines, at most 4 KiB."""
    clean = "".join(c if c == "\n" or c >= " " else " " for c in text)
    return clean[:4096]
