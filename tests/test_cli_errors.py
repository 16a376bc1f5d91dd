"""Bad input gets one clear line and exit 2, never a traceback (with --debug, the
traceback first and the same exit code); global options after the subcommand."""

from __future__ import annotations

import json
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


def _engine(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ENGINE, *args], capture_output=True, text=True, check=False, cwd=cwd, timeout=60
    )


@pytest.mark.parametrize(
    "args",
    [
        ["--debug", "status", "nope"],
        ["status", "nope", "--debug"],
        ["dlq", "list", "nope", "--debug"],
    ],
)
def test_debug_shows_the_traceback_and_keeps_the_exit_code(tmp_path: Path, args: list[str]) -> None:
    plain = _engine("--home", str(tmp_path), *[a for a in args if a != "--debug"], cwd=tmp_path)
    debug = _engine("--home", str(tmp_path), *args, cwd=tmp_path)
    assert plain.returncode == debug.returncode == 2
    assert "Traceback" not in plain.stderr
    assert "Traceback (most recent call last)" in debug.stderr and "RunNotFound" in debug.stderr
    assert debug.stderr.splitlines()[-1] == plain.stderr.strip()  # the same one line, last


def test_global_options_after_the_subcommand(tmp_path: Path) -> None:
    home = tmp_path / "elsewhere"
    (tmp_path / "wf.yml").write_text(
        "name: g\nmap: {items: [a], agent_template: [{run: 'true'}]}\n"
    )
    run = _engine("run", "wf.yml", "--run-id", "g1", "--home", str(home), "--json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["run_dir"] == str(home / "runs" / "g1")
    assert not (tmp_path / ".engine").exists()  # the default home was never used
    for args in (
        ["status", "latest", "--home", str(home), "--json"],
        ["status", "latest", "--debug", f"--home={home}", "--json"],
        ["dlq", "list", "g1", "--home", str(home), "--json"],
        ["audit", "verify", "latest", "--home", str(home), "--json"],
        ["runs", "--home", str(home), "--json"],
    ):
        proc = _engine(*args, cwd=tmp_path)
        assert proc.returncode == 0, (args, proc.stderr)
        json.loads(proc.stdout)
    # After the subcommand wins over before it, as a later option does.
    late = _engine("--home", str(tmp_path / "nowhere"), "status", "g1", "--home", str(home),
                   cwd=tmp_path)  # fmt: skip
    assert late.returncode == 0, late.stderr
