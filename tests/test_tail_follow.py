"""`engine tail -f` prints records as another process appends them."""

from __future__ import annotations

import itertools
import json
import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path

from ledger import LedgerWriter
from ledger.codec import encode_body, line_hash
from ledger.events import Heartbeat, ItemEnqueued
from ledger.times import utc_now
from tests.conftest import ENGINE
from tests.engine_helpers import DEADLINE, wait_for


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
        # With -n 0 what is there when it starts is not printed: append probes
        # until one comes out, and it is following.
        probes = itertools.count()

        def following() -> bool:
            writer.append(ItemEnqueued(item=f"probe-{next(probes)}", index=0))
            try:
                lines.get(timeout=0.2)
            except queue.Empty:
                return False
            return True

        wait_for(following, what="tail -f to print an appended record")
        for i in range(1, 6):
            writer.append(Heartbeat(item=f"i{i}", attempt=1))  # filtered out
            writer.append(ItemEnqueued(item=f"i{i}", index=i))
        got: list[dict[str, object]] = []
        while len(got) < 5:
            record = json.loads(lines.get(timeout=DEADLINE))
            if not str(record["data"]["item"]).startswith("probe-"):
                got.append(record)
        assert [g["data"]["item"] for g in got] == [f"i{i}" for i in range(1, 6)]
        assert all(g["type"] == "item.enqueued" for g in got)
        # A record written in two pieces is printed once it is complete, whole:
        # never the partial line being written.
        last = writer.append(ItemEnqueued(item="last", index=6))
        assert json.loads(lines.get(timeout=DEADLINE))["data"]["item"] == "last"
        writer.close()
        body = encode_body(
            seq=last.seq + 1, ts=utc_now(), run="live", event=ItemEnqueued(item="whole", index=7)
        )
        line = body + b',"hash":"' + line_hash(last.hash.encode(), body) + b'"}\n'
        with open(run_dir / "ledger.ndjson", "ab") as f:
            f.write(line[:13])
            f.flush()
            os.fsync(f.fileno())
            time.sleep(0.5)  # a window for a wrong print to show (load can only hide it)
            assert lines.empty()
            f.write(line[13:])
        printed = lines.get(timeout=DEADLINE)
        assert printed.encode() == line
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=DEADLINE)
        stdout.close()
        assert proc.stderr is not None
        err = proc.stderr.read()
        proc.stderr.close()
        writer.close()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
