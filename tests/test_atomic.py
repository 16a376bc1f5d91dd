"""The one atomic-write helper: whole old or whole new content, private modes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ledger.atomic import atomic_write, make_private_dir


def test_atomic_write_replaces_whole_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    atomic_write(target, b"old")
    inode = target.stat().st_ino
    atomic_write(target, b"new content")
    assert target.read_bytes() == b"new content"
    assert target.stat().st_ino != inode  # replaced by rename, never rewritten in place
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["f.json"]


def test_failed_write_keeps_old_content(tmp_path: Path) -> None:
    target = tmp_path / "f"
    atomic_write(target, b"old")

    def boom(fd: int) -> None:
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError):
        atomic_write(target, b"new", before_rename=boom)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f"]


def test_make_private_dir(tmp_path: Path) -> None:
    d = make_private_dir(tmp_path / "a" / "b" / "c")
    for p in (tmp_path / "a", tmp_path / "a" / "b", d):
        assert stat.S_IMODE(p.stat().st_mode) == 0o700
