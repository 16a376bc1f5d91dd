"""Regressions for bugs found in review: each test failed before its fix."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
import time
from pathlib import Path

import pytest

import ledger.reader as reader_module
from ledger import LedgerCorrupt, LedgerWriter, RecordInvalid, verify_ledger
from ledger.events import ItemEnqueued, ItemFailed
from projections.replay import replay
from tests.conftest import FIXTURE_LEDGER
from tests.engine_helpers import wait_for


def test_values_that_would_not_read_back_are_refused(tmp_path: Path) -> None:
    with LedgerWriter.open(tmp_path / "r", "r", create=True) as w:
        with pytest.raises(RecordInvalid, match="would not read back"):
            w.append(
                ItemFailed(
                    item="a", attempt=1, error_type="x", signature="s", duration=float("nan")
                )
            )
        with pytest.raises(RecordInvalid):
            w.append(ItemEnqueued(item="a", index=True))  # type: ignore[arg-type]
        assert w.append(ItemEnqueued(item="a", index=0)).seq == 1
    assert replay(tmp_path / "r" / "ledger.ndjson").seq == 1


def test_invalid_utf8_is_classified_not_a_crash(tmp_path: Path) -> None:
    data = bytearray(FIXTURE_LEDGER.read_bytes())
    last = data.rindex(b'"run.completed"')
    data[last + 3] = 0xD4  # a byte that is not UTF-8, inside a complete last line
    path = tmp_path / "ledger.ndjson"
    path.write_bytes(bytes(data))
    with pytest.raises(LedgerCorrupt):
        verify_ledger(path, parallel=False)
    with pytest.raises(LedgerCorrupt):
        replay(path)


def test_complete_garbage_last_line_is_corruption_not_torn(tmp_path: Path) -> None:
    lines = FIXTURE_LEDGER.read_bytes().splitlines(keepends=True)
    lines[-1] = lines[-1].replace(b'"seq":37,', b'"seq":37;')
    path = tmp_path / "ledger.ndjson"
    path.write_bytes(b"".join(lines))
    with pytest.raises(LedgerCorrupt) as info:
        verify_ledger(path)
    assert info.value.seq == 37
    with pytest.raises(LedgerCorrupt):  # and a writer will not drop the record
        LedgerWriter.open(tmp_path, "r")


def test_parallel_replay_agrees_on_a_torn_malformed_suffix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reader_module, "PARALLEL_VERIFY_BYTES", 1)
    data = FIXTURE_LEDGER.read_bytes()
    cut = data.rindex(b'"hash":"') + 8
    path = tmp_path / "ledger.ndjson"
    path.write_bytes(data[: cut + 3] + data[cut + 4 : -1])  # no newline, suffix malformed
    p = replay(path)
    assert p.scan is not None and p.scan.torn is not None
    assert p.seq == 36


def test_parallel_replay_of_a_ledger_being_appended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reader_module, "PARALLEL_VERIFY_BYTES", 1)
    w = LedgerWriter.open(tmp_path / "r", "r", create=True)
    w.append_many([ItemEnqueued(item=str(i), index=i) for i in range(2000)])
    stop = threading.Event()

    def keep_appending() -> None:
        n = 0
        while not stop.is_set():
            w.append(ItemEnqueued(item=f"x{n}", index=n))
            n += 1

    t = threading.Thread(target=keep_appending)
    t.start()
    try:
        for _ in range(10):
            replay(w.path)  # never a false corruption
    finally:
        stop.set()
        t.join()
        w.close()


def test_async_appends_survive_a_closed_loop(tmp_path: Path) -> None:
    slow = threading.Event()

    def slow_sync(fd: int) -> None:
        if slow.is_set():
            time.sleep(0.3)
        os.fdatasync(fd)

    w = LedgerWriter.open(tmp_path / "r", "r", create=True, sync=slow_sync)
    slow.set()

    async def abandon() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(w.append_async([ItemEnqueued(item="a", index=0)]), 0.05)

    asyncio.run(abandon())  # that loop is closed while its append is in flight
    slow.clear()
    # Until the I/O thread has made it durable and settled it (on the closed loop).
    wait_for(lambda: w._durable_seq >= 1 and not w._io_busy, what="the abandoned append")

    async def again() -> int:
        records = await asyncio.wait_for(w.append_async([ItemEnqueued(item="b", index=1)]), 5)
        return records[0].seq

    assert asyncio.run(again()) == 2
    w.close()


def test_durable_async_appends_are_not_reported_failed(tmp_path: Path) -> None:
    failing = threading.Event()
    calls = 0

    def sync(fd: int) -> None:
        nonlocal calls
        if not failing.is_set():
            os.fdatasync(fd)
            return
        calls += 1
        raise OSError(errno.EIO, "I/O error")

    w = LedgerWriter.open(tmp_path / "r", "r", create=True, sync=sync)

    async def main() -> None:
        first = asyncio.ensure_future(w.append_async([ItemEnqueued(item="a", index=0)]))
        await first
        failing.set()
        with pytest.raises(Exception, match=r"fsync failed|stopped"):
            await w.append_async([ItemEnqueued(item="b", index=1)])
        assert first.result()[0].seq == 1

    asyncio.run(main())
    w.close()
    # The failed writer cut the file back to what was durable.
    assert verify_ledger(tmp_path / "r" / "ledger.ndjson").records == 2
    assert os.path.getsize(tmp_path / "r" / "ledger.ndjson") > 0
