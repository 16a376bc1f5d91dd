"""Processes as /proc shows them, and stopping process groups.

What a step's process group holds and uses, which live processes belong to
a run (by the ``ENGINE_RUN_ID`` and ``ENGINE_RUN_DIR`` in their
environment), and stopping groups: SIGTERM, a grace period, SIGKILL.

The /proc reader itself is the guardian's (:mod:`engine.exec.local.guardian`),
which runs as a script of its own and can import nothing of the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

from engine.exec.local.guardian import alive_groups, processes
from engine.exec.local.orphans import OWN, adopting

__all__ = [
    "alive_groups",
    "group_members",
    "group_usage",
    "process_command",
    "processes",
    "run_processes",
    "stop_group_leftovers",
    "stop_groups",
    "terminate_group",
]

_PAGE = os.sysconf("SC_PAGE_SIZE")
_TICKS = os.sysconf("SC_CLK_TCK")


def group_usage(pgid: int) -> tuple[int, float, int]:
    """(rss bytes, cpu seconds, processes) of a process group, from /proc."""
    rss = 0
    cpu = 0.0
    count = 0
    for _pid, fields in processes():
        if int(fields[2]) == pgid:
            count += 1
            cpu += (int(fields[11]) + int(fields[12])) / _TICKS
            rss += int(fields[21]) * _PAGE
    return rss, cpu, count


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of a process group."""
    return [pid for pid, fields in processes() if fields[0] != b"Z" and int(fields[2]) == pgid]


def run_processes(run_id: str, run_dir: Path) -> dict[int, tuple[int, str]]:
    """Live processes of attempts of ``run_id`` (by their environment): pid -> (pgid, item).

    Only those of the run in ``run_dir``: another home (another checkout, another
    user's test) may hold a run with the same id at the same time. While this
    engine adopts orphans (:mod:`engine.exec.local.orphans`), its adopted children count
    too when their environment was cleared (``env -i``): no other run's.
    """
    marker = b"ENGINE_RUN_ID=" + os.fsencode(run_id)
    # Attempts carry the run directory resolved (absolute, no symlinks).
    place = b"ENGINE_RUN_DIR=" + os.fsencode(str(run_dir.resolve()))
    me = os.getpid()
    parent = str(me).encode() if adopting() else None
    found: dict[int, tuple[int, str]] = {}
    for pid, fields in processes():
        if pid == me or fields[0] == b"Z":
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except OSError:
            continue  # gone, or not ours to read
        orphan = fields[1] == parent and pid not in OWN
        if orphan and not any(v.startswith(b"ENGINE_RUN_ID=") for v in environ):
            pass  # adopted, its environment cleared: of this run
        elif marker not in environ or place not in environ:
            continue
        item = next(
            (v[len(b"ENGINE_ITEM_ID=") :] for v in environ if v.startswith(b"ENGINE_ITEM_ID=")),
            b"",
        )
        found[pid] = (int(fields[2]), os.fsdecode(item))
    return found


def process_command(pid: int) -> str:
    """A process's command line, for a report ('' when it is gone; at most 64 KiB read)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read(65536)
    except OSError:
        return ""
    return " ".join(part.decode("utf-8", "replace") for part in raw.split(b"\0") if part)


# --- stopping ---------------------------------------------------------------------------------


async def terminate_group(pgid: int, exited: asyncio.Future[Any] | None, grace: float) -> None:
    """SIGTERM the group, wait up to ``grace`` for the leader to exit, then SIGKILL the group."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    if exited is not None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(exited), grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


async def stop_group_leftovers(pgid: int, grace: float) -> int:
    """Stop what is left in a step's process group once its leader has exited.

    SIGTERM, up to ``grace`` seconds for them to go, then SIGKILL; returns how
    many processes were left. One signal-0 probe when nothing is (the usual case).
    """
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return 0
    left = await asyncio.to_thread(group_members, pgid)
    if not left:
        return 0  # zombies only, waiting for their parent (init) to reap them
    await stop_groups({pgid}, grace)
    return len(left)


async def stop_groups(groups: set[int], grace: float) -> None:
    """SIGTERM each process group, up to ``grace`` seconds for them to go, then SIGKILL."""
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while groups and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
        groups = await asyncio.to_thread(alive_groups, groups)
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
