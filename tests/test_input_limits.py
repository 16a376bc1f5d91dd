"""The bounds on inputs, in-process: the pure-Python YAML path, values, run ids, stops."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from engine.errors import BadRunId, InputRefused, ItemsError, WorkflowError
from engine.home import check_run_id
from engine.items.selection import LoadCancelled, LoadStop, check_value, load_items
from engine.limits import read_bounded
from engine.workflow import reading as workflow_module
from engine.workflow.load import parse_workflow
from engine.workflow.spec import MapSpec, parse_duration
from tests.engine_helpers import wait_for

STEP = "  agent_template: [{run: echo}]\n"


@pytest.fixture(params=[True, False], ids=["libyaml", "pure-python"])
def yaml_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Both parsers: libyaml when PyYAML has it, and the pure-Python fallback."""
    if request.param and not workflow_module.LIBYAML:
        pytest.skip("PyYAML was built without libyaml")
    monkeypatch.setattr(workflow_module, "LIBYAML", request.param)
    return bool(request.param)


def _problem(text: str) -> str:
    with pytest.raises(WorkflowError) as info:
        parse_workflow(text, file="wf.yml")
    return str(info.value)


def test_deep_nesting_is_refused_with_its_line(yaml_path: bool) -> None:
    text = "name: t\nmap:\n" + STEP + "  items:\n    - " + "[" * 500 + "]" * 500 + "\n"
    message = _problem(text)
    assert message.startswith("wf.yml:") and "nested more than 100 levels" in message


def test_billion_laughs_is_refused_quickly(yaml_path: bool) -> None:
    text = "name: t\na: &a [x, x, x, x, x, x, x, x, x, x]\n"
    for i in range(1, 10):
        previous = "a" if i == 1 else f"a{i - 1}"
        text += f"a{i}: &a{i} [" + ", ".join([f"*{previous}"] * 10) + "]\n"
    started = time.monotonic()
    message = _problem(text)
    assert "through its aliases" in message
    assert time.monotonic() - started < 30  # expanded, it would hold 10**10 values


def test_recursive_alias_is_refused(yaml_path: bool) -> None:
    assert "refers to its own anchor" in _problem("name: t\nmap: &m\n  items: [*m]\n")


def test_strings_no_command_can_carry_are_refused_with_their_line(yaml_path: bool) -> None:
    text = 'name: t\nenv:\n  A: "x\\0y"\nmap:\n  items: [1]\n' + STEP
    assert _problem(text).startswith("wf.yml:3: a string holds a NUL")


def test_a_lone_surrogate_is_refused_by_the_pure_python_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(workflow_module, "LIBYAML", False)
    text = 'name: t\nmap:\n  items: ["\\ud800"]\n' + STEP
    assert "lone surrogate" in _problem(text)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (float("nan"), "not finite"),
        ([float("inf")], "not finite"),
        (2**64, "beyond 64 bits"),
        ({"a": "x\x00"}, "NUL"),
        ("\udc80", "lone surrogate"),
        ({1: "x"}, "not a string"),
        (b"bytes", "not JSON data"),
        ({"a": [[[[]]]]}, None),
    ],
)
def test_check_value(value: object, why: str | None) -> None:
    found = check_value(value)
    assert (found is None) if why is None else (found is not None and why in found)


def test_check_value_depth() -> None:
    deep: list[object] = []
    for _ in range(150):
        deep = [deep]
    assert "nested more than 100" in (check_value(deep) or "")


@pytest.mark.parametrize(
    "value", ["9" * 400, 10**400, "1e999", float("nan"), "nan", "inf", -1, "-5s", True, "x" * 100]
)
def test_durations_are_finite_and_bounded(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize("good", ["run-1", "A.b_c-d", "9", "x" * 128])
def test_good_run_ids(good: str) -> None:
    assert check_run_id(good) == good


@pytest.mark.parametrize(
    "bad", ["", ".", "..", "../x", "a/b", "/abs", "a\nb", "latest", ".x", "-x", "é", "x" * 129]
)
def test_bad_run_ids(bad: str) -> None:
    with pytest.raises(BadRunId) as info:
        check_run_id(bad)
    assert "\n" not in str(info.value)


def test_read_bounded_never_blocks_on_a_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    result: list[BaseException] = []

    def read() -> None:
        try:
            read_bounded(fifo, limit=100, what="test file", env_name="X")
        except InputRefused as exc:
            result.append(exc)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "reading a FIFO blocked"
    assert result and "a FIFO" in str(result[0])


def test_a_stop_kills_the_map_command(tmp_path: Path) -> None:
    spec = MapSpec.model_validate(
        {
            "command": "echo $$ > pid; sleep 60; echo '[1]'",
            "agent_template": [{"run": "echo"}],
        }
    )
    stop = LoadStop()
    errors: list[BaseException] = []

    def load() -> None:
        try:
            load_items(spec, tmp_path, dict(os.environ), stop=stop)
        except (LoadCancelled, ItemsError) as exc:
            errors.append(exc)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    pid = tmp_path / "pid"
    wait_for(lambda: pid.exists() and pid.read_text().strip(), what="the command to start")
    stop.cancel()
    thread.join(5)
    assert not thread.is_alive(), "the load did not stop"
    assert errors and isinstance(errors[0], LoadCancelled)
    pid = int((tmp_path / "pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.parametrize("run_id", ["h", "wf.yml"])
def test_a_run_id_that_is_also_a_relative_path_names_the_run(tmp_path: Path, run_id: str) -> None:
    # `--run-id h` with the home at ./h, or `--run-id wf.yml` beside the workflow: commands
    # given the id find the run, not the directory or file of that name.
    import subprocess

    from tests.conftest import ENGINE

    (tmp_path / "wf.yml").write_text(
        "name: t\nmap:\n  items: [1]\n  agent_template: [{run: 'true'}]\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "ENGINE_HOME"}

    def engine(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [ENGINE, "--home", "h", *args],
            check=False,
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
        )

    assert engine("run", "wf.yml", "--run-id", run_id, "--no-progress").returncode == 0
    status = engine("status", run_id, "--json")
    assert status.returncode == 0, status.stderr
    assert f'"{run_id}"' in status.stdout
    verify = engine("audit", "verify", run_id)
    assert verify.returncode == 0, verify.stderr


def test_an_id_over_the_limit_is_refused_when_items_load(tmp_path: Path) -> None:
    # The id is in every record of its item: one over 256 KiB made every enqueue fail,
    # and the run could never be resumed.
    spec = MapSpec.model_validate(
        {"items": ["x" * 5000, "short"], "id": "${item}", "agent_template": [{"run": "true"}]}
    )
    with pytest.raises(ItemsError, match="over the 4,096-byte limit"):
        load_items(spec, tmp_path, {})
