"""A writer killed with SIGKILL mid-burst never loses an acknowledged append."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ledger import LedgerReader, LedgerWriter, verify_ledger
from tests.conftest import HELPERS


def _kill_mid_burst(run_dir: Path, rng: random.Random, batch: int) -> dict[int, str]:
    """Start an appender, SIGKILL it at a random moment; return what it acked."""
    proc = subprocess.Popen(
        [sys.executable, str(HELPERS / "appender.py"), str(run_dir), str(batch)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    ready = proc.stdout.readline()
    assert ready.startswith("ready"), ready
    acked: dict[int, str] = {}

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            seq, digest = line.split()
            acked[int(seq)] = digest

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(rng.uniform(0.002, 0.120))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    reader.join()
    proc.stdout.close()
    return acked


def _check(run_dir: Path, acked: dict[int, str]) -> None:
    # Recovery happens on open for writing; then the chain must verify whole.
    LedgerWriter.open(run_dir, "crash").close()
    path = run_dir / "ledger.ndjson"
    result = verify_ledger(path)
    assert result.torn is None
    hashes = {r.seq: r.hash for r in LedgerReader(path).records()}
    lost = [seq for seq, digest in acked.items() if hashes.get(seq) != digest]
    assert not lost, f"acknowledged appends lost or replaced: {lost[:10]}"


@pytest.mark.parametrize("batch", [1, 16])
def test_sigkill_mid_burst_keeps_every_acked_append(
    tmp_path: Path, rng: random.Random, batch: int
) -> None:
    run_dir = tmp_path / "run"
    acked: dict[int, str] = {}
    kills = 10  # x2 batch sizes = 20 kills at random moments
    for _ in range(kills):
        acked.update(_kill_mid_burst(run_dir, rng, batch))
        _check(run_dir, acked)
    assert len(acked) > kills  # the appenders really did append between kills


@pytest.mark.soak
@pytest.mark.timeout(3600)
def test_sigkill_soak(tmp_path: Path, rng: random.Random) -> None:
    run_dir = tmp_path / "run"
    acked: dict[int, str] = {}
    for i in range(200):
        acked.update(_kill_mid_burst(run_dir, rng, 1 + i % 32))
        _check(run_dir, acked)
