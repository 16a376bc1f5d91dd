"""`engine tail -f` prints records as another process appends them."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path

from ledger import LedgerWriter
from ledger.events import Heartbeat, ItemEnqueued
from tests.conftest import ENGINE


def test_follow_prints_new_records_with_filters(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "live"
    writer = LedgerWriter.open(run_dir, "live", create=True)
    writer.append(ItemEnqueued(item="before", index=0))
    proc = subprocess.Popen(
        [
            ENGINE,
            "--home",
            str(tmp_path),
            "tail",
            "live",
            "-f",
            "-n",
            "0",
            "--json",
            "--type",
            "item.*",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    stdout = proc.stdout
    threading.Thread(target=lambda: [lines.put(line) for line in stdout], daemon=True).start()
    try:
        time.sleep(1.0)  # let it start watching
        started = time.monotonic()
        for i in range(1, 6):
            writer.append(Heartbeat(item=f"i{i}", attempt=1))  # filtered out
            writer.append(ItemEnqueued(item=f"i{i}", index=i))
        got = [json.loads(lines.get(timeout=10)) for _ in range(5)]
        latency = time.monotonic() - started
        assert [g["data"]["item"] for g in got] == [f"i{i}" for i in range(1, 6)]
        assert all(g["type"] == "item.enqueued" for g in got)
        assert latency < 5
        # A partial line being written is not printed until it is complete.
        with open(run_dir / "ledger.ndjson", "ab") as f:
            f.write(b'{"v":1,"seq":')
            f.flush()
            os.fsync(f.fileno())
        time.sleep(0.5)
        assert lines.empty()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)
        stdout.close()
        assert proc.stderr is not None
        err = proc.stderr.read()
        proc.stderr.close()
        writer.close()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
