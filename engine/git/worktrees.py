"""The git operations of isolation: worktrees, branches, commits and merges, one call each.

Each is one or a few ``git`` commands through :class:`~engine.git.repo.Git`;
what they mean for a run (events, the merge queue, a resume) is
:mod:`engine.git.isolation`'s.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from engine.git.repo import Git, GitError

__all__ = [
    "MergeResult",
    "Workspace",
    "add_worktree",
    "broken_records",
    "commit_all",
    "commits_between",
    "dirty",
    "find_workspace",
    "forget",
    "git_path_exists",
    "head_of",
    "is_ancestor",
    "left_unfinished",
    "listed_worktrees",
    "merge",
    "merge_commit_of",
    "merge_in_progress",
    "orphan_branch",
    "put_back_stash",
    "ref",
    "remove_worktree",
    "restore",
    "restore_paths",
    "stale_locks",
    "stash_entries",
    "stray_branches",
    "work_between",
]


@dataclass(frozen=True, slots=True)
class Workspace:
    """The repository that holds a workspace, and where in it the workspace is."""

    top: Path
    """The repository's top directory (its main worktree, or the linked one the
    workspace is in)."""
    prefix: str
    """The workspace's directory relative to ``top`` ('' at the top)."""
    head: str | None
    """The commit HEAD names (None: no commit yet)."""
    branch: str | None
    """The branch checked out (None: a detached HEAD)."""
    identity: bool
    """Git knows who commits on this machine (else the engine's commits use its own)."""


async def find_workspace(git: Git, directory: Path) -> Workspace | None:
    """The repository holding ``directory``; None when it is in none."""
    found = await git.run(directory, "rev-parse", "--show-toplevel", "--show-prefix", check=False)
    if found.code != 0:
        return None
    lines = found.out.splitlines()
    top = Path(lines[0]) if lines else directory
    prefix = lines[1].strip().rstrip("/") if len(lines) > 1 else ""
    head = await git.run(top, "rev-parse", "-q", "--verify", "HEAD^{commit}", check=False)
    branch = await git.run(top, "symbolic-ref", "-q", "--short", "HEAD", check=False)
    who = await git.run(top, "var", "GIT_COMMITTER_IDENT", check=False)
    return Workspace(
        top=top,
        prefix=prefix,
        head=head.out.strip() if head.code == 0 else None,
        branch=branch.out.strip() if branch.code == 0 else None,
        identity=who.code == 0,
    )


async def ref(git: Git, repository: Path, branch: str) -> str | None:
    """The commit ``branch`` points at; None when there is no such branch."""
    found = await git.run(
        repository, "rev-parse", "-q", "--verify", f"refs/heads/{branch}^{{commit}}", check=False
    )
    return found.out.strip() if found.code == 0 else None


async def add_worktree(
    git: Git, repository: Path, path: Path, branch: str, start: str | None
) -> None:
    """A worktree at ``path`` on ``branch``: a new branch at ``start``, or (``start``
    None) the existing branch. Whatever a crash left at ``path`` is removed first."""
    if path.exists() or path.is_symlink():
        await remove_worktree(git, repository, path, None)
    path.parent.mkdir(parents=True, exist_ok=True)
    if start is None:
        await git.run(repository, "worktree", "add", "-f", str(path), branch)
    else:
        await git.run(
            repository, "worktree", "add", "-f", "--no-track", "-B", branch, str(path), start
        )


async def remove_worktree(git: Git, repository: Path, path: Path, branch: str | None) -> None:
    """The worktree at ``path`` gone (its directory and git's record of it), and ``branch``
    deleted (if given); what is already gone is not an error."""
    gone = await git.run(
        repository, "worktree", "remove", "--force", "--force", str(path), check=False
    )
    if gone.code != 0 and (path.exists() or path.is_symlink()):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    await forget(git, repository, path)
    if branch is not None:
        deleted = await git.run(repository, "branch", "-D", "-q", branch, check=False)
        if deleted.code != 0 and await ref(git, repository, branch) is not None:
            raise GitError(["branch", "-D", branch], deleted.code, deleted.err)


async def _records(git: Git, repository: Path) -> Path | None:
    """Where git keeps its records of the repository's linked worktrees."""
    found = await git.run(repository, "rev-parse", "--git-common-dir", check=False)
    if found.code != 0:
        return None
    common = Path(found.out.strip())
    return (common if common.is_absolute() else repository / common) / "worktrees"


async def forget(git: Git, repository: Path, path: Path) -> None:
    """Git's record of the worktree at ``path`` removed, if one is left (its directory
    already gone). Only that one: ``git worktree prune`` would also forget the user's
    worktrees whose directories are away for now (an unmounted disk)."""
    records = await _records(git, repository)
    for record in sorted(records.iterdir()) if records is not None and records.is_dir() else []:
        try:
            gitdir = (record / "gitdir").read_text(errors="replace").strip()
        except OSError:
            continue
        if gitdir and Path(gitdir).parent == path:
            shutil.rmtree(record, ignore_errors=True)


async def broken_records(git: Git, repository: Path, under: Path) -> list[Path]:
    """Git's records of worktrees under ``under`` (``<common>/worktrees/<name>``) that a
    killed ``git worktree add`` left half written: a ``commondir`` or ``HEAD`` missing or
    empty. Every ``git worktree`` command dies on one, and ``prune`` keeps it (locked)."""
    found = await git.run(repository, "rev-parse", "--git-common-dir", check=False)
    if found.code != 0:
        return []
    records = Path(found.out.strip())
    records = (records if records.is_absolute() else repository / records) / "worktrees"
    broken: list[Path] = []
    for record in sorted(records.iterdir()) if records.is_dir() else []:
        try:
            gitdir = (record / "gitdir").read_text(errors="replace").strip()
            if not gitdir or Path(gitdir).parent.parent != under:
                continue  # not one of these (or not known whose: left alone)
            if any(_empty(record / name) for name in ("commondir", "HEAD")):
                broken.append(record)
        except OSError:
            continue
    return broken


def _empty(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except FileNotFoundError:
        return True


@dataclass(frozen=True, slots=True)
class Listed:
    path: Path
    branch: str | None
    head: str | None


async def listed_worktrees(git: Git, repository: Path) -> list[Listed]:
    """Every worktree git knows of the repository (``git worktree list --porcelain``)."""
    out = (await git.run(repository, "worktree", "list", "--porcelain", "-z")).out
    found: list[Listed] = []
    path: Path | None = None
    branch = head = None
    for entry in [*out.split("\0"), ""]:
        if not entry:
            if path is not None:
                found.append(Listed(path, branch, head))
            path, branch, head = None, None, None
        elif entry.startswith("worktree "):
            path = Path(entry.removeprefix("worktree "))
        elif entry.startswith("branch "):
            branch = entry.removeprefix("branch ").removeprefix("refs/heads/")
        elif entry.startswith("HEAD "):
            head = entry.removeprefix("HEAD ")
    return found


async def dirty(git: Git, worktree: Path, *, untracked: str = "all") -> list[str]:
    """The paths with changes not committed, at most 100; ``untracked``: git's
    ``--untracked-files`` (``all`` each file, ``normal`` a directory once, ``no`` none)."""
    out = (
        await git.run(worktree, "status", "--porcelain", "-z", f"--untracked-files={untracked}")
    ).out
    return [entry[3:] for entry in out.split("\0") if len(entry) > 3][:100]


async def commit_all(git: Git, worktree: Path, message: str) -> list[str]:
    """Every change in ``worktree`` committed (``git add -A``), with ``message``; or, when
    a git repository was made inside it (committed, only a link to it would be kept,
    not its files), nothing committed and those directories returned."""
    others = await git.run(
        worktree, "ls-files", "--others", "--exclude-standard", "--directory", "-z"
    )
    nested = [
        name.rstrip("/")
        for name in others.out.split("\0")
        if name.endswith("/") and (worktree / name / ".git").exists()
    ]
    if nested:
        return nested
    await git.run(worktree, "add", "-A")
    await git.run(worktree, "commit", "-q", "--no-verify", "-m", message)
    return []


async def left_unfinished(git: Git, worktree: Path, branch: str) -> str | None:
    """What an attempt left that the engine must not commit or merge: a merge, rebase,
    cherry-pick or revert in progress, conflicted files, or HEAD off its branch."""
    operations = {
        "MERGE_HEAD": "a merge",
        "rebase-merge": "a rebase",
        "rebase-apply": "a rebase",
        "CHERRY_PICK_HEAD": "a cherry-pick",
        "REVERT_HEAD": "a revert",
    }
    found = await git_path_exists(git, worktree, *operations)
    if found:
        return f"{operations[found[0]]} in progress"
    listed = await git.run(worktree, "diff", "--name-only", "-z", "--diff-filter=U", check=False)
    conflicted = [name for name in listed.out.split("\0") if name]
    if conflicted:
        return f"conflicted files ({', '.join(conflicted[:5])})"
    on = await git.run(worktree, "symbolic-ref", "-q", "HEAD", check=False)
    if on.out.strip() != f"refs/heads/{branch}":
        now = on.out.strip().removeprefix("refs/heads/") or "a detached HEAD"
        return f"its branch {branch} (HEAD is now {now})"
    return None


async def head_of(git: Git, worktree: Path) -> str:
    return await git.text(worktree, "rev-parse", "HEAD")


async def commits_between(git: Git, worktree: Path, base: str, head: str) -> int:
    """Commits reachable from ``head`` and not from ``base``."""
    return int(await git.text(worktree, "rev-list", "--count", f"{base}..{head}"))


WORK_LISTED = 1000
"""At most this many commits and this many file names of an attempt's work are listed."""


@dataclass(frozen=True)
class Work:
    """An attempt's commits (newest first) and the files they touch, each list bounded."""

    commits: int
    shas: list[str]
    files: list[str]
    files_total: int


async def work_between(git: Git, worktree: Path, base: str, head: str) -> Work:
    """The commits reachable from ``head`` and not from ``base``, and the files they change."""
    text = await git.text(
        worktree, "log", "--format=%x01%H", "--name-only", "--no-renames", f"{base}..{head}"
    )
    shas: list[str] = []
    files: dict[str, None] = {}
    for line in text.splitlines():
        if line.startswith("\x01"):
            shas.append(line[1:])
        elif line:
            files.setdefault(line)
    names = list(files)
    return Work(len(shas), shas[:WORK_LISTED], names[:WORK_LISTED], len(names))


async def is_ancestor(git: Git, worktree: Path, commit: str, of: str) -> bool:
    """Whether ``commit`` is ``of`` or one of its ancestors."""
    found = await git.run(worktree, "merge-base", "--is-ancestor", commit, of, check=False)
    if found.code not in (0, 1):
        raise GitError(["merge-base", "--is-ancestor"], found.code, found.err)
    return found.code == 0


@dataclass
class MergeResult:
    merged: bool
    commit: str | None = None
    """The merge commit (merged)."""
    conflicts: list[str] = field(default_factory=list)
    """The files with conflicts (a conflict)."""
    message: str = ""
    """What git said when it refused (not merged)."""


async def merge(git: Git, worktree: Path, commit: str, message: str) -> MergeResult:
    """``git merge --no-ff commit`` in ``worktree``; a conflict is left in progress."""
    done = await git.run(
        worktree, "merge", "-q", "--no-ff", "--no-edit", "-m", message, commit, check=False
    )
    if done.code == 0:
        return MergeResult(True, commit=await head_of(git, worktree))
    listed = await git.run(worktree, "diff", "--name-only", "-z", "--diff-filter=U", check=False)
    conflicts = [name for name in listed.out.split("\0") if name][:100]
    said = " ".join((done.out + " " + done.err).split())
    return MergeResult(False, conflicts=conflicts, message=said[:1000])


async def merge_in_progress(git: Git, worktree: Path) -> bool:
    """A merge is half done in ``worktree``: its MERGE_HEAD exists.

    Asked of git (``rev-parse --git-path``): in a linked worktree ``.git`` is
    a file, and the merge's state lives in the repository's
    ``worktrees/<name>/`` directory, not under ``<worktree>/.git/``.
    """
    return bool(await git_path_exists(git, worktree, "MERGE_HEAD"))


async def git_path_exists(git: Git, worktree: Path, *names: str) -> list[str]:
    """Which of ``names`` (``MERGE_HEAD``, ``rebase-merge``, ...) exist in the worktree's
    own git directory, wherever git keeps it (one ``rev-parse --git-path`` for all)."""
    args = [arg for name in names for arg in ("--git-path", name)]
    out = (await git.text(worktree, "rev-parse", *args)).splitlines()
    return [
        name
        for name, line in zip(names, out, strict=False)
        if (Path(line) if Path(line).is_absolute() else worktree / line).exists()
    ]


async def restore(git: Git, worktree: Path, commit: str) -> None:
    """``worktree`` back at ``commit``: a merge in progress aborted, tracked files reset."""
    if await merge_in_progress(git, worktree):
        await git.run(worktree, "merge", "--abort", check=False)
    await git.run(worktree, "reset", "-q", "--hard", commit)


async def restore_paths(git: Git, worktree: Path, commit: str, head: str) -> int:
    """The paths a merge of ``head`` writes, put back in ``worktree`` (files and index) as
    ``commit`` has them: those it lacks are deleted. How many there were.

    For a merge git was killed in the middle of before it wrote MERGE_HEAD (so
    nothing to abort): what it had written of them would make the merge, done
    again, refuse ("would be overwritten by merge"). Other paths are left as
    they are (what the run's steps made there).
    """
    changed = await git.run(
        worktree, "diff", "--name-only", "--no-renames", "-z", f"{commit}...{head}"
    )
    paths = [name for name in changed.out.split("\0") if name]
    if not paths:
        return 0
    listed = await git.run(worktree, "ls-tree", "-r", "-z", "--name-only", commit)
    present = set(listed.out.split("\0"))
    kept = [name for name in paths if name in present]
    gone = [name for name in paths if name not in present]
    with tempfile.TemporaryDirectory(prefix="engine-paths-") as scratch:
        for names, command in (
            (kept, ("restore", f"--source={commit}", "--staged", "--worktree")),
            (gone, ("rm", "--cached", "-q", "--ignore-unmatch")),
        ):
            if not names:
                continue
            spec = Path(scratch) / "paths"
            spec.write_bytes(b"\0".join(os.fsencode(name) for name in names))
            await git.run(
                worktree,
                "--literal-pathspecs",
                *command,
                f"--pathspec-from-file={spec}",
                "--pathspec-file-nul",
            )
    top = worktree.resolve()
    for name in gone:
        path = worktree / name
        if path.parent.resolve().is_relative_to(top) and (path.is_file() or path.is_symlink()):
            path.unlink()
    return len(paths)


async def merge_commit_of(git: Git, worktree: Path, branch_head: str, commit: str) -> str:
    """The commit on ``branch_head``'s first-parent line that merged ``commit`` (else the head)."""
    out = await git.text(
        worktree, "rev-list", "--first-parent", "--parents", "-n", "10000", branch_head
    )
    for line in out.splitlines():
        shas = line.split()
        if commit in shas[2:]:
            return shas[0]
    return branch_head


async def stale_locks(git: Git, run_tree: Path, branch: str, run_id: str) -> list[Path]:
    """The lock files a killed git command of a run may have left (the run's lock is held
    and its leftover processes are stopped: none is in use). Only the run's own: its
    worktree's index and refs (HEAD, ORIG_HEAD, ...), and its branches' refs."""
    if not run_tree.is_dir():
        return []
    found = await git.run(
        run_tree, "rev-parse", "--absolute-git-dir", "--git-common-dir", check=False
    )
    lines = found.out.splitlines()
    if found.code != 0 or len(lines) < 2:
        return []
    own, common = Path(lines[0]), Path(lines[1])
    if not common.is_absolute():
        common = (run_tree / common).resolve()
    # ORIG_HEAD's too: a merge writes it first, and dies on its lock (every merge after).
    names = ("index", "HEAD", "ORIG_HEAD", "MERGE_HEAD", "AUTO_MERGE")
    stale = [own / f"{name}.lock" for name in names]
    stale.append(common / "refs" / "heads" / f"{branch}.lock")
    items = common / "refs" / "heads" / "engine-item" / run_id
    if items.is_dir():
        stale += list(items.glob("*.lock"))
    return stale


async def stash_entries(git: Git, repository: Path) -> list[tuple[str, str]]:
    """The repository's stash, newest first: each entry's commit and subject."""
    listed = await git.run(repository, "stash", "list", "--format=%H%x00%gs", check=False)
    entries = []
    for line in listed.out.splitlines():
        sha, _, subject = line.partition("\0")
        if sha:
            entries.append((sha, subject))
    return entries


async def put_back_stash(git: Git, repository: Path, before: list[tuple[str, str]]) -> list[str]:
    """The stash entries of ``before`` that are gone, stored again (oldest first, so the
    newest ends on top); their subjects. ``refs/stash`` is one for every worktree: an
    agent's ``git stash pop`` takes the user's entry."""
    present = {sha for sha, _ in await stash_entries(git, repository)}
    missing = [entry for entry in before if entry[0] not in present]
    for sha, subject in reversed(missing):
        await git.run(repository, "stash", "store", "-q", "-m", subject, sha)
    return [subject for _, subject in missing]


async def orphan_branch(
    git: Git, repository: Path, run_id: str, path: Path, checked_out: str | None
) -> str | None:
    """The branch that goes with an orphan worktree: the engine's one checked out there,
    or (none checked out) the engine's of its name if it exists; never a user's."""
    prefix = f"engine-item/{run_id}/"
    if checked_out is not None:
        return checked_out if checked_out.startswith(prefix) else None
    named = prefix + path.name
    return named if await ref(git, repository, named) is not None else None


async def stray_branches(git: Git, repository: Path, run_id: str, kept: set[str]) -> list[str]:
    """A run's attempt branches (``engine-item/<run-id>/``) that are neither ``kept`` nor
    checked out in a worktree."""
    refs = f"refs/heads/engine-item/{run_id}/"
    out = await git.text(repository, "for-each-ref", "--format=%(refname:short)", refs)
    listed = {w.branch for w in await listed_worktrees(git, repository)}
    return [b for b in out.splitlines() if b and b not in kept and b not in listed]
