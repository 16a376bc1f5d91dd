"""`engine run` refuses, before anything is created, what would fail every item.

A step whose program is not on PATH, a map.input that is not there: exit 2,
one line naming the field and the program, no run directory (so `latest`
stays the run before). A run whose items cannot be loaded, when nothing ran
yet, is not kept either; one whose setup steps ran is.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest

from engine.errors import WorkflowError
from engine.run import RunOptions, execute_run
from engine.workflow.load import load_workflow
from tests.conftest import ENGINE
from tests.engine_helpers import write_workflow

GOOD = """\
name: good
map:
  items: [1, 2]
  agent_template:
    - run: echo "${item}"
"""


def _engine(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ENGINE, "--home", str(directory / "home"), *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=directory,
    )


def _runs(directory: Path) -> list[str]:
    runs = directory / "home" / "runs"
    return sorted(p.name for p in runs.iterdir()) if runs.is_dir() else []


def _latest_is(directory: Path, run_id: str | None) -> None:
    status = _engine(directory, "status", "latest", "--json")
    if run_id is None:
        assert status.returncode == 2 and "no runs under" in status.stderr
        return
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["run_id"] == run_id


def _good_run(directory: Path) -> str:
    write_workflow(directory, GOOD, "good.yml")
    proc = _engine(directory, "run", "good.yml", "--no-progress", "--run-id", "before")
    assert proc.returncode == 0, proc.stderr
    return "before"


def test_a_missing_program_is_refused_before_any_item_runs(tmp_path: Path) -> None:
    write_workflow(
        tmp_path,
        """\
        name: missing
        map:
          items: [1, 2]
          agent_template:
            - run: echo "${item}" > "seen-${item}"
            - argv: [no-such-program-i11, "${item}"]
        """,
    )
    proc = _engine(tmp_path, "run", "wf.yml", "--no-progress")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "wf.yml:6: map.agent_template[1].argv: program 'no-such-program-i11' is not found on "
        "PATH, so every run of this step would fail (install it or fix its name; engine run "
        "--allow-missing starts anyway)"
    ]
    assert _runs(tmp_path) == []
    assert not list(tmp_path.glob("seen-*"))
    _latest_is(tmp_path, None)
    allowed = _engine(tmp_path, "run", "wf.yml", "--no-progress", "--allow-missing")
    assert allowed.returncode == 1, allowed.stderr  # it ran: every item failed on that step
    assert sorted(p.name for p in tmp_path.glob("seen-*")) == ["seen-1", "seen-2"]


def test_the_agent_program_is_looked_up_too(tmp_path: Path) -> None:
    write_workflow(
        tmp_path,
        """\
        name: agent
        agent: {command: "no-such-agent-i11 -p"}
        map:
          items: [1]
          agent_template:
            - claude: "look at ${item}"
        """,
    )
    proc = _engine(tmp_path, "run", "wf.yml", "--no-progress")
    assert proc.returncode == 2
    assert "wf.yml:6: map.agent_template[0].claude: program 'no-such-agent-i11'" in proc.stderr
    assert "(the first word of agent.command)" in proc.stderr


def test_a_program_setup_mentions_is_left_to_setup(tmp_path: Path) -> None:
    """Setup may make it: the run starts, and the step finds what setup made."""
    tool = tmp_path / "bin" / "made-tool"
    write_workflow(
        tmp_path,
        f"""\
        name: made
        setup:
          - run: >-
              mkdir -p bin && printf '#!/bin/sh\\necho made\\n' > bin/made-tool &&
              chmod +x bin/made-tool
        map:
          items: [1]
          agent_template:
            - argv: ["{tool}"]
              output: text
        """,
    )
    proc = _engine(tmp_path, "run", "wf.yml", "--no-progress", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["items"]["succeeded"] == 1


def test_library_callers_get_the_refusal_as_an_error(tmp_path: Path) -> None:
    path = write_workflow(
        tmp_path, "name: t\nmap:\n  items: [1]\n  agent_template: [{argv: [no-such-i11]}]\n"
    )
    loaded = load_workflow(path)
    with pytest.raises(WorkflowError) as info:
        asyncio.run(execute_run(loaded, tmp_path / "home", RunOptions()))
    assert "program 'no-such-i11'" in str(info.value)
    assert not (tmp_path / "home" / "runs").exists()
    result = asyncio.run(execute_run(loaded, tmp_path / "home", RunOptions(allow_missing=True)))
    assert result.status == "completed" and result.exit_code == 1


def test_a_missing_input_leaves_latest_as_it_was(tmp_path: Path) -> None:
    before = _good_run(tmp_path)
    write_workflow(tmp_path, "name: t\nmap:\n  input: nope.json\n  agent_template: [{run: echo}]\n")
    proc = _engine(tmp_path, "run", "wf.yml", "--no-progress")
    assert proc.returncode == 2
    assert proc.stderr.startswith("wf.yml:3: map.input: no file 'nope.json'")
    assert _runs(tmp_path) == [before]
    _latest_is(tmp_path, before)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("input: items.json", "not valid JSON"),
        ('items: [{a: 1}, {b: 2}]\n  id: "${item.a}"', "map.id: item 1"),
    ],
    ids=["bad-json", "bad-id"],
)
def test_items_that_cannot_be_loaded_leave_no_run(
    tmp_path: Path, source: str, message: str
) -> None:
    before = _good_run(tmp_path)
    (tmp_path / "items.json").write_text('[{"a": 1}, {"a": ')
    write_workflow(tmp_path, f"name: t\nmap:\n  {source}\n  agent_template: [{{run: echo}}]\n")
    proc = _engine(tmp_path, "run", "wf.yml", "--no-progress")
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "nothing ran: no run was kept" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert _runs(tmp_path) == [before]
    _latest_is(tmp_path, before)


def test_a_run_whose_setup_ran_is_kept_and_resumable(tmp_path: Path) -> None:
    (tmp_path / "items.json").write_text("[1, ")
    write_workflow(
        tmp_path,
        """\
        name: kept
        setup:
          - run: echo set up >> setup.log
        map:
          input: items.json
          agent_template: [{run: 'echo "${item}"'}]
        """,
    )
    proc = _engine(tmp_path, "run", "wf.yml", "--no-progress", "--run-id", "kept")
    assert proc.returncode == 2
    assert "no run was kept" not in proc.stderr
    _latest_is(tmp_path, "kept")
    (tmp_path / "items.json").write_text("[1, 2]")
    resumed = _engine(tmp_path, "resume", "kept", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert (tmp_path / "setup.log").read_text() == "set up\n"  # setup ran once
