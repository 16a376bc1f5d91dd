"""Reaching a Dask cluster: an address given (``dask://HOST:PORT``), or one started here.

Either way the scheduler's ``allowed_failures`` is set to 0: Dask would
otherwise run a task again on another worker after its worker died, an
execution no ``item.dispatched`` record stands for. (The claim each task takes,
:func:`engine.exec.dask.worker.claim`, refuses such a run even on a scheduler
that would not be told.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import Any

from engine.exec.local.orphans import OWN
from ledger.errors import EngineError

__all__ = [
    "CONNECT_TIMEOUT",
    "DaskUnreachable",
    "connect",
    "dask_setup",
    "scheduler_address",
]

CONNECT_TIMEOUT = 30.0
"""Seconds to reach the scheduler."""


class DaskUnreachable(EngineError):
    """The Dask scheduler named cannot be reached."""

    exit_code = 2


def scheduler_address(address: str) -> str:
    """``dask://HOST:PORT`` (or ``tcp://HOST:PORT``) as Dask spells it."""
    if address.startswith("dask://"):
        return "tcp://" + address.removeprefix("dask://")
    return address


def _own_children() -> None:
    """The local cluster's processes (its workers, multiprocessing's resource tracker) are
    the engine's own: not orphans of a step to stop at the run's end."""
    me = str(os.getpid())
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(entry.path, "stat").read_text()
                if stat[stat.rfind(")") + 2 :].split()[1] == me:
                    OWN.add(int(entry.name))


def dask_setup(worker: Any = None) -> None:
    """In each worker process of a local cluster (its preload), as it starts: a session of
    its own. The workers are the engine's children, in its process group: a terminal's
    Ctrl-C (SIGINT to the whole foreground group) would kill them, and their attempts
    would be lost, not interrupted. Out of the group, only the engine gets the signal; it
    interrupts the attempts and closes the cluster. (A worker still dies with the engine:
    its nanny's pipe closes.)"""
    with contextlib.suppress(OSError):  # already a group leader: not the engine's group
        os.setsid()


async def _listening(address: str, timeout: float) -> None:
    """Refuse at once an address where nothing listens (Dask's client would retry it until
    its timeout)."""
    host, _, port = address.removeprefix("dask://").rpartition(":")
    try:
        _reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host.strip("[]"), int(port)), timeout
        )
    except (OSError, TimeoutError) as exc:
        raise _unreachable(address, exc) from None
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


def _unreachable(address: str | None, exc: BaseException) -> DaskUnreachable:
    return DaskUnreachable(
        f"cannot reach the dask scheduler at {address}: {exc}",
        hint="start one with `dask scheduler`, or run with --executor dask to start "
        "a local cluster",
    )


def _no_reruns(dask_scheduler: Any = None) -> None:
    dask_scheduler.allowed_failures = 0


async def connect(
    address: str | None, workers: int, timeout: float = CONNECT_TIMEOUT, *, threads: int = 1
) -> tuple[Any, Any]:
    """An asynchronous client (and the local cluster started for it, or None)."""
    import dask  # noqa: PLC0415 - the dask extra, only for this executor
    import distributed  # noqa: PLC0415

    local_cluster: Any = distributed.LocalCluster
    new_client: Any = distributed.Client

    # Dask's own log lines (a lost connection's tracebacks) are not the engine's: what
    # matters reaches the ledger and the one line the engine says.
    for name in ["distributed", *logging.root.manager.loggerDict]:
        if name.split(".")[0] == "distributed":
            logging.getLogger(name).setLevel(logging.CRITICAL)
    cluster = None
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        if address is None:
            cluster = await local_cluster(
                n_workers=workers,
                threads_per_worker=threads,
                processes=True,
                asynchronous=True,
                host="127.0.0.1",
                dashboard_address=None,
                # No dashboard; its HTTP server (health, metrics) on a free loopback port.
                scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"},
                silence_logs=logging.ERROR,
                preload=[__name__],  # dask_setup: out of the engine's process group
            )
            _own_children()
            target: Any = cluster
        else:
            target = scheduler_address(address)
            await _listening(address, timeout)
        try:
            client: Any = await new_client(target, asynchronous=True, timeout=timeout)
        except (OSError, TimeoutError) as exc:
            if cluster is not None:
                await cluster.close()
            raise _unreachable(address, exc) from None
    await client.run_on_scheduler(_no_reruns)
    return client, cluster
