"""The writer: durable appends, group commit, size limit, fail-stop, recovery."""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import threading
from pathlib import Path

import pytest

from ledger import (
    MAX_RECORD_BYTES,
    LedgerCorrupt,
    LedgerReader,
    LedgerWriteFailed,
    LedgerWriter,
    RecordTooLarge,
    verify_ledger,
)
from ledger.events import ItemEnqueued, LedgerRecovered, LockAcquired


def _records(path: Path) -> list:
    return list(LedgerReader(path).records())


def test_new_ledger_is_private_and_starts_with_lock_acquired(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "r1"
    with LedgerWriter.open(run_dir, "r1", create=True, command="engine run x.yml") as w:
        rec = w.append(ItemEnqueued(item="a", index=0, value={"k": [1, 2]}))
        assert rec.seq == 1
    records = _records(run_dir / "ledger.ndjson")
    assert [r.type for r in records] == ["lock.acquired", "item.enqueued"]
    first = records[0].data
    assert isinstance(first, LockAcquired)
    assert (first.pid, first.host, first.command) == (
        os.getpid(),
        socket.gethostname(),
        "engine run x.yml",
    )
    assert records[1].data == ItemEnqueued(item="a", index=0, value={"k": [1, 2]})
    assert records[1].run == "r1" and records[1].v == 1
    assert stat.S_IMODE((run_dir / "ledger.ndjson").stat().st_mode) == 0o600
    assert stat.S_IMODE((run_dir / "lock").stat().st_mode) == 0o600
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "runs").stat().st_mode) == 0o700


def test_lock_file_names_the_holder(tmp_path: Path) -> None:
    with LedgerWriter.open(tmp_path / "r", "r", create=True, command="engine run wf.yml"):
        holder = json.loads((tmp_path / "r" / "lock").read_text())
    assert holder["pid"] == os.getpid()
    assert holder["host"] == socket.gethostname()
    assert holder["command"] == "engine run wf.yml"
    assert holder["started_at"].endswith("Z")


def test_oversized_record_is_refused_and_consumes_no_seq(tmp_path: Path) -> None:
    with LedgerWriter.open(tmp_path / "r", "r", create=True) as w:
        with pytest.raises(
            RecordTooLarge, match=r"item.enqueued record is \d+ bytes, over the 262144-byte limit"
        ):
            w.append(ItemEnqueued(item="big", index=0, value="x" * MAX_RECORD_BYTES))
        # Just under the limit is fine, and the seq continues with no gap.
        ok = w.append(ItemEnqueued(item="fits", index=1, value="x" * (MAX_RECORD_BYTES - 400)))
        assert ok.seq == 1
    result = verify_ledger(tmp_path / "r" / "ledger.ndjson")
    assert result.records == 2 and result.torn is None


def test_failed_fsync_stops_the_writer_for_good(tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    broken = threading.Event()
    calls = []

    def sync(fd: int) -> None:
        if not broken.is_set():
            os.fdatasync(fd)
            return
        calls.append(fd)
        raise OSError(errno.EIO, "Input/output error")

    w = LedgerWriter.open(run_dir, "r", create=True, sync=sync)
    w.append(ItemEnqueued(item="a", index=0))
    broken.set()
    with pytest.raises(LedgerWriteFailed, match="write or fsync failed"):
        w.append(ItemEnqueued(item="b", index=1))
    # Even with a working fsync again, the writer never retries or appends.
    broken.clear()
    with pytest.raises(LedgerWriteFailed, match="writer is stopped"):
        w.append(ItemEnqueued(item="c", index=2))
    assert len(calls) == 1
    w.close()
    # Reopening recovers: the chain verifies, and appends continue after it.
    with LedgerWriter.open(run_dir, "r") as w2:
        w2.append(ItemEnqueued(item="d", index=3))
    items = [r.data.item for r in _records(run_dir / "ledger.ndjson") if r.type == "item.enqueued"]
    assert items[0] == "a" and items[-1] == "d" and "c" not in items


@pytest.mark.parametrize("where", ["mid-write", "before-fsync"])
def test_an_interrupt_during_a_flush_finishes_the_batch_and_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """Ctrl-C or SIGTERM landing inside a flush is an interrupt, never a failed write."""
    import ledger.writer as writer_module

    run_dir = tmp_path / "r"
    armed = threading.Event()

    def sync(fd: int) -> None:
        os.fdatasync(fd)
        if where == "before-fsync" and armed.is_set():
            armed.clear()
            raise KeyboardInterrupt

    real_write = os.write

    def write(fd: int, data: bytes | memoryview) -> int:
        if where == "mid-write" and armed.is_set():
            armed.clear()
            real_write(fd, bytes(data)[: len(data) // 2])
            raise KeyboardInterrupt  # as a signal's handler does after the call returns
        return real_write(fd, data)

    monkeypatch.setattr(writer_module.os, "write", write)
    w = LedgerWriter.open(run_dir, "r", create=True, sync=sync)
    w.append(ItemEnqueued(item="a", index=0))
    armed.set()
    with pytest.raises(KeyboardInterrupt):
        w.append(ItemEnqueued(item="b", index=1))
    w.append(ItemEnqueued(item="c", index=2))  # the writer is not stopped
    w.close()
    verify_ledger(run_dir / "ledger.ndjson")
    items = [r.data.item for r in _records(run_dir / "ledger.ndjson") if r.type == "item.enqueued"]
    assert items == ["a", "b", "c"]


def test_group_commit_concurrent_appenders(tmp_path: Path) -> None:
    w = LedgerWriter.open(tmp_path / "r", "r", create=True)
    per_thread, threads = 150, 16
    got: list[list[int]] = [[] for _ in range(threads)]
    start = threading.Barrier(threads)

    def work(i: int) -> None:
        start.wait()
        for n in range(per_thread):
            got[i].append(w.append(ItemEnqueued(item=f"{i}-{n}", index=n)).seq)

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    syncs = w.fsyncs
    w.close()
    seqs = sorted(s for g in got for s in g)
    assert seqs == list(range(1, threads * per_thread + 1))
    for g in got:
        assert g == sorted(g)  # each appender's records are in its own order
    # Group commit: many records per fsync, not one each.
    assert syncs < threads * per_thread / 2
    assert verify_ledger(tmp_path / "r" / "ledger.ndjson").records == threads * per_thread + 1


def test_corruption_is_refused_on_open_and_file_untouched(tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    with LedgerWriter.open(run_dir, "r", create=True) as w:
        w.append_many([ItemEnqueued(item=str(i), index=i) for i in range(5)])
    path = run_dir / "ledger.ndjson"
    lines = path.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b'"item":"1"', b'"item":"X"')
    path.write_bytes(b"".join(lines))
    before = path.read_bytes()
    offset = len(lines[0]) + len(lines[1])
    with pytest.raises(LedgerCorrupt) as info:
        LedgerWriter.open(run_dir, "r")
    assert (info.value.seq, info.value.offset) == (2, offset)
    assert "hash mismatch" in info.value.reason
    assert path.read_bytes() == before
    # The refused open released the lock.
    with pytest.raises(LedgerCorrupt):
        LedgerWriter.open(run_dir, "r")


def test_recovery_moves_torn_tail_aside_and_records_it(tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    with LedgerWriter.open(run_dir, "r", create=True) as w:
        w.append_many([ItemEnqueued(item=str(i), index=i) for i in range(3)])
    path = run_dir / "ledger.ndjson"
    good = path.read_bytes()
    torn = b'{"v":1,"seq":4,"ts":"2026-01-01T00:00:00.000000Z","type":"item.enq'
    path.write_bytes(good + torn)
    with LedgerWriter.open(run_dir, "r") as w:
        assert w.recovered is not None and w.recovered.offset == len(good)
    aside = run_dir / f"ledger.ndjson.torn-{len(good)}"
    assert aside.read_bytes() == torn
    records = _records(path)
    assert path.read_bytes().startswith(good)
    rec = records[4]
    assert isinstance(rec.data, LedgerRecovered)
    assert rec.data == LedgerRecovered(
        offset=len(good),
        length=len(torn),
        moved_to=aside.name,
        reason="incomplete last line (no newline)",
    )
    assert records[5].type == "lock.acquired"
    assert verify_ledger(path).torn is None


def test_zero_filled_tail_is_torn_not_corrupt(tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    with LedgerWriter.open(run_dir, "r", create=True) as w:
        w.append(ItemEnqueued(item="a", index=0))
    path = run_dir / "ledger.ndjson"
    good = path.read_bytes()
    path.write_bytes(good + b"\x00" * 300 + b"\n" + b"\x00" * 40)
    result = verify_ledger(path)
    assert result.torn is not None and result.torn.offset == len(good)
    assert result.torn.reason == "zero-filled tail"
    with LedgerWriter.open(run_dir, "r") as w:
        w.append(ItemEnqueued(item="b", index=1))
    assert verify_ledger(path).records == 5


def test_appends_after_close_are_refused(tmp_path: Path) -> None:
    w = LedgerWriter.open(tmp_path / "r", "r", create=True)
    w.close()
    with pytest.raises(Exception, match="writer is closed"):
        w.append(ItemEnqueued(item="a", index=0))


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b'"item":"b"', b'"item":"\x00"'),  # one changed byte: not a torn tail
        (b'"type":"item.enqueued"', b'"type":"item.unheard"'),  # hash recomputed below
    ],
)
def test_open_refuses_a_changed_last_record_and_leaves_the_file(
    tmp_path: Path, old: bytes, new: bytes
) -> None:
    from ledger.codec import line_hash

    run_dir = tmp_path / "r"
    with LedgerWriter.open(run_dir, "r", create=True) as w:
        w.append_many([ItemEnqueued(item="a", index=0), ItemEnqueued(item="b", index=1)])
    path = run_dir / "ledger.ndjson"
    lines = path.read_bytes().splitlines(keepends=True)
    changed = lines[-1].replace(old, new)
    if b"unheard" in new:  # a forger recomputes the hash: the chain holds, the type does not
        body = changed[:-76]
        changed = body + b',"hash":"' + line_hash(lines[-2][-67:-3], body) + b'"}\n'
    data = b"".join(lines[:-1]) + changed
    path.write_bytes(data)
    with pytest.raises(LedgerCorrupt) as info:
        LedgerWriter.open(run_dir, "r")
    assert info.value.seq == len(lines) - 1
    assert info.value.offset == len(b"".join(lines[:-1]))
    assert path.read_bytes() == data
    assert not list(run_dir.glob("ledger.ndjson.torn-*"))
