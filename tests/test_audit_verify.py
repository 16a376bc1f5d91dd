"""`engine audit verify`: tampering is found and named by seq and byte offset."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ENGINE, FIXTURE_LEDGER

LINES = FIXTURE_LEDGER.read_bytes().splitlines(keepends=True)
MIDDLE = len(LINES) // 2


def _offset(lines: list[bytes], index: int) -> int:
    return sum(len(line) for line in lines[:index])


def _verify(path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ENGINE, "audit", "verify", str(path), *extra], capture_output=True, text=True, check=False
    )


def test_intact_ledger(tmp_path: Path) -> None:
    proc = _verify(FIXTURE_LEDGER)
    assert proc.returncode == 0
    assert f"{len(LINES)} records, chain intact (last seq {len(LINES) - 1}" in proc.stdout
    data = json.loads(_verify(FIXTURE_LEDGER, "--json").stdout)
    assert data["ok"] is True and data["records"] == len(LINES) and data["torn"] is None


def _flip(lines: list[bytes], rng_pos: int) -> list[bytes]:
    out = list(lines)
    line = bytearray(out[MIDDLE])
    line[rng_pos] ^= 0x01
    out[MIDDLE] = bytes(line)
    return out


@pytest.mark.parametrize("where", ["body", "data", "hash"])
def test_flipped_byte(tmp_path: Path, where: str, rng) -> None:
    line = LINES[MIDDLE]
    if where == "body":
        pos = line.index(b'"ts":"') + 8  # a digit of the timestamp
    elif where == "data":
        pos = rng.randrange(line.index(b'"data":') + 9, len(line) - 80)
    else:
        pos = len(line) - 10  # inside the hash itself
    path = tmp_path / "ledger.ndjson"
    tampered = _flip(LINES, pos)
    path.write_bytes(b"".join(tampered))
    proc = _verify(path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"seq {MIDDLE} at byte offset {_offset(LINES, MIDDLE)}" in proc.stderr
    data = json.loads(_verify(path, "--json").stdout)
    assert data["ok"] is False
    assert data["corrupt"]["seq"] == MIDDLE
    assert data["corrupt"]["offset"] == _offset(LINES, MIDDLE)


def test_deleted_line(tmp_path: Path) -> None:
    path = tmp_path / "ledger.ndjson"
    path.write_bytes(b"".join(LINES[:MIDDLE] + LINES[MIDDLE + 1 :]))
    proc = _verify(path)
    assert proc.returncode == 1
    assert (
        f"seq {MIDDLE} at byte offset {_offset(LINES, MIDDLE)}: expected seq {MIDDLE}, "
        f"found seq {MIDDLE + 1} (a record is missing)"
    ) in proc.stderr


def test_swapped_pair(tmp_path: Path) -> None:
    swapped = list(LINES)
    swapped[MIDDLE], swapped[MIDDLE + 1] = swapped[MIDDLE + 1], swapped[MIDDLE]
    path = tmp_path / "ledger.ndjson"
    path.write_bytes(b"".join(swapped))
    proc = _verify(path)
    assert proc.returncode == 1
    assert (
        f"seq {MIDDLE} at byte offset {_offset(LINES, MIDDLE)}: expected seq {MIDDLE}"
        in proc.stderr
    )


def test_tampered_last_record_is_corruption_not_torn(tmp_path: Path) -> None:
    """A complete, well-formed last record with a wrong hash cannot be a torn write."""
    lines = list(LINES)
    lines[-1] = lines[-1].replace(b'"succeeded":3', b'"succeeded":4')
    path = tmp_path / "ledger.ndjson"
    path.write_bytes(b"".join(lines))
    proc = _verify(path)
    assert proc.returncode == 1
    assert f"seq {len(LINES) - 1} at byte offset {_offset(LINES, len(LINES) - 1)}" in proc.stderr


def test_garbage_in_the_middle_followed_by_records(tmp_path: Path) -> None:
    lines = list(LINES)
    lines[MIDDLE] = b"\x00" * 20 + b"\n"
    path = tmp_path / "ledger.ndjson"
    path.write_bytes(b"".join(lines))
    proc = _verify(path)
    assert proc.returncode == 1
    assert f"seq {MIDDLE} at byte offset {_offset(LINES, MIDDLE)}" in proc.stderr
    assert "a valid record follows" in proc.stderr


def test_missing_ledger_is_bad_input(tmp_path: Path) -> None:
    proc = _verify(tmp_path / "nope.ndjson")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def _every_change_of_one_byte(line: bytes) -> list[tuple[int, bytes]]:
    """(position, replacement) pairs covering every byte of ``line`` with hostile values."""
    out: list[tuple[int, bytes]] = []
    for pos in range(len(line)):
        for replacement in (b"\x00", b"\n", b"x"):
            if line[pos : pos + 1] != replacement:
                out.append((pos, replacement))
    return out


def test_one_changed_byte_in_the_last_record_is_never_a_torn_tail(tmp_path: Path) -> None:
    """A NUL, a newline or any other byte written into the last complete record is
    corruption (its seq named), never a torn tail to be moved aside; the one
    exception is its newline turned into a zero, which is exactly the shape of a
    write cut short before its newline (and the record is intact)."""
    from ledger import LedgerCorrupt, verify_ledger

    last = len(LINES) - 1
    start = _offset(LINES, last)
    path = tmp_path / "ledger.ndjson"
    torn: list[tuple[int, bytes]] = []
    for pos, replacement in _every_change_of_one_byte(LINES[-1]):
        line = LINES[-1][:pos] + replacement + LINES[-1][pos + 1 :]
        path.write_bytes(b"".join(LINES[:-1]) + line)
        try:
            result = verify_ledger(path)
        except LedgerCorrupt as exc:
            assert (exc.seq, exc.offset) == (last, start), (pos, replacement, exc)
            continue
        assert result.torn is not None, (pos, replacement)
        torn.append((pos, replacement))
    assert torn == [(len(LINES[-1]) - 1, b"\x00")]


@pytest.mark.parametrize("replacement", [b"\x00", b"\n", b"x"])
def test_changed_byte_in_the_last_record_exits_1_naming_it(
    tmp_path: Path, replacement: bytes
) -> None:
    line = LINES[-1]
    pos = line.index(b'"data":') + 10
    path = tmp_path / "ledger.ndjson"
    path.write_bytes(b"".join(LINES[:-1]) + line[:pos] + replacement + line[pos + 1 :])
    proc = _verify(path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"seq {len(LINES) - 1} at byte offset {_offset(LINES, len(LINES) - 1)}" in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def _rechain(lines: list[bytes]) -> list[bytes]:
    """The same records with every hash recomputed (what a forger would do)."""
    from ledger.codec import GENESIS_HASH, line_hash

    prev = GENESIS_HASH
    out = []
    for line in lines:
        body = line[:-76]
        digest = line_hash(prev, body)
        out.append(body + b',"hash":"' + digest + b'"}\n')
        prev = digest
    return out


@pytest.mark.parametrize(
    ("where", "old", "new"),
    [
        ("middle", b'"type":"item.', b'"type":"item.bogus_'),  # an unknown type
        ("middle", b'"attempt":1', b'"attempt":"one"'),  # data of the wrong type
        ("last", b'"type":"run.completed"', b'"type":"run.finished"'),
        ("last", b'"succeeded":3', b'"succeeded":[3]'),
    ],
)
def test_verify_decodes_what_it_verifies(
    tmp_path: Path, where: str, old: bytes, new: bytes
) -> None:
    """A record with a correct seq and recomputed hash that no other command would
    read is not "chain intact"."""
    lines = list(LINES)
    index = len(lines) - 1
    if where == "middle":
        index = next(i for i in range(MIDDLE, len(lines)) if old in lines[i])
    assert old in lines[index]
    lines[index] = lines[index].replace(old, new, 1)
    path = tmp_path / "ledger.ndjson"
    path.write_bytes(b"".join(_rechain(lines)))
    proc = _verify(path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"seq {index} at byte offset {_offset(LINES, index)}" in proc.stderr
    assert "does not decode" in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_verify_decodes_in_both_halves_of_a_parallel_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ledger import LedgerCorrupt, verify_ledger
    from ledger import reader as reader_module

    monkeypatch.setattr(reader_module, "PARALLEL_VERIFY_BYTES", 1)
    lines = list(LINES)
    index = len(lines) - 2  # in the second half, checked by the forked child
    lines[index] = lines[index].replace(b'"type":"', b'"type":"bogus.', 1)
    path = tmp_path / "ledger.ndjson"
    path.write_bytes(b"".join(_rechain(lines)))
    assert reader_module._split_point(str(path)) is not None
    with pytest.raises(LedgerCorrupt) as info:
        verify_ledger(path)
    assert info.value.seq == index and "does not decode" in info.value.reason
