"""`engine resume` refuses a ledger whose last complete record was changed.

One changed byte in the last record is corruption, not a torn tail: resume
must not move a durable record aside and run its item again.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ledger import LedgerReader
from tests.conftest import ENGINE
from tests.engine_helpers import run_workflow, write_workflow

WORKFLOW = """
name: tampered
map:
  items: [a, b, c]
  id: "${item}"
  max_parallel: 1
  agent_template:
    - run: echo "${item}" >> ran.log
"""


def _interrupted_run(tmp_path: Path) -> tuple[Path, Path, int]:
    """A run cut back to just after its last item.succeeded (as if the engine died)."""
    wf = write_workflow(tmp_path, WORKFLOW)
    home = tmp_path / "home"
    result = run_workflow(wf, home)
    assert result.status == "completed"
    ledger = result.run_dir / "ledger.ndjson"
    last = max(
        offset
        for offset, _line, record in LedgerReader(ledger).lines()
        if record.type == "item.succeeded"
    )
    data = ledger.read_bytes()
    end = data.index(b"\n", last) + 1
    ledger.write_bytes(data[:end])
    return home, result.run_dir, last


@pytest.mark.parametrize("replacement", [b"\x00", b"x", b"\n"])
def test_resume_refuses_a_changed_byte_in_the_last_record(
    tmp_path: Path, replacement: bytes
) -> None:
    home, run_dir, last = _interrupted_run(tmp_path)
    ledger = run_dir / "ledger.ndjson"
    data = ledger.read_bytes()
    seq = sum(1 for _ in LedgerReader(ledger).records()) - 1
    pos = data.index(b'"data":', last) + 12
    tampered = data[:pos] + replacement + data[pos + 1 :]
    ledger.write_bytes(tampered)
    ran = (tmp_path / "ran.log").read_text()
    proc = subprocess.run(
        [ENGINE, "--home", str(home), "resume", run_dir.name, "--no-progress"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    assert f"corrupt at seq {seq} (byte offset {last})" in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert ledger.read_bytes() == tampered  # nothing moved aside, nothing appended
    assert not list(run_dir.glob("ledger.ndjson.torn-*"))
    assert (tmp_path / "ran.log").read_text() == ran  # no item ran again
