"""``map.input_missing: command``: an input that names no file is run as the map's command.

Prodigy's rule, natively: when ``map.input`` names no existing file once setup
is done, it is run as ``map.command`` would be (JSON, or one item a line; its
environment, bounds and errors), and ``map.enqueued`` records that the items
came from a command. A file setup makes is read as a file. ``engine validate``
does not call such an input missing; a DLQ retry takes the items from the
ledger and never runs the command again.
"""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from cli.main import cli
from engine.errors import ItemsError
from engine.items.selection import load_items
from engine.workflow.spec import MapSpec
from tests.engine_helpers import engine_in_process, records, run_workflow, write_workflow

COMMAND = "printf '%s\\n' alpha beta; echo ran >> command-runs"
"""Two items, one a line; each run of the command is counted in ``command-runs``."""


def _spec(**kw: object) -> MapSpec:
    return MapSpec.model_validate({"agent_template": [{"run": "true"}], **kw})


def test_a_missing_input_is_run_as_a_command(tmp_path: Path) -> None:
    loaded = load_items(_spec(input=COMMAND, input_missing="command"), tmp_path, {})
    assert [w.value for w in loaded.items] == ["alpha", "beta"]
    assert loaded.source == "input_command"
    assert (tmp_path / "command-runs").read_text() == "ran\n"


def test_an_existing_file_is_read_never_run(tmp_path: Path) -> None:
    (tmp_path / "items.json").write_text('[{"k": 1}, {"k": 2}]')
    loaded = load_items(_spec(input="items.json", input_missing="command"), tmp_path, {})
    assert [w.value for w in loaded.items] == [{"k": 1}, {"k": 2}]
    assert loaded.source == "input"


def test_without_input_missing_a_missing_input_is_an_error(tmp_path: Path) -> None:
    try:
        load_items(_spec(input=COMMAND), tmp_path, {})
    except ItemsError as exc:
        assert str(exc).startswith("map.input: ")
    else:
        raise AssertionError("a missing input was not an error")
    assert not (tmp_path / "command-runs").exists()


def test_a_failing_command_is_a_clear_error(tmp_path: Path) -> None:
    spec = _spec(input="echo boom >&2; exit 3", input_missing="command")
    try:
        load_items(spec, tmp_path, {})
    except ItemsError as exc:
        assert str(exc).startswith(
            "map.input (run as a command: no such file, input_missing: command) exited 3: boom"
        ), str(exc)
    else:
        raise AssertionError("a failing command was not an error")


def test_the_command_reads_json_and_the_selection_applies(tmp_path: Path) -> None:
    document = json.dumps({"items": [{"f": "b", "p": 1}, {"f": "a", "p": 2}, {"f": "b", "p": 3}]})
    spec = _spec(
        input=f"echo '{document}'",
        input_missing="command",
        json_path="$.items[*]",
        sort_by="p DESC",
        distinct="f",
    )
    assert [w.value for w in load_items(spec, tmp_path, {}).items] == [
        {"f": "b", "p": 3},
        {"f": "a", "p": 2},
    ]


def test_a_run_takes_the_file_setup_makes(tmp_path: Path) -> None:
    path = write_workflow(
        tmp_path,
        """\
        name: t
        setup:
          - run: printf '["from-file"]' > items.json
        map:
          input: items.json
          input_missing: command
          agent_template:
            - run: 'echo "${item}"'
        """,
    )
    result = run_workflow(path, tmp_path / "home")
    assert result.status == "completed", result.reason
    assert [r.data.value for r in records(result, "item.enqueued")] == ["from-file"]
    (done,) = records(result, "map.enqueued")
    assert done.data.source == "input"


def test_a_run_with_no_such_file_runs_the_command_once(tmp_path: Path) -> None:
    """The command runs after setup, in the steps' directory, with the run's environment;
    a DLQ retry takes the items from the ledger and does not run it again."""
    path = write_workflow(
        tmp_path,
        """\
        name: t
        env: {PREFIX: item}
        setup:
          - run: echo ready > setup-done
        map:
          input: >-
            test -f setup-done && printf '%s\\n' "${env.PREFIX}-1" "${env.PREFIX}-2";
            echo ran >> command-runs
          input_missing: command
          id: "${item}"
          retry: {max_attempts: 1}
          agent_template:
            - run: '[ "${item}" = item-1 ] || [ -f fixed ]'
        """,
    )
    assert engine_in_process("validate", "wf.yml", cwd=tmp_path).returncode == 0
    home = tmp_path / "home"
    result = run_workflow(path, home)
    assert result.status == "completed" and result.exit_code == 1, result.reason
    assert [r.data.value for r in records(result, "item.enqueued")] == ["item-1", "item-2"]
    (done,) = records(result, "map.enqueued")
    assert done.data.source == "input_command"
    assert (tmp_path / "command-runs").read_text() == "ran\n"

    (tmp_path / "fixed").write_text("")
    retried = CliRunner().invoke(
        cli, ["--home", str(home), "dlq", "retry", result.run_id, "--all", "--no-progress"]
    )
    assert retried.exit_code == 0, retried.output
    assert (tmp_path / "command-runs").read_text() == "ran\n"  # not run again
    succeeded = sorted(r.data.item for r in records(result, "item.succeeded"))
    assert succeeded == ["item-1", "item-2"]


def test_a_run_whose_command_fails_stops_with_its_error(tmp_path: Path) -> None:
    write_workflow(
        tmp_path,
        """\
        name: t
        map:
          input: "echo 'no such tool' >&2; exit 7"
          input_missing: command
          agent_template: [{run: echo}]
        """,
    )
    proc = engine_in_process(
        "--home", str(tmp_path / "home"), "run", "wf.yml", "--no-progress", cwd=tmp_path
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert (
        "map.input (run as a command: no such file, input_missing: command) exited 7: "
        "no such tool" in proc.stderr
    )


def test_validate_does_not_call_such_an_input_missing(tmp_path: Path) -> None:
    text = """\
        name: t
        map:
          input: "find . -name '*.py'"
          {extra}
          agent_template: [{{run: 'echo "${{item}}"'}}]
        """
    write_workflow(tmp_path, text.format(extra="input_missing: command"))
    proc = engine_in_process("validate", "wf.yml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    write_workflow(tmp_path, text.format(extra="input_missing: error"))
    proc = engine_in_process("validate", "wf.yml", cwd=tmp_path)
    assert proc.returncode == 2
    assert "wf.yml:3: map.input: no file \"find . -name '*.py'\" here; it reads like a command" in (
        proc.stderr
    )
    assert "or add input_missing: command" in proc.stderr


def test_validate_checks_such_an_input_as_a_command(tmp_path: Path) -> None:
    write_workflow(
        tmp_path,
        """\
        name: t
        map:
          input: "cat ${setup_list}"
          input_missing: command
          agent_template: [{run: echo}]
        """,
    )
    proc = engine_in_process("validate", "wf.yml", cwd=tmp_path)
    assert proc.returncode == 2
    assert "wf.yml:3: map.input: " in proc.stderr
    assert "${setup_list}" in proc.stderr
    assert "is not a template" not in proc.stderr
