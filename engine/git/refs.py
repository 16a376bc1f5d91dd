"""A worktree's HEAD read from its files, and item ids made safe for paths and branches.

Nothing here runs a process: a ``commit_required`` step's check costs a few
file reads, wherever the step runs.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

__all__ = ["attempt_branch", "read_head", "run_branch", "safe_name"]

# --- HEAD without running git ---------------------------------------------------------

_SHA = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?")


def _git_dir(directory: Path) -> Path | None:
    """The git directory of the repository or worktree that holds ``directory``."""
    for place in (directory, *directory.parents):
        dot = place / ".git"
        if dot.is_dir():
            return dot
        if dot.is_file():
            text = dot.read_text(errors="replace").strip()
            if text.startswith("gitdir:"):
                target = Path(text.removeprefix("gitdir:").strip())
                return target if target.is_absolute() else (place / target).resolve()
            return None
    return None


def read_head(directory: Path) -> str | None:
    """The commit HEAD names in the repository (or worktree) holding ``directory``.

    Read from the files (``HEAD``, the loose ref, ``packed-refs``): a step's
    commit check costs no process. None when there is no repository or HEAD
    names no commit yet.
    """
    try:
        git_dir = _git_dir(directory)
        if git_dir is None:
            return None
        head = (git_dir / "HEAD").read_text(errors="replace").strip()
        if _SHA.fullmatch(head):
            return head
        if not head.startswith("ref:"):
            return None
        ref = head.removeprefix("ref:").strip()
        common = git_dir
        if (git_dir / "commondir").is_file():
            common = (git_dir / (git_dir / "commondir").read_text().strip()).resolve()
        for place in (git_dir, common):
            loose = place / ref
            if loose.is_file():
                value = loose.read_text(errors="replace").strip()
                return value if _SHA.fullmatch(value) else None
        packed = common / "packed-refs"
        if packed.is_file():
            for line in packed.read_text(errors="replace").splitlines():
                sha, _, name = line.partition(" ")
                if name == ref and _SHA.fullmatch(sha):
                    return sha
    except OSError:
        return None
    return None


# --- names ------------------------------------------------------------------------------

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def safe_name(item: str) -> str:
    """An item id as one path component and branch name component.

    Letters, digits, ``_`` and ``-`` are kept, anything else becomes ``_``;
    a name that had to change (or is long) ends with 8 hex digits of the id's
    hash, so that two ids never share a name.
    """
    name = _UNSAFE.sub("_", item).strip("_-")[:60]
    if name == item and name:
        return name
    digest = hashlib.sha256(item.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{name}-{digest}" if name else digest


def run_branch(run_id: str) -> str:
    """The run's branch: ``engine/<run-id>``."""
    return f"engine/{run_id}"


def attempt_branch(run_id: str, item: str, attempt: int) -> str:
    """An attempt's branch: ``engine-item/<run-id>/<item made safe>-<attempt>``."""
    return f"engine-item/{run_id}/{safe_name(item)}-{attempt}"
