"""Bad input gets one clear line and exit 2, never a traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import ENGINE


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["replay", "nope"], "no run 'nope' under"),
        (["replay", "latest"], "no runs under"),
        (["tail", "./missing-dir/"], "no such run directory or ledger file"),
        (["audit", "verify", "nope"], "no run 'nope' under"),
        (["replay", "x", "--until", "-1"], "Invalid value for '--until'"),
    ],
)
def test_bad_input(tmp_path: Path, args: list[str], message: str) -> None:
    proc = subprocess.run(
        [ENGINE, "--home", str(tmp_path), *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_not_a_run_directory(tmp_path: Path) -> None:
    proc = subprocess.run(
        [ENGINE, "replay", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 2
    expected = (
        f"engine: error: {tmp_path}: not a run directory (no ledger.ndjson) "
        "(pass a run id, `latest`, or a run directory)\n"
    )
    assert proc.stderr == expected
