"""Helpers for integration tests: run a workflow in-process, for real."""

from __future__ import annotations

import asyncio
import json
import textwrap
from pathlib import Path
from typing import Any

from engine.runner import RunOptions, RunResult, execute_run
from engine.workflow import load_workflow
from ledger import LedgerReader
from ledger.events import Record
from projections.replay import replay
from tests.conftest import projections_json


def write_workflow(directory: Path, text: str, name: str = "wf.yml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


def write_script(directory: Path, script: dict[str, Any]) -> Path:
    path = directory / "agent.json"
    path.write_text(json.dumps(script))
    return path


def run_workflow(path: Path, home: Path, **options: Any) -> RunResult:
    """Run for real (subprocesses, fsync), then check live state == replay(ledger)."""
    loaded = load_workflow(path)
    result = asyncio.run(execute_run(loaded, home, RunOptions(**options)))
    ledger = result.run_dir / "ledger.ndjson"
    assert projections_json(result.projections) == projections_json(replay(ledger)), (
        "the engine's final projections differ from a replay of its ledger"
    )
    return result


def records(result: RunResult, type_: str | None = None) -> list[Record]:
    out = list(LedgerReader(result.run_dir / "ledger.ndjson").records())
    return [r for r in out if type_ is None or r.type == type_]


MOCK = "engine mock-agent --script agent.json -p"
