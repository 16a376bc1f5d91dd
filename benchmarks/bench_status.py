"""`engine status RUN --json` on a 1,000,000-item ledger and on a 100-item one.

    .venv/bin/python benchmarks/bench_status.py [--sizes 100,1000000] [--repeat 5]

Each ledger is synthetic, written with the engine's own writer in large
batches: per item ``item.enqueued``, ``item.dispatched``, then
``item.succeeded`` (one item in 10,000 fails and is dead-lettered instead),
between ``run.created``/``run.started`` and ``run.completed``. Its snapshot
is written as the engine writes its final one (``Checkpoints.after_append``
with ``final``). Then ``engine status RUN --json`` runs as a whole process,
with the snapshot and with it moved aside, alternating, the median of
``--repeat`` runs of each (the outputs are checked equal, but for ``took_s``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from engine.store.snapshots import Checkpoints
from ledger import LedgerWriter
from ledger.events import (
    Event,
    ItemDeadLettered,
    ItemDispatched,
    ItemEnqueued,
    ItemFailed,
    ItemSucceeded,
    MapEnqueued,
    RunCompleted,
    RunCreated,
    RunStarted,
)
from projections.replay import replay
from projections.snapshots import SNAPSHOT_NAME
from projections.stats import SessionsProjection

ENGINE = str(Path(sys.executable).with_name("engine"))
BATCH = 30_000
DEAD_EVERY = 10_000


def _item_events(k: int) -> list[Event]:
    it = f"item-{k:07d}"
    out: list[Event] = [
        ItemEnqueued(item=it, index=k, value=str(k)),
        ItemDispatched(item=it, attempt=1, idempotency_key=f"ik:{k:064x}"),
    ]
    if k % DEAD_EVERY == DEAD_EVERY - 1:
        sig = f"{k % 7:064x}"
        out.append(
            ItemFailed(item=it, attempt=1, error_type="nonzero_exit", signature=sig, exit_code=1)
        )
        out.append(
            ItemDeadLettered(
                item=it, attempt=1, error_type="nonzero_exit", signature=sig, reason="exhausted"
            )
        )
    else:
        out.append(ItemSucceeded(item=it, attempt=1, duration=0.01))
    return out


def build(run_dir: Path, n: int) -> Path:
    """A completed run of ``n`` items in ``run_dir``, with its final snapshot."""
    writer = LedgerWriter.open(run_dir, run_dir.name, create=True, command="bench")
    created = RunCreated(workflow_name="status-bench", workflow_path="wf.yml", workflow_hash="x")
    writer.append_many([created, RunStarted(pid=os.getpid(), host="bench", max_parallel=4)])
    buf: list[Event] = []
    for k in range(n):
        buf += _item_events(k)
        if len(buf) >= BATCH:
            writer.append_many(buf)
            buf = []
    dead = n // DEAD_EVERY
    buf += [MapEnqueued(total=n), RunCompleted(succeeded=n - dead, dead=dead)]
    writer.append_many(buf)
    writer.close()
    ledger = run_dir / "ledger.ndjson"
    p = replay(ledger, extra=(SessionsProjection(),), snapshot=False)
    Checkpoints(ledger).after_append(p, final=True)
    assert (run_dir / SNAPSHOT_NAME).exists(), "no snapshot written"
    return ledger


def status_once(run_dir: Path) -> tuple[float, dict[str, object]]:
    start = time.perf_counter()
    done = subprocess.run(
        [ENGINE, "status", str(run_dir), "--json"], capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - start
    if done.returncode not in (0, 1):
        raise SystemExit(f"engine status exited {done.returncode}: {done.stderr[-500:]}")
    view = json.loads(done.stdout)
    view.pop("took_s", None)
    return wall, view


def measure(run_dir: Path, repeat: int) -> tuple[float, float]:
    """Median walls with the snapshot and without it, measured alternating."""
    snap = run_dir / SNAPSHOT_NAME
    aside = run_dir / (SNAPSHOT_NAME + ".aside")
    with_s: list[float] = []
    without: list[float] = []
    views = []
    for _ in range(repeat):
        wall, view = status_once(run_dir)
        with_s.append(wall)
        views.append(view)
        snap.rename(aside)
        try:
            wall, view = status_once(run_dir)
        finally:
            aside.rename(snap)
        without.append(wall)
        views.append(view)
    assert all(v == views[0] for v in views), "status differs with and without the snapshot"
    return statistics.median(with_s), statistics.median(without)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="100,1000000")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="bench-status-"))
    try:
        rows = []
        for n in sizes:
            t0 = time.perf_counter()
            ledger = build(tmp / f"run-{n}", n)
            built = time.perf_counter() - t0
            snap_mb = (ledger.parent / SNAPSHOT_NAME).stat().st_size / 1e6
            with_s, without = measure(ledger.parent, args.repeat)
            rows.append((n, ledger.stat().st_size / 1e6, snap_mb, with_s, without, built))
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"load average: {load}; median of {args.repeat}, alternating\n")
        print("| items | ledger MB | snapshot MB | status with snapshot | without | built in |")
        print("|---:|---:|---:|---:|---:|---:|")
        for n, mb, smb, w, wo, built in rows:
            print(f"| {n:,} | {mb:.1f} | {smb:.1f} | {w:.3f} s | {wo:.3f} s | {built:.0f} s |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
