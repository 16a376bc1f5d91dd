"""Redaction: units of engine.redact, and the places a secret used to leak from."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
from pathlib import Path

import msgspec
import pytest

from engine.items.selection import canonical_json
from engine.map.classify import signature
from engine.redact import Redactor, secret_forms
from ledger import LedgerReader, LedgerWriter, verify_ledger
from ledger.events import ArtifactWritten, ItemFailed, LockAcquired
from tests.conftest import ENGINE
from tests.engine_helpers import records, run_workflow, write_workflow

QUOTED = 'it\'s "q" \\ 7f3a'
"""A secret that shell quoting and JSON escaping both change."""


def _engine(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [ENGINE, "--home", str(home), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def _forms(secret: str) -> list[bytes]:
    return [f.encode() for f in secret_forms([secret])] + [shlex.quote(secret).encode()]


# --- units ----------------------------------------------------------------------------


def test_forms_cover_json_and_repr_escapes() -> None:
    forms = set(secret_forms([QUOTED]))
    assert QUOTED in forms
    assert json.dumps(QUOTED)[1:-1] in forms
    assert repr(QUOTED)[1:-1] in forms
    assert secret_forms(["", ""]) == ()


def test_command_redacts_each_word_before_joining() -> None:
    r = Redactor([QUOTED])
    line = r.command(["engine", "run", "wf.yml", "--var", f"TOKEN={QUOTED}"])
    assert shlex.split(line) == ["engine", "run", "wf.yml", "--var", "TOKEN=***"]
    # Joined first, the quoting hides the value from the redactor:
    assert r.text(shlex.join(["--var", f"TOKEN={QUOTED}"])) != "--var TOKEN=***"


def test_a_command_line_given_as_text_is_redacted_word_by_word() -> None:
    r = Redactor([QUOTED])
    line = shlex.join(["engine", "run", "--var", f"TOKEN={QUOTED}"])
    assert shlex.split(r.command_line(line)) == ["engine", "run", "--var", "TOKEN=***"]
    assert r.command_line("engine run 'unbalanced") == "engine run 'unbalanced"
    assert r.command_line("engine  run x") == "engine  run x"  # no secret: as given


def test_event_redaction_keeps_what_holds_no_secret() -> None:
    r = Redactor(["s3cret"])
    plain = ArtifactWritten(item="a", attempt=1, path="out/a.txt", sha256="sha256:00", size=1)
    assert r.event(plain) is plain
    leaky = ArtifactWritten(item="a-s3cret", attempt=1, path="s3cret.txt", sha256="x", size=1)
    assert r.event(leaky) == ArtifactWritten(
        item="a-***", attempt=1, path="***.txt", sha256="x", size=1
    )
    assert Redactor().event(leaky) is leaky


def test_event_redaction_leaves_engine_vocabulary_valid() -> None:
    # A secret that is part of an error type cannot be masked there; the rest is.
    r = Redactor(["timeout"])
    event = ItemFailed(
        item="a", attempt=1, error_type="timeout", signature="s", message="timeout after 3s"
    )
    out = r.event(event)
    assert out.error_type == "timeout" and out.message == "*** after 3s"
    msgspec.json.decode(msgspec.json.encode(out), type=ItemFailed)


def test_the_writer_redacts_before_hashing(tmp_path: Path) -> None:
    redactor = Redactor(["s3cret"])
    writer = LedgerWriter.open(
        tmp_path / "r", "r", create=True, command="engine --var T=s3cret", redact=redactor.recorded
    )
    with writer:
        record = writer.append(
            ItemFailed(item="a-s3cret", attempt=1, error_type="command_failed", signature="x")
        )
    assert record.data.item == "a-***"  # what the live projections are given
    path = tmp_path / "r" / "ledger.ndjson"
    assert b"s3cret" not in path.read_bytes()
    assert verify_ledger(path).records == 2  # lock.acquired (redacted too) and item.failed
    assert [r.data.item for r in LedgerReader(path).records() if r.type == "item.failed"] == [
        "a-***"
    ]


# --- regressions ----------------------------------------------------------------------


def test_var_secret_with_quotes_is_not_recorded_in_the_lock_or_ledger(tmp_path: Path) -> None:
    wf = write_workflow(
        tmp_path,
        """
        name: quoted
        secrets: [TOKEN]
        map:
          items: [a]
          agent_template:
            - run: test -n "$TOKEN"
        """,
    )
    home = tmp_path / "home"
    proc = _engine(
        home, "run", str(wf), "--run-id", "q", "--var", f"TOKEN={QUOTED}", "--no-progress"
    )
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    run_dir = home / "runs" / "q"
    lock = json.loads((run_dir / "lock").read_text())
    acquired = [
        r.data
        for r in LedgerReader(run_dir / "ledger.ndjson").records()
        if r.type == "lock.acquired"
    ]
    assert acquired and isinstance(acquired[0], LockAcquired)
    for command in (lock["command"], acquired[0].command):
        assert shlex.split(command)[-3:] == ["--var", "TOKEN=***", "--no-progress"]
    for path in run_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for form in _forms(QUOTED):
                assert form not in data, (path, form)


@pytest.mark.parametrize("literal", [False, True])
def test_id_template_referencing_a_secret_is_refused(tmp_path: Path, literal: bool) -> None:
    where = "id" if literal else "artifacts"
    text = (
        """
        name: ids
        secrets: [TOKEN]
        map:
          items: [a]
          id: "${item}-${env.TOKEN}"
          agent_template:
            - run: "true"
        """
        if literal
        else """
        name: ids
        secrets: [TOKEN]
        map:
          items: [a]
          agent_template:
            - run: "true"
              artifacts: ["out/${env.TOKEN}.txt"]
        """
    )
    wf = write_workflow(tmp_path, text)
    proc = _engine(tmp_path / "home", "validate", str(wf))
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert f"{wf}:" in err and "a secret" in err and where in err


def test_secrets_in_item_values_ids_artifacts_and_snapshot_are_redacted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "tok-9d2e'\"x"
    monkeypatch.setenv("MY_TOKEN", secret)
    wf = write_workflow(
        tmp_path,
        """
        name: leaky
        secrets: [MY_TOKEN]
        cache: {}
        map:
          command: 'printf "%s\\n" "a-$MY_TOKEN" "a-***" "b"'
          id: "${item}"
          max_parallel: 1
          agent_template:
            - run: |
                mkdir -p out
                echo done > "out/${item_id}.txt"
                echo done > "out/$MY_TOKEN.txt"
                echo "${item}"
              artifacts: ["out/*.txt"]
              output: text
        """,
    )
    home = tmp_path / "home"
    first = run_workflow(wf, home)
    assert first.exit_code == 0
    p = first.projections
    # "a-<secret>" is recorded as "a-***": the item "a-***" is its duplicate.
    assert sorted(p.items.items) == ["a-***", "b"]
    assert p.items.duplicates == 1 or len(records(first, "item.duplicate")) == 1
    assert {r.data.item: r.data.result for r in records(first, "item.succeeded")} == {
        "a-***": "a-***",
        "b": "b",
    }
    written = {r.data.path for r in records(first, "artifact.written")}
    assert "out/***.txt" in written
    second = run_workflow(wf, home)  # its snapshot sees the files named with the secret
    assert second.exit_code == 0
    manifest = json.loads((second.run_dir / "snapshot.json").read_bytes())["files"]
    assert "out/***.txt" in manifest
    scanned = 0
    for path in home.rglob("*"):
        if path.is_file() and path.stat().st_size:
            data = path.read_bytes()
            for form in _forms(secret):
                assert form not in data, (path, form)
            scanned += 1
    assert scanned >= 10


def test_an_artifact_error_naming_a_secret_is_redacted_before_its_signature(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "lnk-4b1c'\"y"
    monkeypatch.setenv("MY_TOKEN", secret)
    wf = write_workflow(
        tmp_path / "work",
        """
        name: outside
        secrets: [MY_TOKEN]
        map:
          items: [a]
          retry: {max_attempts: 1}
          agent_template:
            - run: mkdir -p out && ln -sf ../../outside.txt "out/$MY_TOKEN"
              artifacts: ["out/*"]
        """,
    )
    (tmp_path / "outside.txt").write_text("not in the workspace\n")  # beside the workspace
    result = run_workflow(wf, tmp_path / "home")
    failed = records(result, "item.failed")[0].data
    assert isinstance(failed, ItemFailed)
    assert failed.error_type == "validation_failed" and "out/***" in failed.message
    # The signature is of what is recorded: equal for every secret's value.
    assert failed.signature == signature("validation_failed", failed.message)


def test_default_ids_are_hashes_of_the_redacted_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MY_TOKEN", "hash-5e6f")
    wf = write_workflow(
        tmp_path,
        """
        name: hashed
        secrets: [MY_TOKEN]
        map:
          command: 'printf "%s\\n" "x-$MY_TOKEN" "x-***" "y"'
          agent_template:
            - run: "true"
        """,
    )
    result = run_workflow(wf, tmp_path / "home")
    enqueued = {r.data.item: r.data.value for r in records(result, "item.enqueued")}
    assert sorted(enqueued.values()) == ["x-***", "y"]
    for item, value in enqueued.items():
        assert item == "sha256:" + hashlib.sha256(canonical_json(value)).hexdigest()
    assert len(records(result, "item.duplicate")) == 1
