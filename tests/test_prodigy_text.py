"""What a Prodigy workflow's text becomes: values as data wherever they stand, and the
`${...}` Prodigy leaves alone left alone, in real runs."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from tests.engine_helpers import engine_in_process, git, make_repo

pytestmark = pytest.mark.usefixtures("own_git")


def _run(tmp_path: Path, workflow: str, env: dict[str, str] | None = None) -> tuple[Path, str]:
    repo = make_repo(tmp_path / "repo", {"README": "x\n", "tmpl.txt": "version=${VERSION}\n"})
    (repo / "wf.yml").write_text(textwrap.dedent(workflow))
    git(repo, "add", "wf.yml")
    git(repo, "commit", "-q", "-m", "wf")
    done = engine_in_process(
        "--home",
        str(tmp_path / "home"),
        "run",
        "wf.yml",
        "--no-progress",
        cwd=repo,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return tmp_path / "home", done.stdout


def test_an_env_value_in_a_command_input_is_data(tmp_path: Path) -> None:
    hostile = "x'; touch PWNED; echo '"
    home, out = _run(
        tmp_path,
        f"""
        name: hostile-input
        mode: mapreduce
        env:
          NAME: "{hostile}"
          DIR: "."
        map:
          input: "for f in ${{DIR}}/README; do printf '%s\\\\n' \\"$f:${{NAME}}\\"; done"
          agent_template:
            - shell: "printf '%s' '${{item}}' > value.txt && git add value.txt && git commit -qm v"
        reduce:
          - shell: "cat value.txt"
        """,
    )
    assert f"./README:{hostile}" in out
    assert not list(home.rglob("PWNED")) and not list(tmp_path.rglob("PWNED"))


def test_what_prodigy_leaves_alone_reaches_the_shell_as_written(tmp_path: Path) -> None:
    _, out = _run(
        tmp_path,
        """
        name: literal
        mode: mapreduce
        map:
          input: README
          agent_template: [{shell: "true"}]
        reduce:
          - shell: "echo '${HOME}' > lit.txt; cat lit.txt"
          - shell: "sed 's/${VERSION}/1.0/' tmpl.txt"
          - shell: "V=2; echo ${V} \\"${V}\\""
          - shell: |
              cat <<'EOF'
              quoted ${VERSION} here
              EOF
        """,
        env={"HOME": "/somewhere"},
    )
    assert "${HOME}\n" in out
    assert "version=1.0" in out
    assert "2 2" in out
    assert "quoted ${VERSION} here" in out


def test_an_exported_variable_reaches_a_prompt(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "claude"
    stub.write_text('#!/bin/sh\nprintf "%s\\n" "$3" > "$PROMPT_FILE"\n')
    stub.chmod(0o755)
    _run(
        tmp_path,
        """
        name: prompt-env
        mode: mapreduce
        map:
          input: README
          agent_template:
            - claude: "/echo use ${STYLE_GUIDE} not ${NOT_SET_ANYWHERE} for ${item}"
        """,
        env={
            "STYLE_GUIDE": "g.md",
            "PROMPT_FILE": str(tmp_path / "prompt.txt"),
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        },
    )
    assert (tmp_path / "prompt.txt").read_text() == (
        "/echo use g.md not ${NOT_SET_ANYWHERE} for x\n"
    )


def test_map_results_name_each_items_commits_and_files(tmp_path: Path) -> None:
    home, _ = _run(
        tmp_path,
        """
        name: results-shape
        mode: mapreduce
        map:
          input: "printf 'a\\\\nb\\\\n'"
          agent_template:
            - shell: "echo ${item} > out-${item}.txt && git add out-${item}.txt"
            - shell: "git commit -qm 'item ${item}'"
        reduce:
          - shell: "printf '%s' '${map.results}' > results.json; echo written"
        """,
    )
    run = next((home / "worktrees").iterdir())
    results = json.loads((run / "run" / "results.json").read_text())
    assert [(r["item_id"], r["status"], r["files_modified"]) for r in results] == [
        ("item_0", "Success", ["out-a.txt"]),
        ("item_1", "Success", ["out-b.txt"]),
    ]
    assert all(len(r["commits"]) == 1 and len(r["commits"][0]) == 40 for r in results)
