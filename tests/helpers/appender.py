"""A writer process for crash tests: appends forever, printing each acked seq.

    python appender.py RUN_DIR [BATCH]

Opens (and so recovers) the run's ledger, then appends events in batches of
BATCH (default 1) as fast as it can. After each append returns (durable), it
writes the seqs it got to stdout, one per line, and flushes: everything
printed was acknowledged. Runs until killed.
"""

from __future__ import annotations

import itertools
import os
import sys

from ledger import LedgerWriter
from ledger.events import Heartbeat, ItemEnqueued


def main() -> None:
    run_dir = sys.argv[1]
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    out = os.fdopen(sys.stdout.fileno(), "w", buffering=1)
    writer = LedgerWriter.open(run_dir, "crash", create=True, command="appender")
    out.write(f"ready {writer.next_seq}\n")
    for n in itertools.count():
        events = [
            ItemEnqueued(item=f"item-{n}-{k}", index=n, value={"payload": "x" * (n % 700)})
            if k % 2 == 0
            else Heartbeat(item=f"item-{n}-{k}", attempt=1, pid=os.getpid(), output_bytes=n)
            for k in range(batch)
        ]
        records = writer.append_many(events)
        out.write("".join(f"{r.seq} {r.hash}\n" for r in records))


if __name__ == "__main__":
    main()
