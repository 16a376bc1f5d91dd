"""An item's value never changes a command's syntax; commands get it byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.errors import WorkflowError
from engine.workflow.load import load_workflow
from tests.engine_helpers import records, run_workflow, write_workflow

NASTY = [
    "$(touch PWNED)",
    "`touch PWNED`",
    '"; touch PWNED; "',
    "' ; touch PWNED ; '",
    "'; touch PWNED #",
    "line one\nline two; touch PWNED\n",
    "${HOME} $PATH \\ \\n \\$(touch PWNED)",
    "tab\there & touch PWNED | cat > PWNED",
    "ünïcødé ☃ \x01\x02\x7f binary-looking \udc80".encode("utf-8", "surrogateescape").decode(
        "utf-8", "replace"
    ),
    "-n",
    "",
]


SHELL_KINDS = {
    "run-unquoted": 'printf "%s" ${item.v} > "out-${item.n}"',
    "run-double-quoted": 'printf "%s" "${item.v}" > "out-${item.n}"',
    "run-single-quoted": "printf '%s' '${item.v}' > 'out-${item.n}'",
    "single-in-bash-c-double": "bash -c \"printf '%s' '${item.v}' > 'out-${item.n}'\"",
    "bash-c-single": "bash -c 'printf \"%s\" ${item.v} > out-${item.n}'",
    "single-in-bash-c-single": "bash -c 'printf %s '\\''${item.v}'\\'' > out-${item.n}'",
    "heredoc-quoted": "cat <<'EOF' > out-${item.n}\n${item.v}\nEOF",
    "heredoc": "cat <<EOF > out-${item.n}\n${item.v}\nEOF",
    "single-in-sh-heredoc": "sh <<EOF\nprintf '%s' '${item.v}' > out-${item.n}\nEOF",
}


@pytest.mark.parametrize("kind", [*SHELL_KINDS, "argv", "env"])
def test_values_reach_commands_as_data(tmp_path: Path, kind: str) -> None:
    items_file = tmp_path / "items.json"
    items_file.write_text(json.dumps([{"v": v, "n": i} for i, v in enumerate(NASTY)]))
    if kind == "argv":
        code = 'import sys; open(f\\"out-{sys.argv[2]}\\", \\"w\\").write(sys.argv[1])'
        template = f'- argv: [python3, -c, "{code}", "${{item.v}}", "${{item.n}}"]'
    elif kind == "env":
        step = 'printf "%s" "$VALUE" > "out-${item.n}"'
        template = f'- run: {json.dumps(step)}\n              env: {{VALUE: "${{item.v}}"}}'
    else:
        template = f"- run: {json.dumps(SHELL_KINDS[kind])}"
    wf = write_workflow(
        tmp_path,
        f"""
        name: inject
        map:
          input: items.json
          id: "item-${{item.n}}"
          agent_template:
            {template}
        """,
    )
    result = run_workflow(wf, tmp_path / "home")
    assert result.exit_code == 0, [r.data for r in records(result, "item.failed")]
    assert not list(tmp_path.rglob("PWNED"))
    newline = "\n" if kind.startswith("heredoc") else ""
    for i, value in enumerate(NASTY):
        # Unquoted too: the engine quotes the reference, so no word splitting or globbing.
        assert (tmp_path / f"out-{i}").read_text() == value + newline


def test_variable_in_ansi_c_quotes_is_a_validation_error(tmp_path: Path) -> None:
    wf = write_workflow(
        tmp_path,
        """
        name: unsafe
        map:
          items: [a]
          agent_template:
            - run: echo $'${item}'
        """,
    )
    with pytest.raises(WorkflowError) as info:
        load_workflow(wf)
    assert "is inside $'...', which sh and bash read differently" in str(info.value)
    assert ":6: map.agent_template[0].run:" in str(info.value)


def _json_workflow(tmp_path: Path, values: list[str], steps: list[dict], **extra: object) -> Path:
    items_file = tmp_path / "items.json"
    items_file.write_text(json.dumps([{"v": v, "n": i} for i, v in enumerate(values)]))
    workflow = {
        "name": "inject",
        **extra,
        "map": {"input": "items.json", "id": "item-${item.n}", "agent_template": steps},
    }
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(workflow))
    return path


SPLIT_AND_GLOB = ["*", "a  b", " lead", "tab\there", "[ab]*", "?", "-n", ""]


def test_command_substitution_is_a_fresh_quoting_context(tmp_path: Path) -> None:
    # A value inside "$( ... )" or backticks is quoted for the substitution's
    # own command: no word splitting, no globbing (a "*" once listed the workspace).
    values = SPLIT_AND_GLOB + NASTY
    steps = [
        {"run": 'printf "%s" "$(printf "%s" ${item.v})" > "dollar-${item.n}"'},
        {"run": 'printf "%s" "`printf "%s" ${item.v}`" > "tick-${item.n}"'},
        {"run": 'x=`printf "%s" ${item.v}`; printf "%s" "$x" > "plain-tick-${item.n}"'},
        {"run": 'printf "%s" "$(printf "%s" "$(printf "%s" ${item.v})")" > "deep-${item.n}"'},
    ]
    result = run_workflow(_json_workflow(tmp_path, values, steps), tmp_path / "home")
    assert result.exit_code == 0, [r.data for r in records(result, "item.failed")]
    assert not list(tmp_path.rglob("PWNED"))
    for prefix in ("dollar", "tick", "plain-tick", "deep"):
        got = [(tmp_path / f"{prefix}-{i}").read_text() for i in range(len(values))]
        # $( ) strips trailing newlines from what it captures; nothing else may change.
        assert got == [v.rstrip("\n") for v in values], prefix


def test_nested_shells_receive_a_reference_not_the_text(tmp_path: Path) -> None:
    # bash -c, sh -c, eval, argv [sh, -c, ...] and an agent command that is a
    # shell: the inner shell expands the value itself, as data.
    values = SPLIT_AND_GLOB + NASTY
    steps = [
        {"run": 'bash -c "printf %s ${item.v} > bash-${item.n}"'},
        {"run": "sh -c 'printf %s ${item.v} > sh-${item.n}'"},
        {"run": 'sh -c "printf %s \\"${item.v}\\" > shq-${item.n}"'},
        {"run": 'eval "printf %s ${item.v} > eval-${item.n}"'},
        {"run": 'bash -c "sh -c \\"printf %s ${item.v} > twice-${item.n}\\""'},
        {"run": "sh <<EOF\nprintf %s ${item.v} > heredoc-${item.n}\nEOF"},
        {"argv": ["sh", "-c", "printf %s ${item.v} > argv-${item.n}"]},
        {"claude": "printf %s ${item.v} > agent-${item.n}"},
    ]
    wf = _json_workflow(tmp_path, values, steps, agent={"command": "sh -c"})
    result = run_workflow(wf, tmp_path / "home")
    assert result.exit_code == 0, [r.data for r in records(result, "item.failed")]
    assert not list(tmp_path.rglob("PWNED"))
    for prefix in ("bash", "sh", "shq", "eval", "twice", "heredoc", "argv", "agent"):
        got = [(tmp_path / f"{prefix}-{i}").read_text() for i in range(len(values))]
        assert got == values, prefix


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (
            "bash -c \"echo $'${item}'\"",
            "${item} is inside $'...' in the command string of bash, which sh and bash read "
            "differently (dash: a $ and single quotes), so no reference is safe in both "
            "(use '...' or double quotes)",
        ),
        (
            'sudo sh -c "echo ${item}"',
            "${item} is in the command string of sh started by sudo, which does not pass on "
            "the environment that carries the value (pass it as an argument: "
            'sh -c \'… "$1"\' _ "${item}")',
        ),
        (
            "bash -c \"cat <<'EOF'\n${item}\nEOF\"",
            "${item} is in a here-document with a quoted delimiter in the command string of "
            "bash, which is not expanded (write the delimiter unquoted, as <<EOF, and "
            "backslash each $, ` and \\ of the body that must stay as it is)",
        ),
        (
            "echo $(( $(cat ${item}) + 1 ))",
            "${item} is in a command substitution whose output is part of an arithmetic expression",
        ),
        (
            "python3 <<'EOF'\nprint('${item}')\nEOF",
            "${item} is in code for python3, which would run its value as code",
        ),
        (
            'bash -c "cd $(dirname ${item}) && make"',
            "${item} is in a command substitution whose output becomes code for bash (pass it "
            'as an argument: bash -c \'… "$1"\' _ "${item}")',
        ),
        (
            'python3 -c "print(${item})"',
            "${item} is in code for python3, which would run its value as code (pass it as "
            "an argument and read it there: python3 -c '… sys.argv[1]' \"${item}\")",
        ),
        ('ssh host "ls ${item}"', "${item} is in the command ssh runs"),
    ],
)
def test_unsafe_nested_placements_are_refused_with_the_safe_form(
    tmp_path: Path, command: str, expected: str
) -> None:
    wf = write_workflow(
        tmp_path,
        f"""
        name: unsafe
        map:
          items: [a]
          agent_template:
            - run: "true"
            - run: {json.dumps(command)}
        """,
    )
    with pytest.raises(WorkflowError) as info:
        load_workflow(wf)
    assert ":7: map.agent_template[1].run: " + expected in str(info.value)


def test_unsafe_argv_and_agent_placements_are_refused(tmp_path: Path) -> None:
    wf = write_workflow(
        tmp_path,
        """
        name: unsafe
        agent: {command: "bash -c"}
        map:
          items: [a]
          agent_template:
            - argv: [sh, -c, "echo $'${item}'"]
            - claude: "echo $(( $(cat ${item}) ))"
            - argv: [python3, -c, "print('${item}')"]
            - argv: [sh, -c, "echo '${item}'"]
            - claude: "echo '${item}' $(( ${item} ))"
        """,
    )
    with pytest.raises(WorkflowError) as info:
        load_workflow(wf)
    lines = str(info.value).splitlines()
    assert len(lines) == 3, lines  # single quotes and arithmetic are made safe
    assert ":7: map.agent_template[0].argv: ${item} is inside $'...' in the command " in lines[0]
    assert (
        ":8: map.agent_template[1].claude: ${item} is in a command substitution whose output "
        "is part of an arithmetic expression" in lines[1]
    )
    assert ":9: map.agent_template[2].argv: ${item} is in code for python3" in lines[2]


@pytest.mark.parametrize(
    "command",
    [
        'python3 manage.py -c "${item}"',
        'python3 -m lint -c "${item}"',
        'rsync -e ssh src "${item}"',
        'awk -F, "{print \\$1}" "${item}"',
        'bash -c \'echo "$1"\' _ "${item}"',
        'echo "sh -c ${item}"',
        "cat <<EOF\n${item}\nEOF",
        "cat <<'EOF'\n${item}\nEOF",
        "echo '${item}'",
        "bash -c \"echo '${item}'\"",
        "eval \"echo '${item}'\"",
        "jq '.[] | select(.p == ${item})' items.json",
        "echo $(( ${item} + 1 ))",
        "python3 -m json.tool <<EOF\n${item}\nEOF",
        '[ "${item}" -eq 1 ]',
        '[[ "${item}" == a* ]]',
    ],
)
def test_safe_placements_near_the_refused_ones_validate(tmp_path: Path, command: str) -> None:
    wf = write_workflow(
        tmp_path,
        f"""
        name: fine
        map:
          items: [a]
          agent_template:
            - run: {json.dumps(command)}
        """,
    )
    load_workflow(wf)
