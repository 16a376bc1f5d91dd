"""The Prodigy dialect's translation: Prodigy's defaults, spellings and keys, each where written."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from engine.errors import WorkflowError
from engine.workflow.load import load_workflow, validate_workflow
from engine.workflow.prodigy import AGENT_COMMAND
from engine.workflow.prodigy_keys import KEYS, docs_table
from engine.workflow.spec import ERROR_TYPES, Workflow
from tests.engine_helpers import make_repo

pytestmark = pytest.mark.usefixtures("own_git")

DOCS = Path(__file__).parent.parent / "docs"

BASE = """
name: t
mode: mapreduce
map:
  input: items.json
  agent_template:
    - shell: echo ${item}
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "wf.yml"
    path.write_text(textwrap.dedent(text))
    return path


def _spec(tmp_path: Path, text: str) -> Workflow:
    return load_workflow(_write(tmp_path, text)).spec


def _problems(tmp_path: Path, text: str) -> list[str]:
    make_repo(tmp_path, {"items.json": "[1, 2]"})
    _, problems = validate_workflow(_write(tmp_path, text))
    return [str(p) for p in problems]


def _error_lines(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(WorkflowError) as caught:
        load_workflow(_write(tmp_path, text))
    return [str(p) for p in caught.value.problems if p.severity == "error"]


def test_prodigy_defaults_apply(tmp_path: Path) -> None:
    spec = _spec(tmp_path, BASE)
    assert spec.map is not None
    assert spec.agent.command == AGENT_COMMAND
    assert spec.map.max_parallel == 10
    assert spec.map.isolation == "worktree"
    # no retry unless asked for, but of an attempt a crash cut short
    assert (spec.map.retry.max_attempts, spec.map.retry.retry_on) == (
        2,
        ["interrupted", "worker_lost"],
    )
    assert spec.map.input_missing == "command"
    assert spec.map.id == "item_${item_index}"
    assert spec.map.agent_template[-1].output == "text"


def test_only_mapreduce_mode_is_read(tmp_path: Path) -> None:
    errors = _error_lines(tmp_path, BASE.replace("mode: mapreduce", "mode: standard"))
    assert errors == [
        f"{tmp_path / 'wf.yml'}:3: mode: mode 'standard' is not read: only Prodigy's "
        "MapReduce workflows are (write mode: mapreduce, or drop mode and write the engine's "
        "own format)"
    ]
    assert _spec(tmp_path, BASE.replace("mode: mapreduce", "mode: MapReduce")).map is not None


def test_max_parallel_and_timeouts_from_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FROM_SHELL", "7")
    text = BASE + textwrap.dedent(
        """
        env: {WORKERS: "3", AGENT_TIMEOUT: 90}
        setup:
          commands: [{shell: "true"}]
          timeout: ${FROM_SHELL}
        """
    )
    text = text.replace(
        "  agent_template:",
        "  max_parallel: ${WORKERS}\n  agent_timeout_secs: $AGENT_TIMEOUT\n  agent_template:",
    )
    spec = _spec(tmp_path, text)
    assert spec.map is not None
    assert spec.map.max_parallel == 3
    assert spec.map.timeout == 90
    assert spec.phase_timeout.setup == 7


def test_an_unset_variable_is_one_line_at_its_key(tmp_path: Path) -> None:
    text = BASE.replace(
        "  agent_template:", "  max_parallel: $NO_SUCH_VARIABLE_X\n  agent_template:"
    )
    errors = _error_lines(tmp_path, text)
    assert len(errors) == 1
    assert ":6: map.max_parallel: environment variable 'NO_SUCH_VARIABLE_X' is not set" in errors[0]


def test_engine_errors_point_at_the_prodigy_keys(tmp_path: Path) -> None:
    text = BASE + "error_policy:\n  max_failures: 0\n  circuit_breaker: {failure_threshold: 0}\n"
    errors = _error_lines(tmp_path, text)
    assert any(":9: error_policy.max_failures:" in e for e in errors), errors
    assert any(":10: error_policy.circuit_breaker.failure_threshold:" in e for e in errors), errors


def test_each_unsupported_key_is_said_once(tmp_path: Path) -> None:
    text = BASE.replace(
        "    - shell: echo ${item}",
        "    - shell: echo ${item}\n      capture_streams: both\n      colour: blue\n"
        "  timeout_per_agent: 600s",
    )
    problems = _problems(tmp_path, text)
    warned = [p for p in problems if "warning:" in p]
    assert len([p for p in warned if "capture_streams" in p]) == 1
    assert len([p for p in warned if "'colour' is not a key Prodigy reads here" in p]) == 1
    assert len([p for p in warned if "timeout_per_agent" in p]) == 1
    assert not [p for p in problems if "warning:" not in p and "program" not in p], problems


@pytest.mark.parametrize(
    ("step", "key"),
    [
        ("goal_seek: {goal: x}", "goal_seek"),
        ("foreach: {items: [a], do: []}", "foreach"),
        ("shell: echo x\n      when: '${x} == 1'", "when"),
        ("shell: echo x\n      on_exit_code: {1: {shell: echo}}", "on_exit_code"),
    ],
)
def test_keys_whose_absence_changes_the_outcome_are_refused(
    tmp_path: Path, step: str, key: str
) -> None:
    text = BASE.replace("    - shell: echo ${item}", f"    - {step}")
    errors = _error_lines(tmp_path, text)
    assert any(f"Prodigy's {key!r} is refused" in e for e in errors), errors


def test_on_failure_has_prodigy_meaning(tmp_path: Path) -> None:
    text = BASE.replace(
        "    - shell: echo ${item}",
        textwrap.indent(
            textwrap.dedent(
                """\
                - shell: "false"
                  on_failure: {claude: /fix}
                - shell: "false"
                  on_failure: {shell: fix, max_attempts: 3, fail_workflow: true}
                - shell: "false"
                  on_failure: [{shell: a}, {shell: b}]
                - shell: "false"
                  on_failure: true
                """
            ),
            "    ",
        ),
    )
    spec = _spec(tmp_path, text)
    assert spec.map is not None
    handlers = [step.on_failure for step in spec.map.agent_template]
    assert [(len(h.steps), h.rerun, h.recover) for h in handlers] == [
        (1, 1, True),
        (1, 3, False),
        (2, 0, True),
        (0, 0, True),
    ]
    assert handlers[0].steps[0].claude == "/fix"


def _policy(tmp_path: Path, extra: str) -> Any:
    spec = _spec(tmp_path, BASE + textwrap.dedent(extra))
    assert spec.map is not None
    return spec


@pytest.mark.parametrize(
    ("action", "native"),
    [("dlq", "dlq"), ("skip", "ignore"), ("stop", "fail"), ("custom_thing", "ignore")],
)
def test_on_item_failure(tmp_path: Path, action: str, native: str) -> None:
    spec = _policy(tmp_path, f"error_policy: {{on_item_failure: {action}}}\n")
    assert spec.map.on_item_failure == native


def test_top_level_keys_override_error_policy(tmp_path: Path) -> None:
    spec = _policy(
        tmp_path,
        """
        max_failures: 4
        continue_on_failure: false
        error_collection: batched:5
        error_policy: {max_failures: 9, failure_threshold: 0.5}
        """,
    )
    assert (spec.map.max_failures, spec.map.failure_threshold) == (4, 0.5)
    assert spec.map.error_collection == "batched:5"
    assert _policy(tmp_path, "continue_on_failure: false\n").map.max_failures == 1


def test_retry_config_and_circuit_breaker(tmp_path: Path) -> None:
    spec = _policy(
        tmp_path,
        """
        error_policy:
          on_item_failure: retry
          retry_config:
            max_attempts: 4
            backoff: {fibonacci: {initial: 2s}}
          circuit_breaker: {failure_threshold: 2, success_threshold: 1, timeout: 1m}
        """,
    )
    retry = spec.map.retry
    assert (retry.max_attempts, retry.backoff, retry.initial) == (4, "fibonacci", 2.0)
    assert retry.retry_on == list(ERROR_TYPES)
    assert spec.map.on_item_failure == "dlq"
    circuit = spec.circuit_breaker
    assert circuit is not None
    assert (circuit.threshold, circuit.cooldown, circuit.success_threshold) == (2, 60.0, 1)
    assert circuit.half_open_requests == 3
    assert circuit.on == [t for t in ERROR_TYPES if t != "interrupted"]
    # retry without retry_config: Prodigy skips the item
    assert _policy(tmp_path, "on_item_failure: retry\n").map.on_item_failure == "ignore"


def test_variables_get_the_engine_names(tmp_path: Path) -> None:
    text = BASE + textwrap.dedent(
        """
        env: {PROJECT: demo}
        reduce:
          - shell: echo ${map.results} ${map.success_rate} $PROJECT ${PROJECT} ${local}
          - claude: "/sum ${map.results} --project $PROJECT"
        """
    )
    spec = _spec(tmp_path, text)
    assert spec.reduce[0].run == (
        "echo ${map.agent_results} ${map.success_percent} ${env.PROJECT} ${env.PROJECT} $${local}"
    )
    assert spec.reduce[1].claude == "/sum ${map.agent_results} --project ${env.PROJECT}"
    assert spec.reduce[1].env == {"PRODIGY_AUTOMATION": "true"}


def test_messages_name_the_variables_as_written(tmp_path: Path) -> None:
    text = BASE.replace("echo ${item}", "echo ${map.results}")
    errors = _error_lines(tmp_path, text)
    assert any("${map.results}" in e and "agent_results" not in e for e in errors), errors


def test_docs_table_is_the_key_table() -> None:
    text = (DOCS / "prodigy.md").read_text()
    section = text.split("## Every key\n\n", 1)[1]
    assert section[: section.index("\n\n") + 1] == docs_table()
    assert len({(k.where, k.name) for k in KEYS}) == len(KEYS)


def test_validate_counts_repairs_as_prodigy_does(tmp_path: Path) -> None:
    text = BASE.replace(
        "    - shell: echo ${item}",
        "    - claude: /fix\n"
        "      validate:\n"
        "        shell: check\n"
        "        result_file: out.json\n"
        "        threshold: 90\n"
        "        on_incomplete: {claude: /complete, max_attempts: 3, fail_workflow: false}\n"
        "    - claude: /fix\n"
        "      validate: {claude: /check, on_incomplete: {shell: repair}}",
    )
    spec = _spec(tmp_path, text)
    assert spec.map is not None
    first, second = (step.validate_ for step in spec.map.agent_template)
    assert first is not None and second is not None
    assert (first.result_file, first.threshold, first.steps[0].run) == ("out.json", 90, "check")
    assert first.on_incomplete is not None and second.on_incomplete is not None
    assert (first.on_incomplete.max_attempts, first.on_incomplete.fail) == (4, False)
    assert first.on_incomplete.steps[0].claude == "/complete"
    assert (second.on_incomplete.max_attempts, second.on_incomplete.fail) == (3, True)


MAP_LINE = "map:\n"


@pytest.mark.parametrize(
    ("extra", "where"),
    [
        ("secrets: 5\n", "secrets"),
        ("error_policy: {on_item_failure: [dlq]}\n", "error_policy.on_item_failure"),
        ("error_policy: []\n", "error_policy"),
        ("on_item_failure: 3\n", "on_item_failure"),
        ("error_policy: {continue_on_failure: 'no'}\n", "error_policy.continue_on_failure"),
        ("error_policy: {retry_config: []}\n", "error_policy.retry_config"),
        ("error_policy: {circuit_breaker: []}\n", "error_policy.circuit_breaker"),
        (
            "error_policy: {retry_config: {backoff: {exponential: 5}}}\n",
            "error_policy.retry_config.backoff.exponential",
        ),
        ("error_policy: {retry_config: {backoff: [1]}}\n", "error_policy.retry_config.backoff"),
    ],
)
def test_wrong_types_are_one_line_at_their_key(tmp_path: Path, extra: str, where: str) -> None:
    errors = _error_lines(tmp_path, BASE + extra)
    assert any(f": {where}: must be " in e for e in errors), errors


@pytest.mark.parametrize(
    ("map_extra", "step_extra", "where"),
    [
        ("  timeout_config: 5\n", "", "map.timeout_config"),
        (
            "  timeout_config: {agent_timeout_secs: 5, timeout_policy: Sometimes}\n",
            "",
            "map.timeout_config.timeout_policy",
        ),
        (
            "  timeout_config: {agent_timeout_secs: '10 minutes'}\n",
            "",
            "map.timeout_config.agent_timeout_secs",
        ),
        ("", "      on_failure: 3\n", "map.agent_template[0].on_failure"),
        (
            "",
            "      validate: {claude: /v, on_incomplete: 3}\n",
            "map.agent_template[0].validate.on_incomplete",
        ),
    ],
)
def test_wrong_types_in_the_map_are_one_line_at_their_key(
    tmp_path: Path, map_extra: str, step_extra: str, where: str
) -> None:
    text = BASE.replace("  agent_template:", map_extra + "  agent_template:") + step_extra
    errors = _error_lines(tmp_path, text)
    assert any(f": {where}: " in e for e in errors), errors


def test_handlers_given_as_text_and_other_forms_of_the_book(tmp_path: Path) -> None:
    text = BASE.replace(
        "    - shell: echo ${item}",
        "    - shell: npm test\n"
        "      on_failure: npm cache clean --force\n"
        "    - shell: cargo build\n"
        "      on_failure: [/fix-warnings, cargo clean]\n"
        "      on_success: {shell: echo built, claude: /celebrate}\n"
        "      retry: {attempts: 2, backoff: {type: exponential, initial: 1s, multiplier: 3}}",
    )
    spec = _spec(tmp_path, text)
    assert spec.map is not None
    first, second, *after = spec.map.agent_template
    assert [s.run for s in first.on_failure.steps] == ["npm cache clean --force"]
    assert [(s.claude, s.run) for s in second.on_failure.steps] == [
        ("/fix-warnings", None),
        (None, "cargo clean"),
    ]
    assert [(s.run, s.claude) for s in after] == [("echo built", None), (None, "/celebrate")]
    assert all(s.on_failure.recover for s in after)
    assert second.retry is not None
    assert (second.retry.backoff, second.retry.multiplier) == ("exponential", 3.0)


def test_per_command_timeouts_from_env(tmp_path: Path) -> None:
    text = "env: {T: '5'}\n" + BASE.replace(
        "  agent_template:",
        "  timeout_config: {agent_timeout_secs: $T, timeout_policy: PerCommand}\n  agent_template:",
    )
    spec = _spec(tmp_path, text)
    assert spec.map is not None
    assert spec.map.timeout is None
    assert [s.timeout for s in spec.map.agent_template] == [5.0]


@pytest.mark.parametrize(
    ("step_extra", "where", "line"),
    [
        ("      on_failure: {shell: fix, fail_workflow: 'yes'}\n", "on_failure.fail_workflow", 8),
        ("      on_failure: {shell: fix, max_attempts: x}\n", "on_failure.max_attempts", 8),
        ("      retry: {attempts: x}\n", "retry.attempts", 8),
        ("      max_attempts: x\n", "max_attempts", 8),
        ("      working_dir: 5\n", "working_dir", 8),
        (
            "      validate:\n        shell: v\n        on_incomplete:\n"
            "          shell: r\n          fail_workflow: 3\n",
            "validate.on_incomplete.fail_workflow",
            12,
        ),
    ],
)
def test_errors_name_the_prodigy_key(
    tmp_path: Path, step_extra: str, where: str, line: int
) -> None:
    errors = _error_lines(tmp_path, BASE + step_extra)
    assert any(f":{line}: map.agent_template[0].{where}" in e for e in errors), errors


def test_a_refused_step_kind_is_one_error(tmp_path: Path) -> None:
    errors = _error_lines(tmp_path, BASE.replace("- shell: echo ${item}", "- goal_seek: {goal: x}"))
    assert len(errors) == 1 and "Prodigy's 'goal_seek' is refused" in errors[0], errors


def test_values_read_with_the_file_see_profile_env_files_and_vars(tmp_path: Path) -> None:
    (tmp_path / "settings.env").write_text("FILE_PAR=2\nAGENT_T=40\n")
    text = (
        "env: {MAX_PARALLEL: '3'}\n"
        "env_files: [settings.env]\n"
        "profiles:\n"
        "  serial: {description: one at a time, MAX_PARALLEL: '1'}\n"
        + BASE.replace(
            "  agent_template:",
            "  max_parallel: ${MAX_PARALLEL}\n  agent_timeout_secs: $AGENT_T\n  agent_template:",
        )
    )
    path = _write(tmp_path, text)

    def parallel(**reading: Any) -> tuple[int, float | None]:
        spec = load_workflow(path, **reading).spec
        assert spec.map is not None
        return spec.map.max_parallel, spec.map.timeout

    assert parallel() == (3, 40.0)
    assert parallel(profile="serial") == (1, 40.0)
    assert parallel(profile="serial", variables={"MAX_PARALLEL": "5", "AGENT_T": "9"}) == (5, 9.0)
    (tmp_path / "wf.yml").write_text(text.replace("${MAX_PARALLEL}", "$FILE_PAR"))
    assert parallel() == (2, 40.0)


def test_a_misspelt_input_is_warned_of(tmp_path: Path) -> None:
    problems = _problems(tmp_path, BASE.replace("input: items.json", "input: item.json"))
    assert any(
        ":5: map.input: warning: no file 'item.json' here" in p and "run as a command" in p
        for p in problems
    ), problems
    assert not [p for p in _problems(tmp_path, BASE) if "map.input" in p]
    command = BASE.replace("input: items.json", "input: \"find . -name '*.json'\"")
    assert not [p for p in _problems(tmp_path, command) if "map.input" in p]
