"""Payloads over a record's 256 KiB, and values over what a process can be given.

Large item values, results and workflow files go to the content store and
are referenced from their records; a resume reads them back. A value too
large for the environment reaches a shell command through a file.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import pytest

from engine.run import RunOptions, resume_run
from engine.store.content import ContentStore
from ledger.codec import MAX_RECORD_BYTES
from tests.engine_helpers import records, run_workflow, write_workflow

MIB = 1 << 20


def _lines_fit(run_dir: Path) -> None:
    with open(run_dir / "ledger.ndjson", "rb") as f:
        assert all(len(line) <= MAX_RECORD_BYTES for line in f)


def test_a_one_mib_item_reaches_the_command_and_its_result_is_stored(tmp_path: Path) -> None:
    big = "v" * MIB
    (tmp_path / "items.json").write_text(json.dumps([{"id": "big", "text": big}]))
    wf = write_workflow(
        tmp_path,
        """
        name: big
        map:
          input: items.json
          id: "${item.id}"
          agent_template:
            - run: |
                printf '%s' "${item.text}" | wc -c
                wc -c < "$ENGINE_ITEM_FILE"
                printf '%s' "${item.text}"
              output: text
        """,
    )
    result = run_workflow(wf, tmp_path / "home")
    assert (result.status, result.exit_code) == ("completed", 0), result.reason
    _lines_fit(result.run_dir)
    store = ContentStore(tmp_path / "home")
    (enqueued,) = records(result, "item.enqueued")
    assert enqueued.data.value is None and enqueued.data.value_ref is not None
    assert store.get_json(enqueued.data.value_ref) == {"id": "big", "text": big}
    (succeeded,) = records(result, "item.succeeded")
    assert succeeded.data.result is None and succeeded.data.result_ref is not None
    # The value's text (the shell variable) and the item's JSON (the file).
    item_json = len(json.dumps({"id": "big", "text": big}, separators=(",", ":")))
    expected = f"{MIB}\n{item_json}\n{big}"
    assert store.get_json(succeeded.data.result_ref) == expected
    results = json.loads((result.run_dir / "results.json").read_text())
    assert results == {"big": expected}
    # The files that carried the values are gone with the attempt.
    assert list((result.run_dir / "values").iterdir()) == []


def test_an_argument_too_large_for_exec_is_a_typed_failure_naming_the_way(
    tmp_path: Path,
) -> None:
    (tmp_path / "items.json").write_text(json.dumps(["x" * (200 * 1024)]))
    wf = write_workflow(
        tmp_path,
        """
        name: argv
        map:
          input: items.json
          agent_template:
            - argv: [echo, "${item}"]
        """,
    )
    result = run_workflow(wf, tmp_path / "home")
    assert result.exit_code == 1
    (failed,) = records(result, "item.failed")
    assert failed.data.error_type == "validation_failed"
    assert "argument 1 of the command is 204800 bytes" in failed.data.message
    assert "$ENGINE_ITEM_FILE" in failed.data.message
    assert "Argument list too long" not in failed.data.stderr_tail


def test_a_workflow_over_a_record_and_its_items_are_stored_and_a_resume_reads_them(
    tmp_path: Path,
) -> None:
    # Inline items make the workflow file itself larger than a record.
    values = [f"{n}:" + "w" * (100 * 1024) for n in range(4)]
    wf = write_workflow(
        tmp_path,
        f"""
        name: inline
        map:
          items: {json.dumps(values)}
          id: "item-${{item_index}}"
          agent_template:
            - run: |
                test -f ok || {{ echo not yet >&2; exit 1; }}
                printf '%s' "${{item}}" | wc -c
              output: text
        """,
    )
    assert wf.stat().st_size > MAX_RECORD_BYTES
    first = run_workflow(wf, tmp_path / "home")
    assert first.exit_code == 1 and len(first.projections.dlq.dead) == 4
    _lines_fit(first.run_dir)
    (created,) = records(first, "run.created")
    assert created.data.workflow == "" and created.data.workflow_ref is not None
    store = ContentStore(tmp_path / "home")
    assert store.get_bytes(created.data.workflow_ref) == wf.read_bytes()

    (tmp_path / "ok").write_text("")
    resumed = asyncio.run(resume_run(first.run_dir, RunOptions(include_dlq=True)))
    assert (resumed.status, resumed.exit_code) == ("completed", 0), resumed.reason
    results = json.loads((first.run_dir / "results.json").read_text())
    assert results == {f"item-{n}": str(len(v)) for n, v in enumerate(values)}


def test_many_values_too_large_together_still_reach_the_shell(tmp_path: Path) -> None:
    # 24 values of 100 KiB: each fits an environment entry, together they are
    # over what exec takes for the arguments and environment (about 2 MiB).
    fields = {f"f{n}": chr(ord("a") + n) * (100 * 1024) for n in range(24)}
    (tmp_path / "items.json").write_text(json.dumps([fields]))
    refs = "".join(f"${{item.f{n}}}" for n in range(24))
    wf = write_workflow(
        tmp_path,
        f"""
        name: many
        map:
          input: items.json
          agent_template:
            - run: printf '%s' "{refs}" | sha256sum | cut -c1-64
              output: text
        """,
    )
    result = run_workflow(wf, tmp_path / "home")
    assert (result.status, result.exit_code) == ("completed", 0), records(result, "item.failed")
    expected = hashlib.sha256("".join(fields.values()).encode()).hexdigest()
    assert list(json.loads((result.run_dir / "results.json").read_text()).values()) == [expected]


def test_what_goes_to_the_store_is_redacted_like_the_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BIG_TOKEN", "tok-4f1c9e")
    padding = "p" * (300 * 1024)
    wf = write_workflow(
        tmp_path,
        f"""
        name: secret
        secrets: [BIG_TOKEN]
        # the token's value, written into the file by mistake: tok-4f1c9e
        # {padding}
        map:
          items: [1]
          agent_template:
            - run: "true"
        """,
    )
    result = run_workflow(wf, tmp_path / "home")
    (created,) = records(result, "run.created")
    assert created.data.workflow_ref is not None
    stored = ContentStore(tmp_path / "home").get_bytes(created.data.workflow_ref)
    assert b"tok-4f1c9e" not in stored and b"written into the file by mistake: ***" in stored


def test_a_large_value_a_child_shell_expands_fails_the_attempt_loudly(tmp_path: Path) -> None:
    # The value goes through a file into the command's own shell, unexported: a shell the
    # command starts would see an empty variable, and the item would succeed with nothing.
    (tmp_path / "items.json").write_text(json.dumps(["y" * 200_000]))
    wf = write_workflow(
        tmp_path,
        """
        name: child
        map:
          input: items.json
          agent_template:
            - run: bash -c 'printf %s "${item}" | wc -c'
              output: text
        """,
    )
    result = run_workflow(wf, tmp_path / "home")
    assert records(result, "item.succeeded") == []
    (failed,) = records(result, "item.failed")
    assert failed.data.error_type == "validation_failed"
    assert "a shell the command starts" in failed.data.message
