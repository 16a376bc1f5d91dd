"""Reader details: bounded chunks, starting mid-file, and the parallel chain check."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import ledger.reader as reader_module
from ledger import LedgerCorrupt, LedgerReader, LedgerWriter, verify_ledger
from ledger.events import ItemEnqueued
from ledger.reader import BackgroundVerify
from projections.replay import replay
from tests.conftest import FIXTURE_LEDGER, projections_json


def _tamper(lines: list[bytes], old: bytes, new: bytes) -> int:
    """Change the first line (after the first 5) containing ``old``; its index."""
    index = next(i for i, line in enumerate(lines) if i > 5 and old in line)
    lines[index] = lines[index].replace(old, new, 1)
    return index


def test_tiny_chunks_read_the_same_records() -> None:
    whole = [r.seq for r in LedgerReader(FIXTURE_LEDGER).records()]
    for size in (1, 7, 100, 333):
        assert [r.seq for r in LedgerReader(FIXTURE_LEDGER, chunk_size=size).records()] == whole
        result = LedgerReader(FIXTURE_LEDGER, chunk_size=size).verify()
        assert result.records == len(whole) and result.torn is None


def test_start_resumes_after_an_earlier_pass(tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    with LedgerWriter.open(run_dir, "r", create=True) as w:
        w.append(ItemEnqueued(item="a", index=0))
        first = LedgerReader(w.path)
        assert [r.seq for r in first.records()] == [0, 1]
        w.append(ItemEnqueued(item="b", index=1))
        assert first.result is not None
        later = LedgerReader(w.path, start=first.result)
        assert [(r.seq, r.data.item) for r in later.records()] == [(2, "b")]


def test_until_stops_after_that_seq() -> None:
    assert [r.seq for r in LedgerReader(FIXTURE_LEDGER).records(until=3)] == [0, 1, 2, 3]
    assert replay(FIXTURE_LEDGER, until=0).seq == 0


def test_background_verify_agrees_and_finds_tampering(tmp_path: Path) -> None:
    assert BackgroundVerify(str(FIXTURE_LEDGER)).wait() == verify_ledger(FIXTURE_LEDGER)
    lines = FIXTURE_LEDGER.read_bytes().splitlines(keepends=True)
    index = _tamper(lines, b"a.py", b"z.py")
    bad = tmp_path / "ledger.ndjson"
    bad.write_bytes(b"".join(lines))
    with pytest.raises(LedgerCorrupt) as info:
        BackgroundVerify(str(bad)).wait()
    assert info.value.seq == index


def test_replay_uses_the_parallel_check_on_large_ledgers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reader_module, "PARALLEL_VERIFY_BYTES", 1)
    assert reader_module.can_verify_in_background(FIXTURE_LEDGER) == ((os.cpu_count() or 1) > 1)
    assert projections_json(replay(FIXTURE_LEDGER)) == projections_json(
        replay(FIXTURE_LEDGER, verify=False)
    )
    lines = FIXTURE_LEDGER.read_bytes().splitlines(keepends=True)
    # A tampered record that still decodes: only the chain check can see it.
    index = _tamper(lines, b"b.py", b"x.py")
    bad = tmp_path / "ledger.ndjson"
    bad.write_bytes(b"".join(lines))
    with pytest.raises(LedgerCorrupt) as info:
        replay(bad)
    assert info.value.seq == index
    assert replay(bad, verify=False).seq == len(lines) - 1  # decoding alone cannot tell


def _outcome(path: Path, *, parallel: bool) -> tuple[object, ...]:
    try:
        r = verify_ledger(path, parallel=parallel)
    except LedgerCorrupt as exc:
        return ("corrupt", exc.seq, exc.offset)
    return ("ok", r.records, r.last_hash, r.end_offset, r.torn)


def test_parallel_verify_agrees_with_sequential_everywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tampering or tearing at any line gives the same verdict split in two or not."""
    monkeypatch.setattr(reader_module, "PARALLEL_VERIFY_BYTES", 1)
    data = FIXTURE_LEDGER.read_bytes()
    lines = data.splitlines(keepends=True)
    path = tmp_path / "ledger.ndjson"
    path.write_bytes(data)
    assert reader_module.can_verify_in_background(path), "the parallel path must be exercised"
    assert reader_module._split_point(str(path)) is not None
    cases: list[bytes] = [data]
    for i in range(len(lines)):
        flipped = list(lines)
        flipped[i] = flipped[i].replace(b'"seq":', b'"seq" :', 1)  # well-formed? no: breaks shape
        cases.append(b"".join(flipped))
        changed = list(lines)
        changed[i] = changed[i].replace(b"2026-01-05", b"2026-01-06", 1)  # breaks the chain only
        cases.append(b"".join(changed))
        cases.append(b"".join(lines[:i] + lines[i + 1 :]))  # a deleted line
        cases.append(data[: sum(map(len, lines[:i])) + 7])  # a torn tail
    for case in cases:
        path.write_bytes(case)
        assert _outcome(path, parallel=True) == _outcome(path, parallel=False)
