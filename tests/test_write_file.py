"""``write_file`` steps: written by the engine inside the workspace, never outside it;
their content as data, checked when it is JSON or YAML; atomic; ``engine validate``."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from engine.exec.program import StepResult, ValueFiles, step_command
from engine.exec.write_file import perform
from engine.workflow.checks import check_document
from engine.workflow.programs import missing_programs
from engine.workflow.spec import Step
from tests.engine_helpers import engine_in_process, write_workflow

HOSTILE = 'it\'s "quoted" $(touch pwned) `touch pwned2` ${HOME}\nline two\n\ttab ünï 🙂\n'


def _write(
    tmp_path: Path, context: dict[str, Any] | None = None, *, cwd: str | None = None, **spec: Any
) -> StepResult:
    step = Step.model_validate({"write_file": spec, **({"cwd": cwd} if cwd else {})})
    root = tmp_path / "ws"
    root.mkdir(exist_ok=True)
    return perform(step, context or {}, cwd=root, root=root)


def _refused(result: StepResult, *words: str) -> None:
    assert result.error_type == "validation_failed", result
    assert result.exit_code is None
    assert result.error is not None
    for word in words:
        assert word in result.error, result.error


def test_a_file_is_written_with_its_content_as_data_byte_for_byte(tmp_path: Path) -> None:
    result = _write(tmp_path, {"item": {"text": HOSTILE}}, path="out.txt", content="${item.text}")
    assert result == StepResult(exit_code=0)  # prints nothing
    assert (tmp_path / "ws" / "out.txt").read_bytes() == HOSTILE.encode()
    assert not list(tmp_path.rglob("pwned*"))
    assert [p.name for p in (tmp_path / "ws").iterdir()] == ["out.txt"]  # no temporary left


def test_the_path_is_a_template_relative_to_the_steps_cwd(tmp_path: Path) -> None:
    (tmp_path / "ws" / "sub").mkdir(parents=True)
    result = _write(tmp_path, {"item_id": "a b"}, cwd="sub", path="r-${item_id}.md", content="x")
    assert result.exit_code == 0
    assert (tmp_path / "ws" / "sub" / "r-a b.md").read_text() == "x"


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("/etc/passwd-engine-test", ("is absolute",)),
        ("../outside.txt", ("leads out of the workspace",)),
        ("a/../../outside.txt", ("leads out of the workspace",)),
        ("", ("is empty",)),
        ("dir/", ("names a directory",)),
        ("..", ("names a directory",)),
    ],
)
def test_a_path_out_of_the_workspace_is_refused(tmp_path: Path, path: str, words: Any) -> None:
    (tmp_path / "ws" / "a").mkdir(parents=True)
    _refused(_write(tmp_path, path=path, content="x", create_dirs=True), *words)
    assert not (tmp_path / "outside.txt").exists()


def test_a_rendered_value_cannot_lead_out_either(tmp_path: Path) -> None:
    for value in ("../../x", "/tmp/x-engine-test"):
        _refused(_write(tmp_path, {"item": value}, path="${item}", content="x"), "write_file")
    assert not (tmp_path / "x").exists()


def test_dot_dot_that_stays_inside_is_fine(tmp_path: Path) -> None:
    (tmp_path / "ws" / "a").mkdir(parents=True)
    assert _write(tmp_path, path="a/../b.txt", content="x").exit_code == 0
    assert (tmp_path / "ws" / "b.txt").read_text() == "x"


def test_a_symlinked_directory_leading_out_is_refused_even_to_create_dirs(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "link").symlink_to(outside)
    _refused(_write(tmp_path, path="link/x.txt", content="x"), "symbolic link", "leads out")
    _refused(_write(tmp_path, path="link/new/x.txt", content="x", create_dirs=True), "leads out")
    assert list(outside.iterdir()) == []


def test_a_symlinked_file_leading_out_is_refused_and_left_alone(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("keep")
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "f.txt").symlink_to(secret)
    (tmp_path / "ws" / "dangling").symlink_to(tmp_path / "nothing-yet")
    _refused(_write(tmp_path, path="f.txt", content="x"), "symbolic link", "leads out")
    _refused(_write(tmp_path, path="dangling", content="x"), "leads out")
    assert secret.read_text() == "keep"
    assert not (tmp_path / "nothing-yet").exists()


def test_symlinks_that_stay_inside_are_followed(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    (ws / "real").mkdir(parents=True)
    (ws / "alias").symlink_to(ws / "real")
    (ws / "real" / "target.txt").write_text("old")
    (ws / "f.txt").symlink_to(ws / "real" / "target.txt")
    assert _write(tmp_path, path="alias/a.txt", content="1").exit_code == 0
    assert _write(tmp_path, path="f.txt", content="2").exit_code == 0
    assert (ws / "real" / "a.txt").read_text() == "1"
    assert (ws / "real" / "target.txt").read_text() == "2"
    assert (ws / "f.txt").is_symlink()


def test_missing_directories_need_create_dirs(tmp_path: Path) -> None:
    _refused(_write(tmp_path, path="a/b/c.txt", content="x"), "'a' does not exist", "create_dirs")
    assert _write(tmp_path, path="a/b/c.txt", content="x", create_dirs=True).exit_code == 0
    assert (tmp_path / "ws" / "a" / "b" / "c.txt").read_text() == "x"
    (tmp_path / "ws" / "plain").write_text("")
    _refused(_write(tmp_path, path="plain/c.txt", content="x", create_dirs=True), "not a directory")
    (tmp_path / "ws" / "d").mkdir()
    _refused(_write(tmp_path, path="d", content="x"), "is a directory")


def test_mode_sets_the_permissions_and_a_replaced_file_keeps_its_own(tmp_path: Path) -> None:
    assert _write(tmp_path, path="run.sh", content="#!/bin/sh\n", mode="0750").exit_code == 0
    target = tmp_path / "ws" / "run.sh"
    assert stat.S_IMODE(target.stat().st_mode) == 0o750
    assert _write(tmp_path, path="run.sh", content="#!/bin/sh\necho\n").exit_code == 0
    assert stat.S_IMODE(target.stat().st_mode) == 0o750
    assert target.read_text() == "#!/bin/sh\necho\n"
    umask = os.umask(0o022)
    os.umask(umask)
    assert _write(tmp_path, path="new.txt", content="").exit_code == 0
    assert stat.S_IMODE((tmp_path / "ws" / "new.txt").stat().st_mode) == 0o666 & ~umask


def test_json_content_must_parse_and_is_written_pretty(tmp_path: Path) -> None:
    context = {"item": {"n": 3, "name": HOSTILE}}  # as ${item} renders it: keys sorted
    result = _write(
        tmp_path, context, path="c.json", format="json", content='{"item": ${item}, "k": [1]}'
    )
    assert result.exit_code == 0
    text = (tmp_path / "ws" / "c.json").read_text()
    assert (
        text == json.dumps({"item": context["item"], "k": [1]}, indent=2, ensure_ascii=False) + "\n"
    )
    bad = _write(tmp_path, path="bad.json", format="json", content='{"a": 1,}')
    _refused(bad, "write_file bad.json: the content is not JSON (", "line 1 column 9")
    _refused(_write(tmp_path, path="nan.json", format="json", content="NaN"), "not JSON")
    assert not (tmp_path / "ws" / "bad.json").exists()


def test_yaml_content_must_parse_and_is_written_in_block_style(tmp_path: Path) -> None:
    result = _write(
        tmp_path, {"v": "x: y"}, path="c.yml", format="yaml", content="a: {b: [1, 2]}\nc: '${v}'\n"
    )
    assert result.exit_code == 0
    assert (tmp_path / "ws" / "c.yml").read_text() == "a:\n  b:\n  - 1\n  - 2\nc: 'x: y'\n"
    bad = _write(tmp_path, path="bad.yml", format="yaml", content="a: [1, 2\n")
    _refused(bad, "write_file bad.yml: the content is not YAML (", "line 2")


def test_an_unknown_variable_fails_the_step(tmp_path: Path) -> None:
    _refused(_write(tmp_path, path="x-${nope}", content=""), "write_file x-${nope}", "unknown")


def test_a_write_file_step_has_no_command_and_no_program(tmp_path: Path) -> None:
    step = Step.model_validate({"write_file": {"path": "x", "content": "y"}})
    with pytest.raises(ValueError, match="write_file step is written by the executor"):
        step_command(
            step,
            {},
            env={},
            agent_command=["claude"],
            heartbeat_file="hb",
            files=ValueFiles(str(tmp_path), "v"),
        )
    data = {"name": "x", "map": {"items": [1], "agent_template": [{"write_file": {"path": "x"}}]}}
    assert missing_programs(data, {"PATH": ""}) == []


def _findings(step: dict[str, Any]) -> list[str]:
    checks = check_document({"name": "x", "map": {"items": [1], "agent_template": [step]}})
    return [f"{'.'.join(map(str, f.loc))}: {f.message}" for f in checks.findings]


def test_its_templates_are_checked_as_text() -> None:
    script = 'v="$1"; echo "${v:-none} ${item}"'
    assert _findings({"write_file": {"path": "${item_id}.sh", "content": script}}) == []
    found = _findings({"write_file": {"path": "${item.x|y}", "content": "${nope}"}})
    assert found[0].startswith(
        "map.agent_template.0.write_file.path: ${item.x|y} is not a variable"
    )
    assert found[1].startswith("map.agent_template.0.write_file.content: unknown variable ${nope}")
    assert len(found) == 2


def test_engine_validate_refuses_a_literal_path_out_of_the_workspace(tmp_path: Path) -> None:
    write_workflow(
        tmp_path,
        """\
        name: w
        map:
          items: [1]
          agent_template:
            - write_file:
                path: /etc/engine-test
            - write_file: {path: "../${item}.txt", content: x}
            - cwd: sub
              write_file: {path: "../ok.txt"}
        """,
    )
    proc = engine_in_process("validate", "wf.yml", cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert lines[0].startswith(
        "wf.yml:6: map.agent_template[0].write_file.path: an absolute path leaves the workspace"
    ), lines
    assert lines[1].startswith(
        "wf.yml:7: map.agent_template[1].write_file.path: '..' leads out of the workspace"
    ), lines
    assert len([line for line in lines if line.startswith("wf.yml:")]) == 2, lines
