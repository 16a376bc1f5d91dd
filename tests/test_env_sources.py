"""Where a run's variables come from: ``env_files``, ``env``, ``profiles``, ``secrets``, ``--var``.

Real runs (in process, real subprocesses) whose commands write what they
see; then the ledger says what was recorded: the profile's name, the values
read from the env files (secrets as ``***``), never a secret's value. A
resume keeps the run's profile and the env files' values as they were read.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from engine.errors import ProfileUnknown, ResumeRefused, WorkflowError
from engine.run import RunOptions, RunResult, resume_run
from engine.workflow.environment import read_env_file
from ledger.events import RunCreated, StepSucceeded
from tests.engine_helpers import engine_in_process, records, run_workflow, write_workflow

SHOW = (
    "import json, os, sys; "
    "json.dump({k: os.environ.get(k) for k in sys.argv[2:]}, open(sys.argv[1], 'w'))"
)


def _seen(path: Path) -> dict[str, str | None]:
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def _created(result: RunResult) -> RunCreated:
    (record,) = records(result, "run.created")
    assert isinstance(record.data, RunCreated)
    return record.data


def _captured(result: RunResult, name: str) -> object:
    for record in records(result, "step.succeeded"):
        assert isinstance(record.data, StepSucceeded)
        if record.data.captured == name:
            return record.data.captured_value
    raise AssertionError(f"no capture {name}")


LAYERS = f"""
name: layers
env_files: [.env, .env.local, .env.missing]
env: {{C: env, D: env}}
profiles:
  dev:
    description: the developer's machine
    D: profile
    E: profile
  ci: {{D: ci}}
setup:
  - argv: ["{sys.executable}", "-c", "{SHOW}", seen.json, A, B, C, D, E, description]
  - argv: [echo, "${{env.A}} ${{env.B}} ${{env.C}} ${{env.D}} ${{env.E}}"]
    capture_output: line
"""


def test_precedence_env_files_env_profile_var(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("# the team's\nA=file\nexport B='file'\nC=file\n")
    (tmp_path / ".env.local").write_text('B="local # not a comment"  # a comment\n')
    wf = write_workflow(tmp_path, LAYERS)
    warnings: list[str] = []
    result = run_workflow(
        wf,
        tmp_path / "home",
        profile="dev",
        variables={"E": "var"},
        warn=warnings.append,
    )
    assert result.status == "completed", result.reason
    seen = _seen(tmp_path / "seen.json")
    assert seen == {
        "A": "file",
        "B": "local # not a comment",
        "C": "env",
        "D": "profile",
        "E": "var",
        "description": None,  # a profile's description is not a variable
    }
    created = _created(result)
    assert created.profile == "dev"
    assert created.env_files == {"A": "file", "B": "local # not a comment", "C": "file"}
    assert created.vars == {"E": "var"}
    assert warnings == [f"warning: env_files: .env.missing not found in {tmp_path}: skipped"]
    assert _captured(result, "line") == "file local # not a comment env profile var"  # ${env.X}


def test_no_profile_means_env_alone(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("A=a\nB=b\nE=e\n")
    wf = write_workflow(tmp_path, LAYERS)
    result = run_workflow(wf, tmp_path / "home")
    assert result.status == "completed", result.reason
    assert _captured(result, "line") == "a b env env e"
    assert _created(result).profile is None


def test_unknown_profile_is_exit_2_with_the_known_names(tmp_path: Path) -> None:
    write_workflow(tmp_path, LAYERS)
    home = str(tmp_path / "home")
    for args in (
        ["run", "wf.yml", "--profile", "prod"],
        ["validate", "wf.yml", "--profile", "prod"],
    ):
        done = engine_in_process("--home", home, *args, cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip() == (
            "engine: error: --profile prod: the workflow has no such profile (known: ci, dev)"
        )
    assert not (tmp_path / "home" / "runs").exists()  # nothing was created
    with pytest.raises(ProfileUnknown) as info:
        run_workflow(tmp_path / "wf.yml", tmp_path / "home", profile="prod")
    assert info.value.known == ["ci", "dev"]
    ok = engine_in_process("validate", "wf.yml", "--profile", "ci", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr


RESUMED = f"""
name: resumed
env_files: [.env]
secrets: [TOKEN]
profiles:
  dev: {{P: dev}}
  ci: {{P: ci}}
map:
  items: [{{n: 0}}, {{n: 1}}]
  retry: {{max_attempts: 1}}
  agent_template:
    - run: test -e "ok-${{item.n}}"
    - argv: ["{sys.executable}", "-c", "{SHOW}", "seen-${{item.n}}.json", A, P, TOKEN]
"""


def test_resume_keeps_the_profile_and_the_env_files_as_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TOKEN", raising=False)
    (tmp_path / ".env").write_text("A=first\nTOKEN=tok-in-file-123\n")
    (tmp_path / "ok-0").write_text("")
    wf = write_workflow(tmp_path, RESUMED)
    home = tmp_path / "home"
    result = run_workflow(wf, home, profile="dev", run_id="r")
    assert result.status == "completed" and len(result.projections.dlq.dead) == 1
    assert _seen(tmp_path / "seen-0.json") == {"A": "first", "P": "dev", "TOKEN": "tok-in-file-123"}
    created = _created(result)
    assert created.env_files == {"A": "first", "TOKEN": "***"}  # a listed secret is not recorded
    assert b"tok-in-file-123" not in (result.run_dir / "ledger.ndjson").read_bytes()

    # The file changes; the resume runs with the values read when the run was created
    # (a secret, never recorded, is read again).
    (tmp_path / ".env").write_text("A=second\nTOKEN=tok-in-file-456\n")
    (tmp_path / "ok-1").write_text("")
    with pytest.raises(ResumeRefused, match="was started with --profile dev"):
        asyncio.run(resume_run(result.run_dir, RunOptions(profile="ci", include_dlq=True)))
    again = asyncio.run(resume_run(result.run_dir, RunOptions(include_dlq=True)))
    assert again.status == "completed" and not again.projections.dlq.dead
    assert _seen(tmp_path / "seen-1.json") == {"A": "first", "P": "dev", "TOKEN": "tok-in-file-456"}


def test_secrets_as_a_mapping_take_their_value_from_another_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GH_SOURCE", "gh-value-0123")
    monkeypatch.setenv("DB_SOURCE", "db-value-4567")
    monkeypatch.delenv("NOT_SET_SOURCE", raising=False)
    wf = write_workflow(
        tmp_path,
        f"""
        name: mapped
        secrets:
          API_TOKEN: GH_SOURCE
          DB_PASS: {{env: DB_SOURCE}}
          ABSENT: NOT_SET_SOURCE
        setup:
          - argv: ["{sys.executable}", "-c", "{SHOW}", seen.json, API_TOKEN, DB_PASS, ABSENT]
          - run: echo "db=${{env.DB_PASS}}"
            capture_output: shown
        """,
    )
    result = run_workflow(wf, tmp_path / "home")
    assert result.status == "completed", result.reason
    assert _seen(tmp_path / "seen.json") == {
        "API_TOKEN": "gh-value-0123",
        "DB_PASS": "db-value-4567",
        "ABSENT": None,  # as a listed secret that is not set
    }
    assert _captured(result, "shown") == "db=***"  # ${env.DB_PASS}: the value, redacted
    for path in result.run_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"gh-value-0123" not in data and b"db-value-4567" not in data, path


def test_env_file_format(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_text(
        "\ufeff# comment\n"
        "\n"
        "PLAIN = some value   # trailing comment\n"
        "export EXPORTED=yes\n"
        "HASH=a#b\n"
        "EMPTY=\n"
        "SINGLE='no $EXPANSION \\n here'\n"
        'DOUBLE="tab\\there \\"q\\" \\\\"\n'
        'MULTI="line one\n'
        'line two"\n'
        "EQUALS=a=b=c\r\n"
        "PLAIN=later wins\n"
    )
    assert read_env_file(path) == {
        "PLAIN": "later wins",
        "EXPORTED": "yes",
        "HASH": "a#b",
        "EMPTY": "",
        "SINGLE": "no $EXPANSION \\n here",
        "DOUBLE": 'tab\there "q" \\',
        "MULTI": "line one\nline two",
        "EQUALS": "a=b=c",
    }


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("A=1\nJUST_A_WORD\n", 2, "not KEY=VALUE"),
        ("A=1\n\n2BAD=x\n", 3, "'2BAD' is not an environment variable name"),
        ('A="open\nB=2\n', 1, "the value's \" is not closed"),
        ("A='x' y\n", 1, "text after the closing quote"),
    ],
)
def test_a_bad_env_file_line_is_named(tmp_path: Path, text: str, line: int, message: str) -> None:
    (tmp_path / ".env").write_text(text)
    with pytest.raises(WorkflowError) as info:
        read_env_file(tmp_path / ".env")
    (problem,) = info.value.problems
    assert (problem.file, problem.line) == (str(tmp_path / ".env"), line)
    assert message in problem.message
    wf = write_workflow(tmp_path, "name: x\nenv_files: [.env]\nsetup:\n  - run: 'true'\n")
    for args in (["validate", "wf.yml"], ["--home", "h", "run", "wf.yml"]):
        done = engine_in_process(*args, cwd=tmp_path)
        assert done.returncode == 2 and f".env:{line}: " in done.stderr, done.stderr
    assert wf.exists() and not (tmp_path / "h" / "runs").exists()


def test_validate_warns_of_a_missing_env_file_at_its_line(tmp_path: Path) -> None:
    (tmp_path / "a.env").write_text("A=1\n")
    write_workflow(
        tmp_path,
        """
        name: x
        env_files:
          - a.env
          - b.env
        setup:
          - run: echo "${env.A} ${env.NOWHERE}"
        """,
    )
    done = engine_in_process("validate", "wf.yml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (
        "wf.yml:5: env_files[1]: warning: b.env: no such file; a run skips it "
        "(create it, or remove it from env_files)"
    ) in done.stderr
    assert "NOWHERE" not in done.stderr  # env_files may set any name: not warned


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("env: {A: {value: 1}}", "env.A: `value` must be a string"),
        ("env: {A: {value: x, secrt: true}}", "env.A: unknown key 'secrt' in an env entry"),
        ("env: {A: {secret: true}}", "env.A: an env entry written as a mapping needs `value`"),
        (
            "secrets: {A: {file: x}}",
            "secrets: the source of A must be an environment variable's name",
        ),
        ("secrets: {A: 'not a name'}", "secrets: 'not a name' is not an environment variable"),
        ("profiles: {dev: {description: 3}}", "profiles.dev.description: must be a string"),
        ("env_files: ['']", "env_files[0]: string should have at least 1 character"),
    ],
)
def test_bad_environment_fields_are_one_line_each(
    tmp_path: Path, section: str, message: str
) -> None:
    write_workflow(tmp_path, f"name: x\n{section}\nsetup:\n  - run: 'true'\n")
    done = engine_in_process("validate", "wf.yml", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr, done.stderr
