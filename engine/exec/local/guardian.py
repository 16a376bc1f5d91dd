"""The guardian: a dead engine's attempts die with it.

The local executor starts one guardian per engine process, in a session of
its own, and tells it over a pipe which process groups are running
(``+PGID`` when an attempt's process starts, ``-PGID`` when it is reaped).
When the pipe reaches end of file, the engine is gone (exited, crashed or
killed with SIGKILL, which nothing inside the engine could catch): the
guardian sends SIGTERM to every group still registered, waits up to the
grace period for them to end, sends SIGKILL to what is left, and exits.

It runs as a plain script (``python -I guardian.py GRACE``) with the
standard library only, so it starts in a few milliseconds and depends on
nothing the engine imports.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator


def processes() -> Iterator[tuple[int, list[bytes]]]:
    """Every process as (pid, the fields of ``/proc/PID/stat`` after the name).

    Field 0 is the state (``Z``: a zombie), 2 the process group, 11 and 12
    user and system ticks, 21 the resident pages.
    """
    try:
        entries = os.listdir("/proc")
    except OSError:
        return
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # gone meanwhile
        yield int(entry), stat[stat.rfind(b")") + 2 :].split()


def alive_groups(groups: set[int]) -> set[int]:
    """The groups that still have a process that is not a zombie."""
    return {
        int(fields[2])
        for _pid, fields in processes()
        if fields[0] != b"Z" and int(fields[2]) in groups
    }


def _signal(groups: set[int], signum: int) -> None:
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signum)


def main(argv: list[str]) -> int:
    grace = float(argv[1]) if len(argv) > 1 else 5.0
    for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(signum, signal.SIG_IGN)
    live: set[int] = set()
    pending = b""
    while True:
        try:
            chunk = os.read(0, 65536)
        except InterruptedError:  # pragma: no cover - retried by Python already
            continue
        except OSError:
            break
        if not chunk:
            break
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        for line in lines:
            if line.startswith(b"+"):
                live.add(int(line[1:]))
            elif line.startswith(b"-"):
                live.discard(int(line[1:]))
    live = alive_groups(live)
    if not live:
        return 0
    _signal(live, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while live and time.monotonic() < deadline:
        time.sleep(0.02)
        live = alive_groups(live)
    _signal(live, signal.SIGKILL)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
