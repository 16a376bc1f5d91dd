"""`engine status --json`, `engine runs`, `engine dlq list --json` for a fixed scripted run."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from tests.conftest import ENGINE
from tests.engine_helpers import MOCK, write_script, write_workflow

TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def _engine(home: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ENGINE, "--home", str(home), *args], capture_output=True, text=True, check=False, cwd=cwd
    )


def test_status_runs_and_dlq_of_a_scripted_run(tmp_path: Path, snapshot) -> None:
    write_script(
        tmp_path,
        {
            "default": {"json": {"ok": True}},
            "items": {
                "b": [{"rate_limit": True}, {"json": {"ok": True}}],
                "d": {"fail": "validation failed: d is not valid", "exit": 2},
            },
        },
    )
    write_workflow(
        tmp_path,
        f"""
        name: scripted
        agent: {{command: "{MOCK}"}}
        map:
          items: [a, b, c, d, a]
          id: "${{item}}"
          max_parallel: 2
          retry: {{max_attempts: 3, initial: 0.05s}}
          agent_template:
            - claude: "check ${{item}}"
              output: json
        """,
    )
    home = tmp_path / "home"
    run = _engine(home, "run", "wf.yml", "--run-id", "fixed", "--no-progress", cwd=tmp_path)
    assert run.returncode == 1, run.stderr
    status = json.loads(_engine(home, "status", "fixed", "--json", cwd=tmp_path).stdout)
    assert TS.fullmatch(status.pop("started_at")) and TS.fullmatch(status.pop("finished_at"))
    assert status.pop("run_dir") == str(home / "runs" / "fixed")
    assert status.pop("events") >= 20  # heartbeats may add a few on a slow machine
    assert status.pop("took_s") > 0  # the engine's time on it: as long as the machine took
    assert status == snapshot
    for key in ("run_id", "status", "workflow", "items"):
        assert key in status
    dlq = json.loads(_engine(home, "dlq", "list", "fixed", "--json", cwd=tmp_path).stdout)
    assert [(d["item_id"], d["attempts"], d["error_type"]) for d in dlq] == [
        ("d", 1, "validation_failed")
    ]
    assert TS.fullmatch(dlq[0]["failed_at"]) and len(dlq[0]["signature"]) == 64
    assert dlq[0]["last_error"] == "validation failed: d is not valid"
    runs = json.loads(_engine(home, "runs", "--json", cwd=tmp_path).stdout)
    assert [r["run_id"] for r in runs] == ["fixed"]
    human = _engine(home, "runs", cwd=tmp_path).stdout
    assert "fixed" in human and "completed" in human
