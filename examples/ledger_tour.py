"""A tour of the durable core: write a run's ledger, replay it, tail it, verify it.

``make run`` runs this. It records the life of a small review batch through
the ledger API (six items: some succeed, one retries after a rate limit, one
times out twice and lands in the dead-letter queue, one is a duplicate, one
is a cache hit), then shows what the CLI rebuilds from that ledger alone:

    engine replay RUN        the run's state, rebuilt by replaying the ledger
    engine tail RUN          the newest records
    engine audit verify RUN  the hash chain, checked end to end
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from ledger import LedgerWriter
from ledger.events import (
    CacheHit,
    CircuitClosed,
    CircuitHalfOpen,
    CircuitOpened,
    Event,
    Heartbeat,
    ItemDeadLettered,
    ItemDispatched,
    ItemDuplicate,
    ItemEnqueued,
    ItemFailed,
    ItemRetryScheduled,
    ItemSkipped,
    ItemSucceeded,
    RunCompleted,
    RunCreated,
    RunStarted,
    StepStarted,
    StepSucceeded,
)

WORKFLOW = """\
name: review
map:
  items: [{path: a.py}, {path: b.py}, {path: c.py}, {path: d.py}, {path: a.py}, {path: e.py}]
  id: "${item.path}"
  agent_template:
    - claude: "/review ${item.path}"
"""


def ticking_clock(start: str = "2026-01-05T09:00:00") -> Callable[[], str]:
    """A clock that advances 250 ms a call: deterministic timestamps."""
    base = dt.datetime.fromisoformat(start)
    ticks: Iterator[int] = itertools.count()

    def now() -> str:
        moment = base + dt.timedelta(milliseconds=250 * next(ticks))
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    return now


def demo_events() -> list[Event]:
    """The events of the demo run, in order."""
    ik = "ik:" + "7" * 64

    def ok(item: str, attempt: int, seconds: float) -> list[Event]:
        return [
            ItemDispatched(item=item, attempt=attempt, idempotency_key=ik, pgid=4242),
            Heartbeat(item=item, attempt=attempt, pid=4242, rss=52_000_000, cpu=0.4),
            ItemSucceeded(item=item, attempt=attempt, duration=seconds, result={"issues": 0}),
        ]

    def fail(item: str, attempt: int, kind: str, sig: str, msg: str, code: int | None) -> Event:
        return ItemFailed(
            item=item,
            attempt=attempt,
            error_type=kind,
            signature=sig,
            message=msg,
            exit_code=code,
            signal=None if code is not None else 15,
            duration=3.0,
            stderr_tail=msg,
        )

    rate = "sha256:" + "1" * 64
    slow = "sha256:" + "2" * 64
    events: list[Event] = [
        RunCreated(
            workflow_name="review",
            workflow_path="review.yml",
            workflow_hash="sha256:" + "9" * 64,
            workflow=WORKFLOW,
            vars={"MODEL": "sonnet"},
            engine_version="0.1.0",
            user="demo",
            host="demo-host",
        ),
        RunStarted(pid=4242, host="demo-host", max_parallel=2),
        StepStarted(phase="setup", index=0, command="git ls-files '*.py' > files.txt"),
        StepSucceeded(phase="setup", index=0, duration=0.1),
        ItemEnqueued(item="a.py", index=0, value={"path": "a.py"}),
        ItemEnqueued(item="b.py", index=1, value={"path": "b.py"}),
        ItemEnqueued(item="c.py", index=2, value={"path": "c.py"}),
        ItemEnqueued(item="d.py", index=3, value={"path": "d.py"}),
        ItemDuplicate(item="a.py", index=4, first_index=0),
        ItemEnqueued(item="e.py", index=5, value={"path": "e.py"}),
        *ok("a.py", 1, 2.5),
        ItemDispatched(item="b.py", attempt=1, idempotency_key=ik, pgid=4243),
        fail("b.py", 1, "rate_limited", rate, "429 rate limit exceeded", 1),
        ItemRetryScheduled(
            item="b.py", attempt=1, delay=2.0, not_before="2026-01-05T09:00:06.000000Z"
        ),
        ItemDispatched(item="c.py", attempt=1, idempotency_key=ik, pgid=4244),
        Heartbeat(item="c.py", attempt=1, pid=4244, rss=61_000_000, cpu=1.2, output_bytes=512),
        fail("c.py", 1, "timeout", slow, "timed out after 10m", None),
        ItemRetryScheduled(
            item="c.py", attempt=1, delay=4.0, not_before="2026-01-05T09:00:09.000000Z"
        ),
        CircuitOpened(failures=2, error_type="rate_limited", cooldown=30.0),
        CircuitHalfOpen(probe_item="b.py"),
        *ok("b.py", 2, 3.1),
        CircuitClosed(reason="probe succeeded"),
        ItemDispatched(item="c.py", attempt=2, idempotency_key=ik, pgid=4245),
        fail("c.py", 2, "timeout", slow, "timed out after 10m", None),
        ItemDeadLettered(
            item="c.py", attempt=2, error_type="timeout", signature=slow, reason="retries exhausted"
        ),
        *ok("d.py", 1, 1.9),
        CacheHit(item="e.py", key="sha256:" + "5" * 64),
        ItemSkipped(item="e.py", reason="cache", cache_key="sha256:" + "5" * 64),
        StepStarted(phase="reduce", index=0, command="echo done"),
        StepSucceeded(phase="reduce", index=0, duration=0.05),
        RunCompleted(succeeded=3, failed=0, dead=1, skipped=1),
    ]
    return events


def write_demo_run(run_dir: Path, run_id: str, *, clock: Callable[[], str] | None = None) -> Path:
    """Write the demo run's ledger under ``run_dir``; return the ledger's path."""
    with LedgerWriter.open(
        run_dir,
        run_id,
        create=True,
        command="engine (ledger tour)",
        clock=clock or ticking_clock(),
    ) as writer:
        for event in demo_events():
            writer.append(event)  # one at a time, as a live engine appends
        return writer.path


def main() -> int:
    home = Path(os.environ.get("ENGINE_HOME") or ".engine")
    run_id = "tour-" + dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S-%f")
    run_dir = home / "runs" / run_id
    write_demo_run(run_dir, run_id, clock=ticking_clock(dt.datetime.now().isoformat()))
    engine = str(Path(sys.executable).with_name("engine"))
    steps = [
        ("The run's state, rebuilt from its ledger alone", ["replay", run_id]),
        ("Its newest records", ["tail", run_id, "-n", "6"]),
        (
            "Only the failures, as raw ledger lines",
            ["tail", run_id, "--type", "item.failed", "--json"],
        ),
        ("The hash chain, checked end to end", ["audit", "verify", run_id]),
    ]
    print(f"Wrote a demo run's ledger: {run_dir / 'ledger.ndjson'}\n")
    for title, args in steps:
        print(f"$ engine {' '.join(args)}    # {title}")
        sys.stdout.flush()
        code = subprocess.run([engine, "--home", str(home), *args], check=False).returncode
        print()
        if code != 0:
            print(f"engine {args[0]} exited {code}", file=sys.stderr)
            return code
    print("Next: `engine replay latest --json`, `engine tail latest -f` (from another terminal),")
    print("or flip a byte in the ledger and run `engine audit verify latest`.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
