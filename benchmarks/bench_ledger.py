"""Ledger benchmarks: durable appends, replay, chain verification.

    .venv/bin/python benchmarks/bench_ledger.py [--quick] [--repeat N] [--out FILE]

Every figure is a median of N runs, measured side by side with its baseline in
this one script, on the same disk:

* durable appends: the engine's group-commit writer vs one fdatasync per
  record vs SQLite (WAL, synchronous=FULL) with the same batching, with 1 and
  with 16 concurrent appenders, each append acknowledged only once durable;
* replay of a 1,000,000-event ledger (decode, check, fold every projection)
  vs decoding the same file with the standard ``json`` module, with peak
  memory (each in its own process);
* hash-chain verification of the same ledger.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ledger import LedgerWriter, verify_ledger
from ledger.codec import GENESIS_HASH, encode_body, line_hash
from ledger.events import (
    Event,
    Heartbeat,
    ItemDispatched,
    ItemEnqueued,
    ItemFailed,
    ItemRetryScheduled,
    ItemSucceeded,
)
from ledger.times import utc_now

WORK = Path(__file__).resolve().parent / ".work"


def event(n: int) -> Event:
    return ItemEnqueued(item=f"item-{n:07d}", index=n, value={"path": f"src/mod{n}.py", "size": n})


# --- appenders -------------------------------------------------------------------


def run_appenders(
    threads: int, per_thread: int, batch: int, append: Callable[[list[Event]], None]
) -> float:
    """Start ``threads`` appenders; return records per second."""
    barrier = threading.Barrier(threads + 1)

    def work(t: int) -> None:
        events = [event(t * per_thread + i) for i in range(per_thread)]
        barrier.wait()
        for i in range(0, per_thread, batch):
            append(events[i : i + batch])

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    barrier.wait()
    start = time.perf_counter()
    for th in pool:
        th.join()
    return threads * per_thread / (time.perf_counter() - start)


def bench_engine(
    directory: Path, tasks: int, per_task: int, batch: int, *, use_threads: bool = False
) -> tuple[float, float]:
    """The engine's writer: ``tasks`` asyncio tasks (as the engine appends), or threads."""
    writer = LedgerWriter.open(directory, "bench", create=True, command="bench")
    before = writer.fsyncs
    if use_threads:
        rate = run_appenders(tasks, per_task, batch, writer.append_many)
    else:

        async def task(t: int, start: asyncio.Event) -> None:
            events = [event(t * per_task + i) for i in range(per_task)]
            await start.wait()
            for i in range(0, per_task, batch):
                await writer.append_async(events[i : i + batch])

        async def run() -> float:
            start = asyncio.Event()
            pending = [asyncio.create_task(task(t, start)) for t in range(tasks)]
            await asyncio.sleep(0.01)
            began = time.perf_counter()
            start.set()
            await asyncio.gather(*pending)
            return tasks * per_task / (time.perf_counter() - began)

        rate = asyncio.run(run())
    per_sync = tasks * per_task / max(1, writer.fsyncs - before)
    writer.close()
    return rate, per_sync


def bench_fsync_each(directory: Path, threads: int, per_thread: int, batch: int) -> float:
    """The same record format, one write + fdatasync per record, under one mutex."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / "ledger.ndjson", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    mu = threading.Lock()
    state = {"seq": 0, "prev": GENESIS_HASH}

    def append(events: list[Event]) -> None:
        for e in events:
            with mu:
                body = encode_body(seq=state["seq"], ts=utc_now(), run="bench", event=e)  # type: ignore[arg-type]
                digest = line_hash(state["prev"], body)  # type: ignore[arg-type]
                os.write(fd, body + b',"hash":"' + digest + b'"}\n')
                os.fdatasync(fd)
                state["seq"] += 1  # type: ignore[operator]
                state["prev"] = digest

    rate = run_appenders(threads, per_thread, batch, append)
    os.close(fd)
    return rate


def bench_sqlite(directory: Path, threads: int, per_thread: int, batch: int) -> float:
    """SQLite in WAL mode, synchronous=FULL; one transaction per batch."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "ledger.sqlite"
    setup = sqlite3.connect(path)
    setup.execute("PRAGMA journal_mode=WAL")
    setup.execute("CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY, ts TEXT, line BLOB)")
    setup.commit()
    setup.close()
    local = threading.local()

    def append(events: list[Event]) -> None:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA synchronous=FULL")
            local.conn = conn
        rows = [(utc_now(), encode_body(seq=0, ts="", run="bench", event=e)) for e in events]
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO events (ts, line) VALUES (?, ?)", rows)
        conn.execute("COMMIT")

    return run_appenders(threads, per_thread, batch, append)


# --- replay ------------------------------------------------------------------------


def make_ledger(path: Path, events: int) -> None:
    """A realistic mix: per item enqueue, 2 attempts, heartbeats, a retry."""
    writer = LedgerWriter.open(path.parent, "bench", create=True, command="bench")
    ik = "ik:" + "a" * 64
    buf: list[Event] = []
    k = 0
    while writer.next_seq + len(buf) < events:
        it = f"item-{k:07d}"
        buf += [
            ItemEnqueued(item=it, index=k, value={"path": f"src/f{k}.py", "size": k}),
            ItemDispatched(item=it, attempt=1, idempotency_key=ik),
            Heartbeat(item=it, attempt=1, pid=1234, rss=10**8, cpu=0.5, output_bytes=100),
            Heartbeat(item=it, attempt=1, pid=1234, rss=10**8, cpu=0.7, output_bytes=200),
            ItemFailed(
                item=it,
                attempt=1,
                error_type="rate_limited",
                signature=f"{k % 50:064x}",
                message="429 too many requests",
                exit_code=1,
                stderr_tail="error: rate limit",
            ),
            ItemRetryScheduled(
                item=it, attempt=1, delay=2.0, not_before="2026-01-01T00:00:00.000000Z"
            ),
            ItemDispatched(item=it, attempt=2, idempotency_key=ik),
            Heartbeat(item=it, attempt=2, pid=1234, rss=10**8, cpu=0.5, output_bytes=100),
            Heartbeat(item=it, attempt=2, pid=1234, rss=10**8, cpu=0.6, output_bytes=150),
            ItemSucceeded(item=it, attempt=2, duration=1.5, result={"ok": True}),
        ]
        k += 1
        if len(buf) >= 4096:
            writer.append_many(buf)
            buf = []
    writer.append_many(buf[: events - writer.next_seq])
    writer.close()


CHILD = """
import json, resource, sys, time
mode, path = sys.argv[1], sys.argv[2]
t = time.perf_counter()
if mode == "replay":
    from projections.replay import replay
    n = replay(path).seq + 1
elif mode == "replay-nochain":
    from projections.replay import replay
    n = replay(path, verify=False).seq + 1
elif mode == "verify":
    from ledger import verify_ledger
    n = verify_ledger(path).records
elif mode == "stdlib-json":
    n = 0
    with open(path, "rb") as f:
        for line in f:
            json.loads(line)
            n += 1
dt = time.perf_counter() - t
rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"n": n, "seconds": dt, "rss_mb": rss_mb}))
"""


def child(mode: str, path: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(path)], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out)


def median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick", action="store_true", help="Tiny sizes: a smoke test, not a measurement."
    )
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--out", type=Path, help="Also write the markdown tables to this file.")
    ap.add_argument(
        "--work", type=Path, default=WORK, help=f"Scratch directory (default {WORK.name}/ here)."
    )
    args = ap.parse_args()
    work: Path = args.work
    repeat = 1 if args.quick else args.repeat
    n_events = 2_000 if args.quick else args.events
    per_thread_single = 50 if args.quick else 3_000
    work.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    say(
        f"## Ledger benchmarks ({time.strftime('%Y-%m-%d')}, "
        f"{os.cpu_count()} cores, median of {repeat})"
    )
    say()
    say("### Durable appends (records/s; every append acknowledged only once fdatasynced)")
    say()
    say(
        "| appenders | records per append | engine: asyncio tasks | records per fsync "
        "| engine: threads | one fsync per record | SQLite WAL FULL "
        "| engine / fsync-each | engine / SQLite |"
    )
    say("|---|---|---|---|---|---|---|---|---|")
    for threads, batch in ((1, 1), (1, 64), (16, 1), (16, 64)):
        per_thread = per_thread_single * (8 if batch > 1 else 1) // (1 if threads == 1 else 4)
        per_thread -= per_thread % batch
        eng, thr, each, lite, per_sync = [], [], [], [], []
        for r in range(repeat):
            for d in work.glob("append-*"):
                shutil.rmtree(d)
            rate, ps = bench_engine(work / f"append-engine-{r}", threads, per_thread, batch)
            eng.append(rate)
            per_sync.append(ps)
            rate, _ = bench_engine(
                work / f"append-threads-{r}", threads, per_thread, batch, use_threads=True
            )
            thr.append(rate)
            each_n = max(batch, per_thread // (8 if batch > 1 else 1))
            each_n -= each_n % batch
            each.append(bench_fsync_each(work / f"append-each-{r}", threads, each_n, batch))
            lite.append(bench_sqlite(work / f"append-sqlite-{r}", threads, per_thread, batch))
        e, t, f, s = median(eng), median(thr), median(each), median(lite)
        say(
            f"| {threads} | {batch} | {e:,.0f} | {median(per_sync):.1f} | {t:,.0f} | {f:,.0f} "
            f"| {s:,.0f} | {e / f:.1f}x | {e / s:.1f}x |"
        )
    for d in work.glob("append-*"):
        shutil.rmtree(d)

    ledger_path = work / "replay" / "ledger.ndjson"
    if ledger_path.exists():
        shutil.rmtree(ledger_path.parent)
    make_ledger(ledger_path, n_events)
    size_mb = ledger_path.stat().st_size / 1e6
    say()
    say(f"### Replay and verification of a {n_events:,}-event ledger ({size_mb:,.0f} MB)")
    say()
    say("| what | events/s | seconds | peak RSS (MB) | vs stdlib json |")
    say("|---|---|---|---|---|")
    results: dict[str, list[dict[str, float]]] = {}
    for _ in range(repeat):
        for mode in ("stdlib-json", "replay", "replay-nochain", "verify"):
            results.setdefault(mode, []).append(child(mode, ledger_path))
    base = median([x["n"] / x["seconds"] for x in results["stdlib-json"]])
    labels = {
        "stdlib-json": "baseline: `json.loads` per line (decode only, no checks, no fold)",
        "replay": "engine `replay()`: decode + seq + hash chain + fold all projections",
        "replay-nochain": "engine `replay(verify=False)`: decode + seq + fold (no chain)",
        "verify": "engine `verify_ledger()`: seq + hash chain + typed decode of every record",
    }
    for mode in ("stdlib-json", "replay", "replay-nochain", "verify"):
        runs = results[mode]
        rate = median([x["n"] / x["seconds"] for x in runs])
        say(
            f"| {labels[mode]} | {rate:,.0f} | {median([x['seconds'] for x in runs]):.2f} | "
            f"{median([x['rss_mb'] for x in runs]):.0f} | {rate / base:.2f}x |"
        )
    assert verify_ledger(ledger_path).records == n_events
    shutil.rmtree(ledger_path.parent)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
    print(
        "\n(peak RSS of this script: "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
