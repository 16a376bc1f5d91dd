"""`engine mock-agent`: its help documents the script format, and the example in it works."""

from __future__ import annotations

import datetime
import json
import math
import os
import re
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli.docgen import render_cli_reference
from engine.map.classify import classify
from engine.map.usage_limits import reset_at
from engine.tools.mock_agent import (
    BEHAVIOURS,
    CHECKS,
    EXAMPLE,
    ScriptError,
    behavior_for,
    help_text,
    main,
)
from engine.tools.mock_claude import USAGE_LIMIT_STYLES, usage_limit_message
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
    "cost": [0, 0.01, 1.2345, 25],
    "tokens": [{}, {"input": 0}, {"input": 10, "output": 7, "cache_read": 3, "cache_creation": 1}],
    "turns": [1, 3, 10000],
    "turn_delay": [0, 0.2, 86400],
    "session": ["abc", "7f1c0a4e-0000-4000-8000-000000000000"],
    "model": ["claude-sonnet-4", "m"],
    "is_error": [True, False],
    "subtype": ["success", "error_max_turns", "error_max_budget_usd", "error_during_execution"],
    "usage_limit": [0, 3, 86400],
    "usage_limit_style": ["epoch", "resets", "retry_after"],
    "fenced": [True, False],
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
    "cost": [-0.01, math.inf, math.nan, "0.1", True, None, [1]],
    "tokens": [
        {"inputs": 1},
        {"input": -1},
        {"output": 1.5},
        {"input": True},
        {"input": "3"},
        [1],
        5,
        None,
    ],
    "turns": [0, -1, 10001, 1.5, True, "2", None],
    "turn_delay": [-1, 86401, math.inf, "1", True, None],
    "session": ["", "  ", 1, None, True, ["a"]],
    "model": ["", 3, None, False],
    "is_error": ["true", 1, None],
    "subtype": ["error", "Success", "", 1, None],
    "usage_limit": [-1, 86401, math.nan, "3", True, None],
    "usage_limit_style": ["Epoch", "retry-after", "", 1, None, True],
    "fenced": ["yes", 1, None],
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


def _claude(cwd: Path, behavior: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    return _agent(cwd, "--behavior", json.dumps(behavior), "--item", "src/a.py", *args)


USAGE_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
)


def test_json_format_prints_one_result_envelope_with_the_scripted_figures(tmp_path: Path) -> None:
    scripted = {
        "ok": "reviewed {item}",
        "cost": 0.1234,
        "tokens": {"input": 1200, "output": 345, "cache_read": 5000, "cache_creation": 17},
        "turns": 4,
        "session": "sess-1",
        "model": "claude-sonnet-4",
    }
    ran = _claude(tmp_path, scripted, "--output-format", "json", "-p", "review")
    assert (ran.returncode, ran.stderr) == (0, "")
    assert len(ran.stdout.splitlines()) == 1
    envelope = json.loads(ran.stdout)
    assert isinstance(envelope["duration_ms"], int) and envelope["duration_ms"] >= 0
    assert isinstance(envelope["duration_api_ms"], int)
    del envelope["duration_ms"], envelope["duration_api_ms"]
    assert envelope == {
        "type": "result",
        "subtype": "success",
        "is_error": False,
        "num_turns": 4,
        "result": "reviewed src/a.py",
        "session_id": "sess-1",
        "total_cost_usd": 0.1234,
        "usage": dict(zip(USAGE_FIELDS, (1200, 345, 5000, 17), strict=True)),
        "model": "claude-sonnet-4",
    }
    # Defaults: no cost, no tokens, one turn, a stable session per item and attempt.
    plain = [json.loads(_claude(tmp_path, {}, "--output-format", "json").stdout) for _ in "ab"]
    assert plain[0]["session_id"] == plain[1]["session_id"]
    assert plain[0]["total_cost_usd"] == 0 and plain[0]["num_turns"] == 1
    assert plain[0]["usage"] == dict.fromkeys(USAGE_FIELDS, 0)
    assert plain[0]["model"] == "claude-mock-1" and plain[0]["result"] == "done"
    other = json.loads(_claude(tmp_path, {}, "--output-format", "json", "--attempt", "2").stdout)
    assert other["session_id"] != plain[0]["session_id"]


def test_json_format_carries_a_json_value_as_text_fenced_when_asked(tmp_path: Path) -> None:
    value = {"verdict": "ok", "score": 3}
    bare = json.loads(_claude(tmp_path, {"json": value}, "--output-format", "json").stdout)
    assert json.loads(bare["result"]) == value
    fenced = {"json": value, "fenced": True}
    said = json.loads(_claude(tmp_path, fenced, "--output-format", "json").stdout)["result"]
    assert said.startswith("```json\n") and said.endswith("\n```")
    assert json.loads(said.removeprefix("```json\n").removesuffix("```")) == value


@pytest.mark.parametrize(
    ("behavior", "code", "is_error", "subtype"),
    [
        ({"fail": "it broke"}, 1, True, "success"),
        ({"fail": "it broke", "exit": 0}, 0, True, "success"),
        ({"is_error": True}, 1, True, "success"),
        ({"subtype": "error_max_turns"}, 0, False, "error_max_turns"),
        ({"subtype": "error_max_budget_usd", "is_error": True}, 1, True, "error_max_budget_usd"),
        ({"subtype": "error_during_execution", "exit": 3}, 3, False, "error_during_execution"),
        ({"is_error": True, "exit": 0}, 0, True, "success"),
    ],
)
def test_is_error_and_subtypes_set_the_envelope_and_the_exit_code(
    tmp_path: Path, behavior: dict[str, Any], code: int, is_error: bool, subtype: str
) -> None:
    for output_format in ("json", "stream-json"):
        ran = _claude(tmp_path, behavior, "--output-format", output_format)
        assert ran.returncode == code, (output_format, ran.stderr)
        result = json.loads(ran.stdout.splitlines()[-1])
        assert (result["is_error"], result["subtype"]) == (is_error, subtype)
        if "fail" in behavior:
            assert result["result"] == "it broke"


def test_a_usage_limit_says_its_reset_epoch_and_exits_1(tmp_path: Path) -> None:
    pattern = re.compile(r"Claude AI usage limit reached\|(\d+)")
    for output_format in ("text", "json"):
        before = time.time()
        ran = _claude(tmp_path, {"usage_limit": 5}, "--output-format", output_format)
        after = time.time()
        assert ran.returncode == 1, ran.stderr
        text = json.loads(ran.stdout)["result"] if output_format == "json" else ran.stdout
        found = pattern.fullmatch(text.strip())
        assert found, text
        assert before + 5 <= int(found.group(1)) <= math.ceil(after + 5)
        if output_format == "json":
            assert json.loads(ran.stdout)["is_error"] is True


def test_each_usage_limit_style_says_a_reset_the_engine_reads(tmp_path: Path) -> None:
    """epoch, resets (a UTC wall time to the second) and retry_after, in json and text; the
    engine's parser finds the reset each says, a few seconds ahead."""
    for style in USAGE_LIMIT_STYLES:
        for output_format in ("text", "json"):
            behavior = {"usage_limit": 5, "usage_limit_style": style}
            before = time.time()
            ran = _claude(tmp_path, behavior, "--output-format", output_format)
            assert ran.returncode == 1, ran.stderr
            if output_format == "json":
                text = json.loads(ran.stdout)["result"]
            else:
                text = ran.stderr if style == "retry_after" else ran.stdout
            assert (
                classify(exit_code=1, signal=None, stderr_tail=text, stdout_tail="").error_type
                == "rate_limited"
            ), (style, text)
            reset = reset_at(text, before)
            assert reset is not None, (style, text)
            assert before + 4 <= reset <= time.time() + 6.5, (style, text)


def test_usage_limit_messages_of_each_style_at_a_given_time() -> None:
    now = 1767222000.2  # 2025-12-31 23:00:00.2 UTC
    assert usage_limit_message(3, now) == "Claude AI usage limit reached|1767222004"
    assert usage_limit_message(3, now, "resets") == (
        "Claude usage limit reached. Your limit will reset at 11:00:04pm (UTC)."
    )
    assert usage_limit_message(3, now, "retry_after").endswith("\nretry-after: 3")


def test_resume_and_the_budget_are_accepted_and_logged(tmp_path: Path) -> None:
    log = tmp_path / "agent.log"
    ran = _claude(
        tmp_path,
        {"ok": "continued"},
        "--log",
        str(log),
        "--output-format",
        "json",
        "--verbose",
        "--resume",
        "sess-7",
        "--max-budget-usd",
        "2.5",
        "-p",
        "go on",
    )
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["session_id"] == "sess-7"  # it continued that session
    start, end = log.read_text().splitlines()
    assert re.fullmatch(r"start src/a\.py 1 [\d.]+ resume=sess-7 budget=2\.5", start), start
    assert re.fullmatch(r"end src/a\.py 1 [\d.]+", end), end
    # Without them, the start line is as it was; and -p may come before the options.
    log.unlink()
    plain = _claude(tmp_path, {}, "--log", str(log), "-p", "--output-format", "json", "prompt")
    assert plain.returncode == 0 and json.loads(plain.stdout)["result"] == "done"
    assert re.fullmatch(r"start src/a\.py 1 [\d.]+", log.read_text().splitlines()[0])


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--output-format", "xml"], "argument --output-format: invalid choice: 'xml'"),
        (["--max-budget-usd", "-1"], "argument --max-budget-usd: '-1' is not an amount of US"),
        (["--max-budget-usd", "lots"], "argument --max-budget-usd: 'lots' is not an amount"),
        (["--resume"], "argument --resume: expected one argument"),
        (["--output-fromat", "json"], "unrecognized arguments: --output-fromat"),
    ],
)
def test_bad_claude_options_are_one_line_and_exit_2(
    tmp_path: Path, args: list[str], said: str
) -> None:
    ran = _agent(tmp_path, *args)
    assert (ran.returncode, ran.stdout) == (2, "")
    assert len(ran.stderr.splitlines()) == 1 and said in ran.stderr, ran.stderr


def test_stream_json_prints_init_a_line_per_turn_and_the_result(tmp_path: Path) -> None:
    tokens = {"input": 1001, "output": 250, "cache_read": 7, "cache_creation": 0}
    scripted = {"json": [1, 2], "cost": 0.37, "tokens": tokens, "turns": 3, "model": "m-2"}
    ran = _claude(tmp_path, scripted, "--output-format", "stream-json", "--verbose")
    assert (ran.returncode, ran.stderr) == (0, "")
    lines = [json.loads(line) for line in ran.stdout.splitlines()]
    init, turns, result = lines[0], lines[1:-1], lines[-1]
    assert (init["type"], init["subtype"], init["model"]) == ("system", "init", "m-2")
    assert "Bash" in init["tools"]
    session = init["session_id"]
    assert [t["type"] for t in turns] == ["assistant"] * 3
    assert {t["session_id"] for t in turns} == {session} == {result["session_id"]}
    blocks = [t["message"]["content"][0] for t in turns]
    assert [b["type"] for b in blocks] == ["tool_use", "tool_use", "text"]
    assert blocks[0]["name"] == "Bash" and json.loads(blocks[-1]["text"]) == [1, 2]
    for kind, field in zip(tokens, USAGE_FIELDS, strict=True):
        counts = [t["message"]["usage"][field] for t in turns]
        assert all(isinstance(n, int) for n in counts) and sum(counts) == tokens[kind]
        assert max(counts) - min(counts) <= 1
    assert result["type"] == "result" and result["num_turns"] == 3
    assert result["total_cost_usd"] == 0.37 and result["model"] == "m-2"
    assert result["usage"] == dict(zip(USAGE_FIELDS, tokens.values(), strict=True))


def test_stream_json_turns_arrive_one_by_one_with_a_turn_delay(tmp_path: Path) -> None:
    scripted = {"turns": 3, "turn_delay": 2}
    started = time.monotonic()
    with subprocess.Popen(
        [
            ENGINE,
            "mock-agent",
            "--behavior",
            json.dumps(scripted),
            "--output-format",
            "stream-json",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        text=True,
    ) as agent:
        assert agent.stdout is not None
        first = [json.loads(agent.stdout.readline()) for _ in range(2)]
        assert [line["type"] for line in first] == ["system", "assistant"]
        # Flushed as it goes: the first turn is read while the agent still waits for the next.
        assert agent.poll() is None
        rest = [json.loads(line) for line in agent.stdout]
        assert agent.wait(timeout=60) == 0
    assert time.monotonic() - started >= 2 * 2  # two waits between three turns
    assert [line["type"] for line in rest] == ["assistant", "assistant", "result"]
