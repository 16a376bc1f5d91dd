"""Golden tests: the projections of the fixture ledger and the CLI's output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from projections.replay import replay
from tests.conftest import FIXTURE_LEDGER, projections_json


def test_projections_of_fixture_ledger(snapshot) -> None:
    p = replay(FIXTURE_LEDGER)
    assert json.loads(projections_json(p)) == snapshot


def _invoke(args: list[str]) -> str:
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def in_home(fixture_run: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.chdir(fixture_run.parent.parent.parent)
    monkeypatch.delenv("ENGINE_HOME", raising=False)
    return "home"


def test_replay_output(in_home: str, snapshot) -> None:
    assert _invoke(["--home", in_home, "replay", "run-fixture"]) == snapshot


def test_replay_until_output(in_home: str, snapshot) -> None:
    assert _invoke(["--home", in_home, "replay", "latest", "--until", "20"]) == snapshot


def test_replay_json_matches_projections(in_home: str) -> None:
    out = json.loads(_invoke(["--home", in_home, "replay", "run-fixture", "--json"]))
    assert out == json.loads(projections_json(replay(FIXTURE_LEDGER)))


def test_tail_output(in_home: str, snapshot) -> None:
    assert _invoke(["--home", in_home, "tail", "run-fixture"]) == snapshot


def test_tail_filters_output(in_home: str, snapshot) -> None:
    out = _invoke(
        ["--home", in_home, "tail", "run-fixture", "--all", "--type", "item.*", "--item", "c.py"]
    )
    assert out == snapshot


def test_tail_json_is_the_ledger_lines(in_home: str) -> None:
    out = _invoke(["--home", in_home, "tail", "run-fixture", "--all", "--json"])
    assert out.encode() == FIXTURE_LEDGER.read_bytes()
    out = _invoke(
        ["--home", in_home, "tail", "run-fixture", "-n", "3", "--json", "--type", "heartbeat,run.*"]
    )
    lines = FIXTURE_LEDGER.read_bytes().splitlines()
    wanted = [line for line in lines if b'"type":"heartbeat"' in line or b'"type":"run.' in line][
        -3:
    ]
    assert out.encode().splitlines() == wanted


def test_stats_output(in_home: str, snapshot) -> None:
    assert _invoke(["--home", in_home, "stats", "run-fixture"]) == snapshot
    assert json.loads(_invoke(["--home", in_home, "stats", "run-fixture", "--json"])) == snapshot


@pytest.mark.parametrize("fmt", ["md", "json", "html"])
def test_audit_report_output(in_home: str, fmt: str, snapshot, monkeypatch) -> None:
    monkeypatch.setattr("engine.views.report.utc_now", lambda: "2026-01-06T10:00:00.000000Z")
    out = _invoke(["--home", in_home, "audit", "report", "run-fixture", "--format", fmt])
    assert out == snapshot
