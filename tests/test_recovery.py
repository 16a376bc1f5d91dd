"""Torn tails: every cut inside the last record recovers to exactly the records before it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from ledger import LedgerReader, LedgerWriter, verify_ledger
from ledger.codec import GENESIS_HASH, line_hash
from ledger.events import ItemEnqueued
from projections.replay import replay
from tests.conftest import ENGINE, FIXTURE_LEDGER

FULL = FIXTURE_LEDGER.read_bytes()
LINES = FULL.splitlines(keepends=True)
LAST_START = len(FULL) - len(LINES[-1])


def _chain_ok(data: bytes) -> bool:
    prev = GENESIS_HASH
    for line in data.splitlines():
        body, digest = line[:-75], line[-66:-2]
        if line_hash(prev, body) != digest:
            return False
        prev = digest
    return True


def test_every_cut_inside_the_last_record(tmp_path: Path) -> None:
    kept = len(LINES) - 1
    for cut in range(LAST_START + 1, len(FULL)):
        run_dir = tmp_path / f"cut-{cut}"
        run_dir.mkdir()
        (run_dir / "ledger.ndjson").write_bytes(FULL[:cut])
        with LedgerWriter.open(run_dir, "run-fixture") as w:
            assert w.recovered is not None
            assert (w.recovered.offset, w.recovered.length) == (LAST_START, cut - LAST_START)
            w.append(ItemEnqueued(item="after", index=99))
        data = (run_dir / "ledger.ndjson").read_bytes()
        # Exactly the records before the torn one, byte for byte ...
        assert data.startswith(b"".join(LINES[:kept]))
        records = list(LedgerReader(run_dir / "ledger.ndjson").records())
        assert [r.seq for r in records] == list(range(kept + 3))
        assert [r.type for r in records[kept:]] == [
            "ledger.recovered",
            "lock.acquired",
            "item.enqueued",
        ]
        # ... and the chain continues from the last kept record's hash.
        first_new = data[len(b"".join(LINES[:kept])) :].split(b"\n")[0]
        assert records[kept].hash == line_hash(LINES[kept - 1][-67:-3], first_new[:-75]).decode()
        assert _chain_ok(data)
        assert (run_dir / f"ledger.ndjson.torn-{LAST_START}").read_bytes() == FULL[LAST_START:cut]
        shutil.rmtree(run_dir)


def test_a_cut_at_a_record_boundary_is_not_torn(tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "ledger.ndjson").write_bytes(FULL[:LAST_START])
    result = verify_ledger(run_dir / "ledger.ndjson")
    assert result.torn is None and result.records == len(LINES) - 1


@pytest.mark.parametrize("command", [["replay"], ["audit", "verify"], ["tail", "-n", "1"]])
def test_read_only_commands_report_a_torn_tail_and_never_modify(
    tmp_path: Path, command: list[str]
) -> None:
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    torn = FULL[: LAST_START + 50]
    (run_dir / "ledger.ndjson").write_bytes(torn)
    proc = subprocess.run(
        [ENGINE, *command, str(run_dir)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert f"torn tail at byte offset {LAST_START} (50 bytes" in proc.stderr
    assert (run_dir / "ledger.ndjson").read_bytes() == torn
    assert sorted(p.name for p in run_dir.iterdir()) == ["ledger.ndjson"]


def test_replay_reads_up_to_a_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "ledger.ndjson"
    path.write_bytes(FULL[: LAST_START + 10])
    p = replay(path)
    assert p.seq == len(LINES) - 2
    assert p.scan is not None and p.scan.torn is not None
    assert p.scan.torn.offset == LAST_START


_HEAD = b"".join(LINES[:-1])
_LAST = LINES[-1]


@pytest.mark.parametrize(
    ("suffix", "verdict"),
    [
        (_LAST[:50], "torn"),  # a line cut short
        (_LAST[:50] + b"\x00" * 4000, "torn"),  # ... and blocks never written
        (b"\x00" * 5000, "torn"),  # a zero run reaching the end of the file
        (b"\x00" * 300 + b"\n" + b"\x00" * 40, "torn"),
        (_LAST[:-1], "torn"),  # cut just before its newline; the record itself is intact
        (_LAST[:-1] + b"\x00" * 10, "torn"),
        (_LAST[:-1] + b"x", "corrupt"),  # its newline replaced
        (_LAST[:-10] + b'0000000"}', "corrupt"),  # the full suffix shape, the wrong hash
        (_LAST[:50] + b"\x00" + _LAST[51:-1], "corrupt"),  # a zero inside, then more
        (b"\x00" * 300 + b"abc", "corrupt"),  # zeros followed by other bytes
        (b"\x00" * 300 + b"\n" + _LAST, "corrupt"),  # zeros, then a whole record
        (_LAST[:50] + b"\n", "corrupt"),  # a complete line that is no record
        (b"x" * (300 * 1024), "corrupt"),  # longer than any record can be
    ],
)
def test_what_is_torn_and_what_is_corrupt_after_the_last_record(
    tmp_path: Path, suffix: bytes, verdict: str
) -> None:
    from ledger import LedgerCorrupt

    path = tmp_path / "ledger.ndjson"
    path.write_bytes(_HEAD + suffix)
    try:
        result = LedgerReader(path).verify()
    except LedgerCorrupt as exc:
        assert verdict == "corrupt", exc
        assert (exc.seq, exc.offset) == (len(LINES) - 1, len(_HEAD))
        return
    assert verdict == "torn", result
    assert result.torn is not None
    assert (result.torn.offset, result.torn.length) == (len(_HEAD), len(suffix))
    assert result.records == len(LINES) - 1
