"""Caching and artifacts: a second run runs nothing; a changed item runs alone."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.engine_helpers import records, run_workflow, write_workflow

WORKFLOW = """
name: cached
cache:
  key: ["${env.MODEL}"]
  inputs: ["prompt.txt"]
map:
  input: items.json
  id: "${item.name}"
  agent_template:
    - run: |
        echo "$ENGINE_ITEM_ID" >> calls.log
        mkdir -p out
        echo "summary of ${item.name}: ${item.text}" > "out/${item.name}.txt"
        echo '{"words": 3}'
      output: json
      artifacts: ["out/${item.name}.txt"]
env: {MODEL: small}
"""


def _setup(tmp_path: Path, texts: dict[str, str]) -> Path:
    (tmp_path / "items.json").write_text(
        json.dumps([{"name": k, "text": v} for k, v in texts.items()])
    )
    (tmp_path / "prompt.txt").write_text("summarise\n")
    return write_workflow(tmp_path, WORKFLOW)


def _calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "calls.log"
    return log.read_text().split() if log.exists() else []


def test_second_run_hits_the_cache_and_a_changed_item_runs_alone(tmp_path: Path) -> None:
    wf = _setup(tmp_path, {"a": "one", "b": "two", "c": "three"})
    home = tmp_path / "home"
    first = run_workflow(wf, home)
    assert first.status == "completed" and sorted(_calls(tmp_path)) == ["a", "b", "c"]
    written = records(first, "artifact.written")
    assert sorted(r.data.path for r in written) == ["out/a.txt", "out/b.txt", "out/c.txt"]
    assert all(r.data.status == "stored" and r.data.sha256.startswith("sha256:") for r in written)
    assert len(records(first, "cache.miss")) == 3

    second = run_workflow(wf, home)
    assert sorted(_calls(tmp_path)) == ["a", "b", "c"]  # no command ran
    assert second.projections.items.counts["skipped"] == 3
    assert len(records(second, "cache.hit")) == 3 and not records(second, "item.dispatched")
    skipped = records(second, "item.skipped")
    assert all(r.data.reason == "cache" and r.data.result == {"words": 3} for r in skipped)
    assert {r.data.status for r in records(second, "artifact.written")} == {"nochange"}

    # A deleted artifact is restored from the store; a changed item runs again, alone.
    os.unlink(tmp_path / "out" / "b.txt")
    (tmp_path / "items.json").write_text(
        json.dumps(
            [
                {"name": "a", "text": "one"},
                {"name": "b", "text": "two"},
                {"name": "c", "text": "THREE"},
            ]
        )
    )
    third = run_workflow(wf, home)
    assert sorted(_calls(tmp_path)) == ["a", "b", "c", "c"]
    assert (tmp_path / "out" / "b.txt").read_text() == "summary of b: two\n"
    status = {r.data.path: r.data.status for r in records(third, "artifact.written")}
    assert status["out/b.txt"] == "restored" and status["out/a.txt"] == "nochange"
    assert status["out/c.txt"] == "stored"
    assert (tmp_path / "out" / "c.txt").read_text() == "summary of c: THREE\n"


def test_inputs_key_and_flags_decide_what_runs(tmp_path: Path) -> None:
    wf = _setup(tmp_path, {"a": "one", "b": "two"})
    home = tmp_path / "home"
    run_workflow(wf, home)
    (tmp_path / "prompt.txt").write_text("summarise briefly\n")  # a declared input changed
    run_workflow(wf, home)
    assert sorted(_calls(tmp_path)) == ["a", "a", "b", "b"]
    run_workflow(wf, home, variables={"MODEL": "large"})  # the key's extra input changed
    assert len(_calls(tmp_path)) == 6
    run_workflow(wf, home, no_cache=True)
    assert len(_calls(tmp_path)) == 8
    refreshed = run_workflow(wf, home, refresh_cache=True)
    assert len(_calls(tmp_path)) == 10 and not records(refreshed, "cache.hit")
    last = run_workflow(wf, home)
    assert len(_calls(tmp_path)) == 10 and len(records(last, "cache.hit")) == 2


def test_artifacts_are_content_addressed_and_stay_in_the_workspace(tmp_path: Path) -> None:
    wf = write_workflow(
        tmp_path,
        """
        name: arts
        map:
          items: [x, y]
          agent_template:
            - run: mkdir -p build && echo same > "build/${item}.bin"
              artifacts: ["build/*.bin"]
        """,
    )
    result = run_workflow(wf, tmp_path / "home")
    written = records(result, "artifact.written")
    digests = {r.data.sha256 for r in written}
    assert len(digests) == 1  # same bytes, one stored copy
    stored = tmp_path / "home" / "store" / "sha256" / digests.pop()[7:9]
    assert len(list(stored.iterdir())) == 1
    from engine.errors import WorkflowError
    from engine.workflow.load import load_workflow

    bad = write_workflow(
        tmp_path,
        """
        name: escape
        map:
          items: [x]
          agent_template:
            - run: "true"
              artifacts: ["../outside.txt"]
        """,
        name="bad.yml",
    )
    try:
        load_workflow(bad)
    except WorkflowError as exc:
        assert "must stay inside the workspace" in str(exc)
    else:
        raise AssertionError("an artifact outside the workspace was accepted")


def test_artifacts_that_cannot_be_restored_make_a_miss_not_a_crash(tmp_path: Path) -> None:
    wf = _setup(tmp_path, {"a": "one"})
    home = tmp_path / "home"
    run_workflow(wf, home)
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    for f in (tmp_path / "out").iterdir():
        f.unlink()
    (tmp_path / "out").rmdir()
    (tmp_path / "out").symlink_to(outside)  # the artifact's place now leads out of the workspace
    second = run_workflow(wf, home)
    misses = records(second, "cache.miss")
    assert len(misses) == 1 and misses[0].data.reason.startswith("cannot restore")
    failed = records(second, "item.failed")
    assert len(failed) == 1 and "outside the workspace" in failed[0].data.message
    assert second.status == "completed" and not records(second, "cache.hit")


def test_a_resume_keeps_the_runs_cache_mode_unless_told(tmp_path: Path) -> None:
    import asyncio

    from engine.run import RunOptions, resume_run

    wf = write_workflow(
        tmp_path,
        """
        name: modes
        cache: {}
        map:
          items: [ok, bad]
          retry: {max_attempts: 1}
          agent_template:
            - run: '[ "${item}" = ok ]'
        """,
    )
    first = run_workflow(wf, tmp_path / "home", no_cache=True)
    assert records(first, "run.started")[0].data.cache == "off"
    assert not records(first, "cache.miss")  # the cache was not even looked at
    asyncio.run(resume_run(first.run_dir, RunOptions(include_dlq=True)))
    asyncio.run(resume_run(first.run_dir, RunOptions(include_dlq=True, refresh_cache=True)))
    resumed = [r.data.cache for r in records(first, "run.resumed")]
    assert resumed == ["off", "refresh"]
    misses = records(first, "cache.miss")  # refresh stores, never looks up
    assert [m.data.reason for m in misses] == ["refresh: not looked up"]
