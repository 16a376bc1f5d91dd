"""Upcasting: a record of an older format version is read as the current one.

The case proven here: an ``item.failed`` of format version 0, whose
``error_type`` was called ``error``. The ledger holding it is written by
hand, with its hash chain computed here over its bytes as written, and it
replays to the same projections as the same ledger written in the v1 form.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner

import ledger.reader as reader_module
import ledger.upcast as upcast_module
from cli.main import cli
from ledger import FORMAT_VERSION, LedgerCorrupt, LedgerReader, LedgerWriter, verify_ledger
from ledger.events import (
    Event,
    ItemDeadLettered,
    ItemDispatched,
    ItemEnqueued,
    ItemFailed,
    ItemRetryScheduled,
    ItemSucceeded,
    RunCompleted,
    RunCreated,
    RunStarted,
)
from ledger.upcast import UPCASTERS, Envelope, unchanged, upcast, upcaster
from projections.replay import replay
from tests.conftest import ENGINE, projections_json

RUN = "run-upcast"
TS = "2026-01-05T09:00:00.250000Z"
V1_ENVELOPE = b'{"v":1,'
ENVELOPE_REFUSED = "record does not start with the v1 envelope"


def _events() -> list[Event]:
    """A run with failures of two error types, a retry, a dead item and a success."""
    return [
        RunCreated(workflow_name="w", workflow_path="w.yml", workflow_hash="sha256:" + "9" * 64),
        RunStarted(pid=4242, host="h", max_parallel=2),
        ItemEnqueued(item="a", index=0, value="a.py"),
        ItemEnqueued(item="b", index=1, value="b.py"),
        ItemDispatched(item="a", attempt=1, idempotency_key="k-a-1"),
        ItemDispatched(item="b", attempt=1, idempotency_key="k-b-1"),
        ItemFailed(
            item="a",
            attempt=1,
            error_type="rate_limited",
            signature="1" * 64,
            message="429 too many requests",
            exit_code=1,
        ),
        ItemRetryScheduled(item="a", attempt=1, delay=0.5, not_before=TS),
        ItemSucceeded(item="b", attempt=1, duration=1.5, result={"ok": True}),
        ItemDispatched(item="a", attempt=2, idempotency_key="k-a-2"),
        ItemFailed(
            item="a",
            attempt=2,
            error_type="permission_denied",
            signature="2" * 64,
            message="permission denied",
            exit_code=13,
        ),
        ItemDeadLettered(item="a", attempt=2, error_type="permission_denied", signature="2" * 64),
        RunCompleted(succeeded=1, dead=1),
    ]


def _v1_run(tmp_path: Path) -> Path:
    """The run written by the writer, in the current form (once per test)."""
    run_dir = tmp_path / "v1" / RUN
    if run_dir.exists():
        return run_dir
    with LedgerWriter.open(run_dir, RUN, create=True, command="test", clock=lambda: TS) as w:
        w.append_many(_events())
    return run_dir


def _chained(bodies: list[bytes]) -> bytes:
    """Lines with the chain computed over these bodies, as ``ledger-format.md`` defines it."""
    prev = b"0" * 64
    out = []
    for body in bodies:
        prev = hashlib.sha256(prev + body).hexdigest().encode()
        out.append(body + b',"hash":"' + prev + b'"}\n')
    return b"".join(out)


def _bodies(ledger: Path) -> list[bytes]:
    return [line[:-75] for line in ledger.read_bytes().splitlines()]


def _as_v0(body: bytes) -> bytes:
    """An ``item.failed`` body as format version 0 wrote it: ``error`` for ``error_type``."""
    assert body.startswith(V1_ENVELOPE) and b'"type":"item.failed"' in body
    return b'{"v":0,' + body[len(V1_ENVELOPE) :].replace(b'"error_type":', b'"error":', 1)


def _v0_run(tmp_path: Path) -> Path:
    """The v1 run by hand, its ``item.failed`` records in the v0 form, chained over these bytes."""
    bodies = _bodies(_v1_run(tmp_path) / "ledger.ndjson")
    old = [_as_v0(b) if b'"type":"item.failed"' in b else b for b in bodies]
    run_dir = tmp_path / "v0" / RUN
    run_dir.mkdir(parents=True)
    (run_dir / "ledger.ndjson").write_bytes(_chained(old))
    return run_dir


@pytest.fixture
def item_failed_v0() -> Iterator[None]:
    """The upcaster of the case, registered through the registry the reader uses."""

    @upcaster("item.failed", 0)
    def rename_error(envelope: Envelope) -> Envelope:
        data = envelope["data"]
        data["error_type"] = data.pop("error")
        return envelope

    yield
    del UPCASTERS["item.failed", 0]


def _first_v0(ledger: Path) -> tuple[int, int]:
    """(seq, byte offset) of the first v0 record."""
    offset = 0
    for seq, line in enumerate(ledger.read_bytes().splitlines(keepends=True)):
        if line.startswith(b'{"v":0,'):
            return seq, offset
        offset += len(line)
    raise AssertionError("no v0 record")


@pytest.mark.parametrize("parallel", [False, True], ids=["sequential", "parallel-check"])
def test_a_v0_ledger_replays_to_the_projections_of_its_v1_form(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, item_failed_v0: None, parallel: bool
) -> None:
    if parallel:  # the chain checked by a forked process while this one decodes
        monkeypatch.setattr(reader_module, "PARALLEL_VERIFY_BYTES", 1)
    v1 = _v1_run(tmp_path) / "ledger.ndjson"
    v0 = _v0_run(tmp_path) / "ledger.ndjson"
    assert reader_module.can_verify_in_background(v0) == (parallel and (os.cpu_count() or 1) > 1)
    raw = v0.read_bytes()
    assert raw.count(b'{"v":0,') == 2 and b'"error_type"' not in raw.split(b"\n")[6]
    assert projections_json(replay(v0)) == projections_json(replay(v1))
    assert projections_json(replay(v0, verify=False)) == projections_json(replay(v1))
    # Record by record: the upcast record is the current one, but for its hash.
    new = list(LedgerReader(v1).records())
    old = list(LedgerReader(v0).records())
    assert [(r.v, r.seq, r.ts, r.run, r.data) for r in old] == [
        (r.v, r.seq, r.ts, r.run, r.data) for r in new
    ]
    assert [r.data.error_type for r in old if isinstance(r.data, ItemFailed)] == [
        "rate_limited",
        "permission_denied",
    ]
    # The hashes are those of the bytes as written.
    assert [r.hash.encode() for r in old] == [line[-66:-2] for line in raw.splitlines()]
    for par in (False, True):
        result = verify_ledger(v0, parallel=par)
        assert result.records == len(new) and result.torn is None
        assert result.last_hash == raw.splitlines()[-1][-66:-2]
    assert LedgerReader(v0).verify(decode=False).records == len(new)


def test_engine_replay_prints_the_same_for_both_forms(tmp_path: Path, item_failed_v0: None) -> None:
    runner = CliRunner()
    v1 = runner.invoke(cli, ["replay", "--json", str(_v1_run(tmp_path))], catch_exceptions=False)
    v0 = runner.invoke(cli, ["replay", "--json", str(_v0_run(tmp_path))], catch_exceptions=False)
    assert v0.exit_code == v1.exit_code == 0
    assert msgspec.json.decode(v0.stdout) == msgspec.json.decode(v1.stdout)


def test_the_chain_covers_the_bytes_as_written(tmp_path: Path, item_failed_v0: None) -> None:
    v0 = _v0_run(tmp_path) / "ledger.ndjson"
    seq, offset = _first_v0(v0)
    # v0 bodies chained as if they were their upcast (v1) form: refused.
    v1_lines = (_v1_run(tmp_path) / "ledger.ndjson").read_bytes().splitlines(keepends=True)
    v0_lines = v0.read_bytes().splitlines(keepends=True)
    forged = tmp_path / "forged.ndjson"
    forged.write_bytes(
        b"".join(
            old[:-75] + new[-75:] if old.startswith(b'{"v":0,') else new
            for old, new in zip(v0_lines, v1_lines, strict=True)
        )
    )
    for read in (verify_ledger, replay):
        with pytest.raises(LedgerCorrupt) as info:
            read(forged)
        assert (info.value.seq, info.value.offset) == (seq, offset)
        assert info.value.reason.startswith("hash mismatch")
    # One changed byte of a v0 record, in the field its upcaster renames.
    tampered = tmp_path / "tampered.ndjson"
    tampered.write_bytes(
        v0.read_bytes().replace(b'"error":"rate_limited"', b'"error":"rate_limitee"')
    )
    for read in (verify_ledger, replay):
        with pytest.raises(LedgerCorrupt) as info:
            read(tampered)
        assert (info.value.seq, info.value.offset) == (seq, offset)
        assert info.value.reason.startswith("hash mismatch")


def test_a_writer_continues_an_older_ledger(tmp_path: Path, item_failed_v0: None) -> None:
    run_dir = _v0_run(tmp_path)
    ledger = run_dir / "ledger.ndjson"
    before = ledger.read_bytes()
    with LedgerWriter.open(run_dir, RUN, clock=lambda: TS) as w:
        record = w.append(ItemEnqueued(item="c", index=2))
    after = ledger.read_bytes()
    assert after.startswith(before)  # nothing written is rewritten
    assert all(line.startswith(V1_ENVELOPE) for line in after[len(before) :].splitlines())
    assert verify_ledger(ledger).records == record.seq + 1
    assert replay(ledger).items.items["c"].status == "pending"


def _engine(*args: str) -> subprocess.CompletedProcess[str]:
    """The installed CLI in its own process: only the upcasters the code registers."""
    return subprocess.run([ENGINE, *args], capture_output=True, text=True, check=False)


def _with_version(tmp_path: Path, version: bytes) -> tuple[Path, int, int]:
    """The v1 run with its last ``item.failed`` (untouched otherwise) claiming ``version``."""
    bodies = _bodies(_v1_run(tmp_path) / "ledger.ndjson")
    seq = max(i for i, b in enumerate(bodies) if b'"type":"item.failed"' in b)
    bodies[seq] = b'{"v":' + version + b"," + bodies[seq][len(V1_ENVELOPE) :]
    run_dir = tmp_path / f"v{version.decode()}" / RUN
    run_dir.mkdir(parents=True)
    data = _chained(bodies)
    (run_dir / "ledger.ndjson").write_bytes(data)
    offset = sum(len(line) for line in data.splitlines(keepends=True)[:seq])
    return run_dir, seq, offset


@pytest.mark.parametrize("version", [b"7", b"2", b"0", b"-1", b"false", b'"1"'])
def test_versions_without_an_upcaster_are_refused_as_before(tmp_path: Path, version: bytes) -> None:
    """Newer than the reader, or older without an upcaster: the envelope is refused.

    The message and exit code are those a ``v: 7`` record got from ``engine
    audit verify`` (and a writer's open) before upcasting existed; every
    other reader (replay, status, tail) now refuses it the same way instead
    of reading it as a v1 record.
    """
    run_dir, seq, offset = _with_version(tmp_path, version)
    ledger = run_dir / "ledger.ndjson"
    for read in (verify_ledger, replay, lambda p: list(LedgerReader(p).records())):
        with pytest.raises(LedgerCorrupt) as info:
            read(ledger)
        assert (info.value.seq, info.value.offset, info.value.reason) == (
            seq,
            offset,
            ENVELOPE_REFUSED,
        )
    with pytest.raises(LedgerCorrupt, match=ENVELOPE_REFUSED):
        LedgerWriter.open(run_dir, RUN)


@pytest.mark.parametrize("version", [b"7", b"0"])
def test_the_cli_refuses_them_with_the_message_and_exit_code_of_before(
    tmp_path: Path, version: bytes
) -> None:
    run_dir, seq, offset = _with_version(tmp_path, version)
    ledger = run_dir / "ledger.ndjson"
    proc = _engine("audit", "verify", str(run_dir))
    assert proc.returncode == 1
    assert f"CORRUPT {ledger}: seq {seq} at byte offset {offset}: {ENVELOPE_REFUSED}" in proc.stderr
    for command in ("replay", "status", "tail"):
        proc = _engine(command, str(run_dir))
        assert proc.returncode == 1, (command, proc.stdout, proc.stderr)
        assert f"corrupt at seq {seq} (byte offset {offset}): {ENVELOPE_REFUSED}" in proc.stderr


def test_an_older_record_of_a_type_without_an_upcaster_is_refused(
    tmp_path: Path, item_failed_v0: None
) -> None:
    bodies = _bodies(_v1_run(tmp_path) / "ledger.ndjson")
    seq = next(i for i, b in enumerate(bodies) if b'"type":"item.enqueued"' in b)
    bodies[seq] = b'{"v":0,' + bodies[seq][len(V1_ENVELOPE) :]
    ledger = tmp_path / "ledger.ndjson"
    ledger.write_bytes(_chained(bodies))
    for read in (verify_ledger, replay):
        with pytest.raises(LedgerCorrupt) as info:
            read(ledger)
        assert (info.value.seq, info.value.reason) == (seq, ENVELOPE_REFUSED)


def test_an_upcast_record_that_does_not_decode_says_so(
    tmp_path: Path, item_failed_v0: None
) -> None:
    bodies = _bodies(_v1_run(tmp_path) / "ledger.ndjson")
    seq = next(i for i, b in enumerate(bodies) if b'"type":"item.failed"' in b)
    bodies[seq] = _as_v0(bodies[seq]).replace(b'"attempt":1', b'"attempt":"one"', 1)
    ledger = tmp_path / "ledger.ndjson"
    ledger.write_bytes(_chained(bodies))
    for read in (verify_ledger, replay):
        with pytest.raises(LedgerCorrupt) as info:
            read(ledger)
        assert info.value.seq == seq
        assert info.value.reason.startswith("record does not decode: Expected `int`")


def test_the_chain_of_upcasters_runs_step_by_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """From version 1 to 3 through two steps; the second is found under the type the first left."""
    monkeypatch.setattr(upcast_module, "FORMAT_VERSION", 3)
    monkeypatch.setattr(upcast_module, "UPCASTERS", {})
    steps: list[int] = []

    @upcaster("job.failed", 1)
    def renamed_type(envelope: Envelope) -> Envelope:
        steps.append(envelope["v"])
        return {**envelope, "type": "item.failed"}

    @upcaster("item.failed", 2)
    def renamed_field(envelope: Envelope) -> Envelope:
        steps.append(envelope["v"])
        data = envelope["data"]
        data["error_type"] = data.pop("error")
        return envelope

    old = {"v": 1, "seq": 4, "type": "job.failed", "data": {"error": "x"}, "hash": "h"}
    assert upcast(old) == {
        "v": 3,
        "seq": 4,
        "type": "item.failed",
        "data": {"error_type": "x"},
        "hash": "h",
    }
    assert steps == [1, 2]
    unchanged(1, "run.paused")
    unchanged(2, "run.paused")
    paused = {"v": 1, "type": "run.paused", "data": {"by": "me"}}
    assert upcast(dict(paused)) == {**paused, "v": 3}
    assert upcast({"v": 2, "type": "job.failed", "data": {}}) is None  # no step from 2
    assert upcast({"v": 3, "type": "item.failed", "data": {}}) is None  # current: not older
    assert upcast({"v": True, "type": "job.failed", "data": {}}) is None
    with pytest.raises(ValueError, match="exists"):
        upcaster("item.failed", 2)(renamed_field)
    with pytest.raises(ValueError, match="no format version 3 older than 3"):
        upcaster("item.failed", 3)


def test_no_upcaster_is_registered_for_a_version_that_never_existed() -> None:
    """Version 1 is the first format written: the code registers no upcaster yet."""
    assert FORMAT_VERSION == 1
    assert UPCASTERS == {}
