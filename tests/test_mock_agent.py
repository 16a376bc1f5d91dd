"""`engine mock-agent`: its help documents the script format, and the example in it works."""

from __future__ import annotations

import datetime
import json
import math
import os
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli.docgen import render_cli_reference
from engine.tools.mock_agent import (
    BEHAVIOURS,
    CHECKS,
    EXAMPLE,
    ScriptError,
    behavior_for,
    help_text,
    main,
)
from tests.conftest import ENGINE
from tests.engine_helpers import engine_in_process


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
        (
            ["--behavior", '{"signal": "SIGNOPE"}'],
            "is not the name of a signal that ends a process",
        ),
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
    ran = engine_in_process("mock-agent", *args, cwd=tmp_path)  # refused before it acts
    assert ran.returncode == 2 and ran.stdout == ""
    assert len(ran.stderr.splitlines()) == 1 and said in ran.stderr, ran.stderr
    assert ran.stderr.startswith("engine mock-agent: error: ")


GOOD: dict[str, list[Any]] = {
    "sleep": [0, 0.25, 86400, [0, 0], [0.5, 2], [1, 86400]],
    "ok": ["done", "", 42, 1.5],
    "json": [{"verdict": "ok"}, [1, "a", None], None, True, 3, "text"],
    "fail": ["validation failed", 503],
    "exit": [0, 2, 255],
    "rate_limit": [True, False],
    "hang": [True, False],
    "touch": [0.01, 1, 86400],
    "signal": ["SIGKILL", "term", "SEGV", "sigusr1", "SIGRTMIN"],
    "echo_prompt": [True, False],
}
"""Values every behaviour key accepts, at the edges of its range too."""

BAD: dict[str, list[Any]] = {
    "sleep": [
        -1,
        -0.001,
        86401,
        math.inf,
        math.nan,
        "soon",
        True,
        None,
        [2, 1],
        [-1, 1],
        [0, 86401],
        [1],
        [1, 2, 3],
        [0, "x"],
        {"min": 1},
    ],
    "ok": [None, True, ["a"], {"a": 1}, math.nan],
    "json": [math.nan, math.inf, -math.inf, {"when": datetime.date(2024, 1, 1)}, [math.nan]],
    "fail": [None, False, ["a"], {"a": 1}],
    "exit": [-1, 256, 300, 2.0, "2", True, None, [0]],
    "rate_limit": ["yes", 1, None, "true"],
    "hang": ["no", 0, None, [True]],
    "touch": [0, -1, 86401, math.inf, "1", True, None, [1, 2]],
    "signal": [
        "SIGNOPE",
        "",
        9,
        None,
        True,
        "SIG_DFL",
        "SIGCHLD",
        "cont",
        "STOP",
        "SIGTSTP",
        "winch",
        "SIGURG",
        "TTIN",
        "SIGTTOU",
    ],
    "echo_prompt": ["true", 1, None],
}
"""Values of the wrong kind or out of range, for every behaviour key: each is refused."""


def test_every_behaviour_key_has_a_check_and_cases_for_it() -> None:
    assert set(CHECKS) == set(BEHAVIOURS) == set(GOOD) == set(BAD)


@pytest.mark.parametrize(("key", "value"), [(k, v) for k, vs in GOOD.items() for v in vs])
def test_each_behaviour_key_accepts_the_values_of_its_range(key: str, value: Any) -> None:
    assert behavior_for({"default": {key: value}}, "i", 1) == {key: value}


@pytest.mark.parametrize(("key", "value"), [(k, v) for k, vs in BAD.items() for v in vs])
def test_each_behaviour_key_refuses_a_value_of_the_wrong_kind_or_range(
    key: str, value: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ScriptError) as raised:
        behavior_for({"default": {key: value}}, "i", 1)
    # The line names the key, the bad value and what would fit (its range).
    assert f"behaviour {key}: {value!r} is not {CHECKS[key][1]}" in str(raised.value)
    if key == "json" and isinstance(value, dict):
        return  # a date: YAML has dates, JSON has none, so --behavior cannot give one
    code = main(["--behavior", json.dumps({key: value})])
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert err.startswith("engine mock-agent: error: behaviour ") and err.count("\n") == 1, err


@pytest.mark.parametrize(
    ("behavior", "said"),
    [
        ('{"sleep": -1}', "behaviour sleep: -1 is not a number of seconds from 0 to 86400"),
        ('{"sleep": 1e999}', "behaviour sleep: inf is not a number of seconds from 0 to 86400"),
        ('{"sleep": [2, 1]}', "behaviour sleep: [2, 1] is not a number of seconds from 0 to"),
        ('{"exit": 300}', "behaviour exit: 300 is not an exit code from 0 to 255"),
        ('{"exit": -1}', "behaviour exit: -1 is not an exit code from 0 to 255"),
        ('{"touch": 0}', "behaviour touch: 0 is not a number of seconds above 0"),
        ('{"json": NaN}', "behaviour json: nan is not a JSON value"),
        ('{"hang": "no"}', "behaviour hang: 'no' is not true or false"),
        ('{"signal": "CHLD"}', "behaviour signal: 'CHLD' is not the name of a signal that ends"),
        ('[{"ok": "a"}, {"exit": 256}]', "--behavior[1]: behaviour exit: 256 is not an exit code"),
        ("[]", "--behavior: an empty list; give at least one behaviour"),
    ],
)
def test_engine_mock_agent_refuses_an_out_of_range_behaviour_in_one_line_with_exit_2(
    tmp_path: Path, behavior: str, said: str
) -> None:
    ran = engine_in_process("mock-agent", "--behavior", behavior, cwd=tmp_path)
    assert (ran.returncode, ran.stdout) == (2, ""), ran.stderr
    assert ran.stderr == f"engine mock-agent: error: {said}" + ran.stderr.split(said, 1)[1]
    assert len(ran.stderr.splitlines()) == 1 and "internal error" not in ran.stderr


def test_a_behavior_list_is_the_per_attempt_sequence_as_in_scripts(tmp_path: Path) -> None:
    listed = json.dumps([{"ok": "a {attempt}"}, {"fail": "b", "exit": 3}])
    said = [_agent(tmp_path, "--behavior", listed, "--attempt", str(n)) for n in (1, 2, 5)]
    assert [(r.returncode, r.stdout, r.stderr) for r in said] == [
        (0, "a 1\n", ""),
        (3, "", "b\n"),
        (3, "", "b\n"),
    ]
    # The help says so, as the code does.
    assert "--behavior JSON gives one BEHAVIOUR (a mapping, or a list of them" in help_text()


def test_the_whole_script_is_checked_before_the_agent_acts(tmp_path: Path) -> None:
    (tmp_path / "agent.yml").write_text(
        textwrap.dedent(
            """\
            default: {ok: fine}
            items:
              other: [{ok: first}, {sleep: -2}]
            match:
              - {pattern: "^z", do: {exit: 999}}
            """
        )
    )
    (tmp_path / "typo.yml").write_text("defualt: {ok: fine}\n")
    (tmp_path / "items.yml").write_text("items: [a, b]\n")
    log = tmp_path / "agent.log"
    ran = _agent(tmp_path, "--script", "agent.yml", "--item", "x", "--log", str(log))
    assert (ran.returncode, ran.stdout) == (2, "")
    assert ran.stderr == (
        "engine mock-agent: error: the script's items['other'][1]: behaviour sleep: -2 is not"
        " a number of seconds from 0 to 86400, or [MIN, MAX] with 0 <= MIN <= MAX <= 86400\n"
    )
    assert not log.exists()  # refused before it started
    typo = _agent(tmp_path, "--script", "typo.yml")
    assert typo.returncode == 2
    assert "the script's key 'defualt' is not items, match or default (did you mean default?)" in (
        typo.stderr
    )
    items = _agent(tmp_path, "--script", "items.yml", "--item", "a")
    assert items.returncode == 2 and "the script's items ['a', 'b'] is not a mapping" in (
        items.stderr
    )
    with pytest.raises(ScriptError, match=r"match\[0\]\.do: behaviour exit: 999 is not"):
        behavior_for({"match": [{"pattern": "^z", "do": {"exit": 999}}]}, "a", 1)


@pytest.mark.parametrize(
    ("args", "env", "said"),
    [
        (["--attempt", "0"], {}, "argument --attempt: '0' is not an attempt number (1, 2, ...)"),
        (
            [],
            {"ENGINE_ATTEMPT": "two"},
            "argument --attempt: 'two' is not an attempt number (1, 2, ...)",
        ),
        (["--nope"], {}, "unrecognized arguments: --nope"),
    ],
)
def test_a_bad_option_is_one_line_and_exit_2(
    tmp_path: Path, args: list[str], env: dict[str, str], said: str
) -> None:
    ran = subprocess.run(
        [ENGINE, "mock-agent", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **env},
    )
    assert (ran.returncode, ran.stdout) == (2, "")
    assert ran.stderr == f"engine mock-agent: error: {said}; see engine mock-agent --help\n"


def test_an_unknown_behaviour_key_is_refused() -> None:
    with pytest.raises(ScriptError, match="unknown behaviour key"):
        behavior_for({"default": {"fial": "x"}}, "i", 1)
