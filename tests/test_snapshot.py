"""Workspace snapshots: a manifest with sha256, .gitignore respected, git's index used."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from engine.store import workspace as snap
from engine.store.workspace import take_snapshot


def _tree(root: Path) -> None:
    (root / "src").mkdir(parents=True)
    (root / "src" / "a.py").write_text("print('a')\n")
    (root / "README").write_text("hello\n")
    (root / "build").mkdir()
    (root / "build" / "out.bin").write_text("junk\n")
    (root / "debug.log").write_text("noise\n")
    (root / ".gitignore").write_text("build/\n*.log\n.engine/\n")


def test_walk_respects_gitignore_and_leaves_out_the_home(tmp_path: Path) -> None:
    _tree(tmp_path)
    home = tmp_path / ".engine"
    (home / "runs").mkdir(parents=True)
    (home / "runs" / "ledger.ndjson").write_text("{}\n")
    s = take_snapshot(tmp_path, home=home)
    assert s.method == "walk"
    assert sorted(s.files) == [".gitignore", "README", "src/a.py"]
    assert all(v.startswith("sha256:") for v in s.files.values())
    assert s.id.startswith("snap-") and len(s.id) == 17
    assert take_snapshot(tmp_path, home=home).id == s.id
    (tmp_path / "src" / "a.py").write_text("print('b')\n")
    changed = take_snapshot(tmp_path, home=home)
    assert changed.id != s.id
    assert snap.compare(s.files, changed.files) == (["src/a.py"], [], [])


def test_git_index_spares_unchanged_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _tree(tmp_path)
    git = ["git", "-C", str(tmp_path), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    home = tmp_path / "elsewhere-home"
    first = take_snapshot(tmp_path, home=home)
    assert first.method == "git"
    assert sorted(first.files) == [".gitignore", "README", "src/a.py"]
    walked = snap._walk(tmp_path, {home})
    assert walked == first.files  # the same sha256 either way
    hashed: list[str] = []
    real = snap.file_sha256

    def counting(path: object) -> tuple[str, int]:
        hashed.append(str(path))
        return real(path)  # type: ignore[arg-type]

    monkeypatch.setattr(snap, "file_sha256", counting)
    (tmp_path / "README").write_text("changed\n")
    (tmp_path / "new.txt").write_text("untracked\n")
    second = take_snapshot(tmp_path, home=home)
    assert sorted(Path(p).name for p in hashed) == ["README", "new.txt"]  # only these read
    assert snap.compare(first.files, second.files) == (["README"], ["new.txt"], [])
