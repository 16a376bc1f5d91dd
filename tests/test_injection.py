"""An item's value never changes a command's syntax; commands get it byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.workflow import WorkflowError, load_workflow
from tests.engine_helpers import records, run_workflow, write_workflow

NASTY = [
    "$(touch PWNED)",
    "`touch PWNED`",
    '"; touch PWNED; "',
    "' ; touch PWNED ; '",
    "line one\nline two; touch PWNED\n",
    "${HOME} $PATH \\ \\n \\$(touch PWNED)",
    "tab\there & touch PWNED | cat > PWNED",
    "ünïcødé ☃ \x01\x02\x7f binary-looking \udc80".encode("utf-8", "surrogateescape").decode(
        "utf-8", "replace"
    ),
    "-n",
    "",
]


@pytest.mark.parametrize("kind", ["run-unquoted", "run-double-quoted", "argv", "env"])
def test_values_reach_commands_as_data(tmp_path: Path, kind: str) -> None:
    items_file = tmp_path / "items.json"
    items_file.write_text(json.dumps([{"v": v, "n": i} for i, v in enumerate(NASTY)]))
    step = {
        "run-unquoted": 'printf "%s" ${item.v} > "out-${item.n}"',
        "run-double-quoted": 'printf "%s" "${item.v}" > "out-${item.n}"',
        "argv": None,
        "env": 'printf "%s" "$VALUE" > "out-${item.n}"',
    }[kind]
    if kind == "argv":
        code = 'import sys; open(f\\"out-{sys.argv[2]}\\", \\"w\\").write(sys.argv[1])'
        template = f'- argv: [python3, -c, "{code}", "${{item.v}}", "${{item.n}}"]'
    elif kind == "env":
        template = f'- run: {json.dumps(step)}\n              env: {{VALUE: "${{item.v}}"}}'
    else:
        template = f"- run: {json.dumps(step)}"
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
    for i, value in enumerate(NASTY):
        # Unquoted too: the engine quotes the reference, so no word splitting or globbing.
        assert (tmp_path / f"out-{i}").read_text() == value


def test_variable_in_single_quotes_is_a_validation_error(tmp_path: Path) -> None:
    wf = write_workflow(
        tmp_path,
        """
        name: unsafe
        map:
          items: [a]
          agent_template:
            - run: echo '${item}'
        """,
    )
    with pytest.raises(WorkflowError) as info:
        load_workflow(wf)
    assert "inside single quotes" in str(info.value)
    assert ":6: map.agent_template[0].run:" in str(info.value)
