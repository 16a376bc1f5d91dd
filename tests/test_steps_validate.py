"""Validation of the variables steps leave for the next (``${shell.*}``, ``${claude.*}``,
``${last.stderr}``), of capture formats and of what handlers cannot use."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import yaml

from engine.workflow.checks import check_document
from tests.conftest import ENGINE
from tests.engine_helpers import write_workflow


def _findings(text: str) -> list[tuple[str, str, bool]]:
    checks = check_document(yaml.safe_load(textwrap.dedent(text)))
    return [(".".join(map(str, f.loc)), f.message, f.warning) for f in checks.findings]


def _map(*steps: str) -> str:
    body = "\n".join(f"    - {s}" for s in steps)
    return f"name: t\nagent: {{command: echo}}\nmap:\n  items: [1]\n  agent_template:\n{body}\n"


def test_shell_and_claude_are_known_after_a_step_of_their_kind() -> None:
    assert _findings(_map("{run: a}", '{run: \'echo "${shell.stderr}" "${last.stderr}"\'}')) == []
    assert _findings(_map("{claude: p}", "{run: 'echo \"${claude.output}\"'}")) == []
    assert _findings(_map("{argv: [a]}", '{claude: "${last.stderr}"}')) == []
    (after_argv,) = _findings(_map("{argv: [a]}", "{run: 'echo \"${shell.output}\"'}"))
    assert "${shell} is known only after an earlier run (shell) step" in after_argv[1]
    (after_shell,) = _findings(_map("{run: a}", "{run: 'echo \"${claude.exit_code}\"'}"))
    assert "${claude} is known only after an earlier claude step" in after_shell[1]
    (no_stderr,) = _findings(_map("{claude: p}", "{run: 'echo \"${claude.stderr}\"'}"))
    assert "${claude} keeps no stderr: the previous step's is ${last.stderr}" in no_stderr[1]


def test_a_handler_sees_the_failed_step_by_its_kind() -> None:
    claude_handler = "{claude: p, on_failure: [{run: 'echo \"${claude.output}\"'}]}"
    assert _findings(_map(claude_handler)) == []
    shell_in_claude_handler = (
        "{claude: p, on_failure: {steps: [{run: 'echo \"${shell.output}\"'}]}}"
    )
    (found,) = _findings(_map(shell_in_claude_handler))
    assert found[0] == "map.agent_template.0.on_failure.steps.0.run"
    assert "${shell} is known only after an earlier run (shell) step" in found[1]
    reduce = """\
    name: t
    reduce:
      - run: "false"
        on_failure: {steps: [{run: 'echo "${shell.stderr}"'}], recover: true}
      - run: 'echo "${shell.stderr}"'
    """
    (found,) = _findings(reduce)  # a reduce step runs alone: only its handlers see it
    assert found[0] == "reduce.1.run"


def test_warnings_for_what_would_have_no_effect() -> None:
    found = _findings(
        _map(
            "{run: a, capture_format: number}",
            "{run: b, on_failure: [{run: h, retry: {max_attempts: 2}, on_failure: [{run: x}]}]}",
        )
    )
    assert found == [
        (
            "map.agent_template.0.capture_format",
            "capture_format has no effect without capture_output (add capture_output: NAME "
            "to keep the step's output as ${NAME})",
            True,
        ),
        (
            "map.agent_template.1.on_failure.0.retry",
            "retry has no effect in an on_failure step (handlers are not retried and have no "
            "handlers): give it to the step that fails",
            True,
        ),
        (
            "map.agent_template.1.on_failure.0.on_failure",
            "on_failure has no effect in an on_failure step (handlers are not retried and have "
            "no handlers): give it to the step that fails",
            True,
        ),
    ]


def test_engine_validate_accepts_the_step_fields(tmp_path: Path) -> None:
    wf = write_workflow(
        tmp_path,
        """\
        name: fields
        phase_timeout: {setup: 5m, reduce: 1m, merge: 30s}
        setup:
          - run: echo 3
            capture_output: n
            capture_format: number
        map:
          items: [1]
          agent_template:
            - run: "true"
              retry: {max_attempts: 3, backoff: fibonacci, retry_on: [command_failed]}
              on_failure:
                steps: [{run: 'echo "${shell.stderr}" "${last.exit_code}"'}]
                rerun: 2
                recover: true
            - run: 'echo "${shell.exit_code}" "${n}"'
              capture_output: ok
              capture_format: boolean
        """,
    )
    proc = subprocess.run(
        [ENGINE, "validate", str(wf)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
