"""Workspace snapshots: which files the workspace held when a run started.

A snapshot is a manifest ``{path: sha256}`` of the workflow's directory
(its ``.gitignore`` respected; the engine's home and ``.git`` left out),
kept as ``snapshot.json`` in the run directory; its id ``snap-<12 hex>`` (of
the manifest's canonical JSON) goes into ``run.created``, and a resume
compares a fresh snapshot with it and warns when the workspace changed.

In a git repository, git's index says which files are unchanged since they
were staged (their blob ids); the SHA-256 of a blob is computed once and
remembered under the home directory, so unchanged files are not read again.
Other files (modified, untracked) are hashed.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import msgspec

from engine.items.selection import canonical_json
from engine.store.content import file_sha256
from ledger.atomic import atomic_write, make_private_dir

__all__ = ["Snapshot", "compare", "take_snapshot"]

MAX_FILES = 200_000


@dataclass
class Snapshot:
    id: str
    files: dict[str, str]
    method: str
    """``git`` (the index consulted) or ``walk``."""
    truncated: bool = False

    def to_json(self) -> bytes:
        return msgspec.json.encode(
            {"id": self.id, "method": self.method, "truncated": self.truncated, "files": self.files}
        )


def take_snapshot(workspace: Path, *, home: Path) -> Snapshot:
    workspace = workspace.resolve()
    skip = {home.resolve()}
    files: dict[str, str] | None = None
    method = "git"
    try:
        files = _from_git(workspace, home, skip)
    except (OSError, subprocess.SubprocessError, ValueError):
        files = None
    if files is None:
        method = "walk"
        files = _walk(workspace, skip)
    truncated = len(files) > MAX_FILES
    if truncated:
        files = dict(sorted(files.items())[:MAX_FILES])
    digest = hashlib.sha256(canonical_json(files)).hexdigest()
    return Snapshot(id=f"snap-{digest[:12]}", files=files, method=method, truncated=truncated)


def save_snapshot(snapshot: Snapshot, path: Path) -> None:
    atomic_write(path, snapshot.to_json())


def compare(old: dict[str, str], new: dict[str, str]) -> tuple[list[str], list[str], list[str]]:
    """(changed, added, removed) paths."""
    changed = sorted(p for p in old.keys() & new.keys() if old[p] != new[p])
    return changed, sorted(new.keys() - old.keys()), sorted(old.keys() - new.keys())


def _inside(path: Path, skip: set[Path]) -> bool:
    return any(path == s or s in path.parents for s in skip)


def _git(workspace: Path, *args: str) -> bytes:
    return subprocess.run(
        ["git", "-C", str(workspace), *args],
        capture_output=True,
        check=True,
        timeout=60,
        env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},
    ).stdout


def _from_git(workspace: Path, home: Path, skip: set[Path]) -> dict[str, str] | None:
    if not any((d / ".git").exists() for d in (workspace, *workspace.parents)):
        return None  # not in a repository: no need to ask git
    inside = _git(workspace, "rev-parse", "--is-inside-work-tree").strip()
    if inside != b"true":
        return None
    staged = _git(workspace, "ls-files", "-s", "-z")
    modified = set(_git(workspace, "ls-files", "-m", "-z").split(b"\0"))
    others = _git(workspace, "ls-files", "-o", "--exclude-standard", "-z").split(b"\0")
    known_path = home / "snapshots" / "blobs.json"
    try:
        known: dict[str, str] = msgspec.json.decode(known_path.read_bytes())
    except (OSError, msgspec.DecodeError):
        known = {}
    learned = False
    files: dict[str, str] = {}
    for entry in staged.split(b"\0"):
        if not entry:
            continue
        meta, _, name = entry.partition(b"\t")
        mode, blob, _stage = meta.split(b" ")
        path = workspace / os.fsdecode(name)
        if mode == b"160000" or _inside(path, skip) or not path.is_file():
            continue  # a submodule, the engine's home, or deleted
        key = os.fsdecode(name)
        if name in modified:
            files[key] = file_sha256(path)[0]
            continue
        blob_id = blob.decode()
        digest = known.get(blob_id)
        if digest is None:
            digest = known[blob_id] = file_sha256(path)[0]
            learned = True
        files[key] = digest
    for name in others:
        if not name:
            continue
        path = workspace / os.fsdecode(name)
        if path.is_file() and not _inside(path, skip):
            files[os.fsdecode(name)] = file_sha256(path)[0]
    if learned:
        make_private_dir(known_path.parent)
        atomic_write(known_path, msgspec.json.encode(known))
    return files


def _ignore_patterns(workspace: Path) -> list[str]:
    try:
        text = (workspace / ".gitignore").read_text(errors="replace")
    except OSError:
        return []
    return [
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.startswith("#") and not line.startswith("!")
    ]


def _ignored(relative: str, is_dir: bool, patterns: list[str]) -> bool:
    name = relative.rsplit("/", 1)[-1]
    for pattern in patterns:
        directory_only = pattern.endswith("/")
        pat = pattern.rstrip("/")
        if directory_only and not is_dir:
            continue
        if "/" in pat.lstrip("/"):
            if fnmatch.fnmatchcase(relative, pat.lstrip("/")):
                return True
        elif fnmatch.fnmatchcase(name, pat.lstrip("/")):
            return True
    return False


def _walk(workspace: Path, skip: set[Path]) -> dict[str, str]:
    """Every file under the workspace but what its root ``.gitignore`` leaves out."""
    patterns = _ignore_patterns(workspace)
    files: dict[str, str] = {}
    for root, dirs, names in os.walk(workspace):
        base = Path(root)
        rel_root = os.path.relpath(root, workspace)
        prefix = "" if rel_root == "." else rel_root + "/"
        dirs[:] = sorted(
            d
            for d in dirs
            if d != ".git"
            and not _inside(base / d, skip)
            and not _ignored(prefix + d, True, patterns)
        )
        for name in sorted(names):
            relative = prefix + name
            path = base / name
            if _ignored(relative, False, patterns) or not path.is_file() or path.is_symlink():
                continue
            try:
                files[relative] = file_sha256(path)[0]
            except OSError:
                continue
            if len(files) > MAX_FILES:
                return files
    return files
