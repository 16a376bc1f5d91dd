"""``write_file`` in real runs: in the map and in reduce, hostile values written byte for byte
and nothing executed; with isolation, inside the attempt's worktree and merged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.engine_helpers import (
    assert_replays,
    git,
    make_repo,
    records,
    run_workflow,
    write_workflow,
)

HOSTILE = [
    "it's a 'quote' and a \"double\"",
    "$(touch pwned-1)",
    "`touch pwned-2`",
    "line one\nline two\n; touch pwned-3 #",
    "${HOME} $HOME \\ \\n",
    '{"looks": "like json"}',
]


def _hostile_workflow(tmp_path: Path) -> Path:
    return write_workflow(
        tmp_path,
        f"""
        name: wf
        map:
          items: {json.dumps([{"value": v} for v in HOSTILE])}
          max_parallel: 3
          agent_template:
            - write_file:
                path: out/${{item_index}}.txt
                content: "${{item.value}}"
                create_dirs: true
            - write_file:
                path: out/${{item_index}}.json
                format: json
                content: '{{"item": ${{item}}, "index": ${{item_index}}}}'
            - run: printf '%s' "${{item.value}}"
              output: text
        reduce:
          - write_file:
              path: summary/results.json
              format: json
              content: "${{map.results}}"
              create_dirs: true
          - write_file:
              path: summary/total.txt
              content: "${{map.successful}} of ${{map.total}}: ${{map.results}}"
              mode: "0640"
        """,
    )


def test_hostile_values_are_written_byte_for_byte_in_the_map_and_reduce(tmp_path: Path) -> None:
    wf = _hostile_workflow(tmp_path)
    result = run_workflow(wf, tmp_path / "home")
    assert result.status == "completed", result.reason
    for index, value in enumerate(HOSTILE):
        assert (tmp_path / "out" / f"{index}.txt").read_bytes() == value.encode()
        written = (tmp_path / "out" / f"{index}.json").read_text()
        assert json.loads(written) == {"item": {"value": value}, "index": index}
        assert written.startswith('{\n  "item": {\n    "value": ')  # pretty, indent 2
    results = json.loads((tmp_path / "summary" / "results.json").read_text())
    assert sorted(results.values()) == sorted(v.strip() for v in HOSTILE)
    total = (tmp_path / "summary" / "total.txt").read_text()
    assert total.startswith(f"{len(HOSTILE)} of {len(HOSTILE)}: {{")
    assert (tmp_path / "summary" / "total.txt").stat().st_mode & 0o777 == 0o640
    assert not list(tmp_path.rglob("pwned*")), "a value was executed"
    # A write_file step prints nothing, and its reduce step adds nothing to the run's output.
    assert result.output == []
    assert len(records(result, "step.succeeded")) == 2


def test_a_path_out_of_the_workspace_fails_the_item_and_writes_nothing(tmp_path: Path) -> None:
    wf = write_workflow(
        tmp_path / "wf",
        """
        name: out
        map:
          items: ["../escaped.txt", "/tmp/engine-write-file-escape-test", "fine.txt"]
          id: "${item}"
          agent_template:
            - write_file: {path: "${item}", content: "x"}
        """,
    )
    result = run_workflow(wf, tmp_path / "home")
    assert result.exit_code == 1
    failed = {r.data.item: r.data for r in records(result, "item.failed")}
    assert set(failed) == {"../escaped.txt", "/tmp/engine-write-file-escape-test"}
    assert {d.error_type for d in failed.values()} == {"validation_failed"}
    assert failed["../escaped.txt"].message.startswith(
        "write_file ../escaped.txt: the path leads out of the workspace"
    )
    assert "engine: write_file /tmp/engine-write-file-escape-test: the path is absolute" in (
        failed["/tmp/engine-write-file-escape-test"].stderr_tail
    )
    assert not (tmp_path / "escaped.txt").exists()
    assert not Path("/tmp/engine-write-file-escape-test").exists()
    assert (tmp_path / "wf" / "fine.txt").read_text() == "x"


@pytest.mark.usefixtures("own_git")
def test_with_isolation_the_file_is_written_in_the_attempts_worktree_and_merged(
    tmp_path: Path,
) -> None:
    repo = make_repo(tmp_path / "repo")
    wf = write_workflow(
        repo / "flows",
        """
        name: iso
        map:
          items: [a, b]
          id: "${item}"
          isolation: worktree
          agent_template:
            - write_file:
                path: notes/${item}.md
                content: "note ${item}\\n"
                create_dirs: true
            - write_file: {path: "../../outside-${item}.md", content: "x"}
        """,
    )
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "workflow")
    result = run_workflow(wf, tmp_path / "home")
    assert_replays(result)
    # "../" from the workflow's directory stays in the worktree; "../../" leaves it.
    failed = {r.data.item: r.data.message for r in records(result, "item.failed")}
    assert set(failed) == {"a", "b"}
    assert all("leads out of the workspace" in m for m in failed.values())
    assert not list(tmp_path.rglob("outside-*.md"))
    assert not (repo / "flows" / "notes").exists()  # the checkout is untouched

    wf.write_text(wf.read_text().replace("../../outside", "../inside"))
    git(repo, "commit", "-q", "-am", "inside")
    result = run_workflow(wf, tmp_path / "home")
    assert result.status == "completed", result.reason
    branch = f"engine/{result.run_id}"
    assert git(repo, "show", f"{branch}:flows/notes/a.md") == "note a\n"
    assert git(repo, "show", f"{branch}:inside-b.md") == "x"
    assert not (repo / "flows" / "notes").exists()
