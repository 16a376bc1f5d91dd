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
