"""The CLI answers at once: help, `status` and `runs` import only what they use.

Real `engine` processes (the CLI's own `main()` in a fresh interpreter), asked
afterwards which modules they imported. The group's help lists the commands
from a static table (cli/commands.py) without importing them: checked here
against the commands' own help, as click writes it once they are loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest

from cli.commands import COMMANDS
from cli.main import cli
from tests.engine_helpers import DEADLINE, run_workflow, write_workflow

HEAVY = ("duckdb", "pydantic", "rich.live", "watchfiles", "distributed")

# Runs the CLI in this process, then says which of the heavy modules it imported.
PROBE = """\
import json, sys
heavy = sys.argv.pop(1).split(",")
from cli.main import main
code = 0
try:
    main()
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "heavy": [m for m in heavy if m in sys.modules]}))
"""

# The group's help in a fresh process: nothing but the table to list the commands from.
HELP = """\
import sys, click
from cli.main import cli
width = int(sys.argv[1])
ctx = click.Context(
    cli, info_name="engine", terminal_width=width, help_option_names=["-h", "--help"]
)
print(cli.get_help(ctx))
print(sorted(name for name in sys.modules if name.startswith("cli.") and name.endswith("_cmds")))
"""

WORKFLOW = """\
name: small
map:
  input: items.json
  agent_template:
    - run: echo "hello ${item}"
"""


def _python(tmp_path: Path, code: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        check=False,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _imported(tmp_path: Path, *args: str) -> dict[str, object]:
    out = _python(tmp_path, PROBE, ",".join(HEAVY), *args)
    return dict(json.loads(out.splitlines()[-1]))


@pytest.fixture
def small_run(tmp_path: Path) -> Path:
    (tmp_path / "items.json").write_text(json.dumps(["a", "b", "c"]))
    home = tmp_path / "home"
    result = run_workflow(write_workflow(tmp_path, WORKFLOW), home)
    assert result.status == "completed"
    return home


@pytest.mark.parametrize("args", [["--help"], ["status", "--help"], ["runs", "--help"]])
def test_help_imports_nothing_heavy(tmp_path: Path, args: list[str]) -> None:
    assert _imported(tmp_path, *args) == {"code": 0, "heavy": []}


@pytest.mark.parametrize(
    "args",
    [["status"], ["status", "latest", "--json"], ["runs"], ["runs", "--json"]],
)
def test_status_and_runs_of_a_run_import_nothing_heavy(
    tmp_path: Path, small_run: Path, args: list[str]
) -> None:
    assert _imported(tmp_path, *args, "--home", str(small_run)) == {"code": 0, "heavy": []}


def test_the_probe_sees_a_heavy_import(tmp_path: Path) -> None:
    # The check itself sees a heavy module: `engine validate` loads the workflow spec.
    seen = _imported(tmp_path, "validate", "--help")
    assert seen["code"] == 0 and "pydantic" in list(seen["heavy"])  # type: ignore[arg-type]


def _loaded_help(width: int) -> str:
    for name in COMMANDS:
        cli.get_command(click.Context(cli), name)  # every command's module imported
    ctx = click.Context(
        cli, info_name="engine", terminal_width=width, help_option_names=["-h", "--help"]
    )
    return cli.get_help(ctx)


@pytest.mark.parametrize("width", [40, 60, 80, 100, 200])
def test_help_from_the_table_is_the_help_of_the_loaded_commands(tmp_path: Path, width: int) -> None:
    out = _python(tmp_path, HELP, str(width)).splitlines()
    text, modules = "\n".join(out[:-1]), out[-1]
    assert modules == "[]"  # listed without importing a command's module
    assert text == _loaded_help(width)


def test_the_table_names_each_command_and_its_module() -> None:
    for name, (module, short) in COMMANDS.items():
        command = cli.get_command(click.Context(cli), name)
        assert command is not None, name
        assert command.callback is not None and command.callback.__module__ == module, name
        assert command.get_short_help_str(limit=10_000) == short, name
    assert set(cli.commands) == set(COMMANDS)  # every command loaded is in the table
