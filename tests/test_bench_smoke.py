"""The benchmark script runs (tiny sizes): a smoke test, not a measurement."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).parent.parent / "benchmarks" / "bench_ledger.py"


def test_ledger_benchmark_quick(tmp_path: Path) -> None:
    out = tmp_path / "table.md"
    proc = subprocess.run(
        # Scratch files under tmp_path: not in the checkout, where `make bench` may be running.
        [sys.executable, str(BENCH), "--quick", "--out", str(out), "--work", str(tmp_path / "w")],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    table = out.read_text()
    assert "| 16 | 64 |" in table
    assert "engine `replay()`" in table and "`json.loads` per line" in table
