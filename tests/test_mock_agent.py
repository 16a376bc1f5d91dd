"""`engine mock-agent`: its help documents the script format, and the example in it works."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml

from cli.docgen import render_cli_reference
from engine.tools.mock_agent import BEHAVIOURS, EXAMPLE, ScriptError, behavior_for, help_text
from tests.conftest import ENGINE


def _agent(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ENGINE, "mock-agent", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_help_documents_the_script_format_with_an_example(tmp_path: Path) -> None:
    shown = _agent(tmp_path, "--help")
    assert shown.returncode == 0 and shown.stderr == ""
    text = shown.stdout
    for word in ("items:", "match:", "default:", "pattern: REGEX", "Example:", EXAMPLE):
        assert word in text
    for key in BEHAVIOURS:
        assert f"\n  {key} " in text, f"behaviour {key!r} is not in the help"
    # docs/cli.md shows the same text as `engine mock-agent --help`.
    assert f"## `engine mock-agent`\n\n```\n{help_text()}\n```" in render_cli_reference()


def test_the_example_in_the_help_acts_as_it_says(tmp_path: Path) -> None:
    script = yaml.safe_load(textwrap.dedent(EXAMPLE))
    assert behavior_for(script, "src/a.py", 1) == {"rate_limit": True}
    assert behavior_for(script, "src/a.py", 2) == {"ok": "fixed on attempt {attempt}"}
    assert behavior_for(script, "src/a.py", 7) == behavior_for(script, "src/a.py", 2)
    assert behavior_for(script, "slow/x", 1) == {"hang": True, "touch": 1}
    assert behavior_for(script, "other", 1) == {"sleep": [0.5, 2], "json": {"verdict": "ok"}}
    (tmp_path / "agent.yml").write_text(textwrap.dedent(EXAMPLE))
    limited = _agent(tmp_path, "--script", "agent.yml", "--item", "src/a.py", "-p", "review")
    assert limited.returncode == 1 and "429" in limited.stderr
    fixed = _agent(tmp_path, "--script", "agent.yml", "--item", "src/a.py", "--attempt", "2")
    assert (fixed.returncode, fixed.stdout) == (0, "fixed on attempt 2\n")
    refused = _agent(tmp_path, "--script", "agent.yml", "--item", "src/b.py")
    assert (refused.returncode, refused.stderr) == (2, "validation failed: not Python\n")
    echoed = _agent(tmp_path, "--behavior", json.dumps({"echo_prompt": True, "json": [1]}), "hi")
    assert (echoed.returncode, echoed.stdout) == (0, "hi\n[1]\n")


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--behavior", '{"rate_limt": true}'], "unknown behaviour key 'rate_limt' (did you mean"),
        (["--behavior", '{"sleep": "soon"}'], "behaviour sleep: 'soon' is not a number of"),
        (["--behavior", '{"signal": "SIGNOPE"}'], "is not a signal's name"),
        (["--behavior", "{oops"], "--behavior is not JSON"),
        (["--script", "missing.yml"], "cannot read the script missing.yml"),
        (["--script", "list.yml"], "the script is not a mapping"),
        (["--script", "rules.yml", "--item", "x"], "is not {pattern: REGEX, do: BEHAVIOUR}"),
    ],
)
def test_a_bad_script_or_behaviour_is_one_line_and_exit_2(
    tmp_path: Path, args: list[str], said: str
) -> None:
    (tmp_path / "list.yml").write_text("- ok: done\n")
    (tmp_path / "rules.yml").write_text("match: [{pattern: x}]\n")
    ran = _agent(tmp_path, *args)
    assert ran.returncode == 2 and ran.stdout == ""
    assert len(ran.stderr.splitlines()) == 1 and said in ran.stderr, ran.stderr
    assert ran.stderr.startswith("engine mock-agent: error: ")


def test_every_behaviour_key_in_the_help_is_one_the_agent_accepts() -> None:
    for key in BEHAVIOURS:
        value = {"sleep": 0, "touch": 1, "exit": 0, "signal": "TERM"}.get(key, True)
        assert behavior_for({"default": {key: value}}, "i", 1) == {key: value}
    with pytest.raises(ScriptError, match="unknown behaviour key"):
        behavior_for({"default": {"fial": "x"}}, "i", 1)
