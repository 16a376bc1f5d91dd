"""A real Dask cluster on loopback for the tests: `dask scheduler` and two `dask worker`s.

Session-scoped: started once (about two seconds), stopped at the end by their
process groups. The workers run in this Python (the engine importable), without
a nanny (a worker killed stays dead), and nothing sets the scheduler's
allowed-failures: the executor must. Skipped, saying why, when distributed is
not installed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from engine.exec.local.orphans import OWN

DASK = str(Path(sys.executable).with_name("dask"))
WORKERS = 2
T = TypeVar("T")
START_DEADLINE = 90.0


@dataclass
class DaskCluster:
    address: str
    """``dask://HOST:PORT``."""
    scheduler: subprocess.Popen[bytes]
    workers: list[subprocess.Popen[bytes]]
    directory: Path


def _stop(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    OWN.discard(process.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(grace)


_TIED = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: dies with its parent\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(1)  # the parent died before that was set\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)
"""A launcher that ties a cluster process's life to this test process's: a test run
that is killed (a timeout, ^C twice) leaves no cluster behind."""


def _spawn(argv: list[str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    tied = [sys.executable, "-c", _TIED, str(os.getpid()), *argv]
    with open(log, "ab") as out:
        process = subprocess.Popen(
            tied, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    # This process's own: an engine run in it that adopts orphans must not take them
    # for a step's leftovers (and stop them), nor reap them.
    OWN.add(process.pid)
    return process


def _address(scheduler_file: Path, scheduler: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + START_DEADLINE
    while time.monotonic() < deadline:
        if scheduler.poll() is not None:
            pytest.fail(f"dask scheduler exited with {scheduler.returncode}")
        with contextlib.suppress(OSError, ValueError):
            address: str = json.loads(scheduler_file.read_text())["address"]
            return address
        time.sleep(0.05)
    pytest.fail("the dask scheduler did not write its scheduler file in time")


def _wait_for_workers(address: str, count: int) -> None:
    from distributed import Client

    with Client(address, timeout="60s") as client:
        client.wait_for_workers(count, timeout=START_DEADLINE)


def _on_workers(address: str, function: Callable[..., T]) -> dict[str, T]:
    from distributed import Client

    with Client(address.replace("dask://", "tcp://"), timeout="60s") as client:
        got: dict[str, T] = client.run(function)
        return got


def worker_pids(address: str) -> dict[str, int]:
    """Each worker's pid, by its address (``tcp://HOST:PORT``), of the cluster at ``address``."""
    return _on_workers(address, os.getpid)


def worker_directories(address: str) -> dict[str, Path]:
    """Each worker's local directory, by its address."""
    # A lambda: sent by value (the workers cannot import this module).
    got = _on_workers(address, lambda dask_worker: str(dask_worker.local_directory))
    return {a: Path(d) for a, d in got.items()}


@contextlib.contextmanager
def start_cluster(
    directory: Path, workers: int = WORKERS, *, port: int = 0
) -> Iterator[DaskCluster]:
    """A scheduler (on ``port``, 0: a free one) and ``workers`` workers (4 threads each) on
    loopback, files in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    scheduler_file = directory / "scheduler.json"
    scheduler_argv = ["scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"]
    scheduler_argv += ["--scheduler-file", str(scheduler_file)]
    scheduler = _spawn([DASK, *scheduler_argv], directory / "scheduler.log", directory)
    started: list[subprocess.Popen[bytes]] = []
    try:
        address = _address(scheduler_file, scheduler)
        for i in range(workers):
            argv = ["worker", "--scheduler-file", str(scheduler_file), "--host", "127.0.0.1"]
            argv += ["--nthreads", "4", "--no-nanny", "--no-dashboard", "--name", f"w{i}"]
            argv += ["--local-directory", str(directory / f"w{i}")]
            started.append(_spawn([DASK, *argv], directory / f"worker{i}.log", directory))
        if workers:
            _wait_for_workers(address, workers)
        yield DaskCluster(address.replace("tcp://", "dask://"), scheduler, started, directory)
    finally:
        for process in [*started, scheduler]:
            _stop(process)


@pytest.fixture(scope="session")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskCluster]:
    """The tests' shared cluster (a test that kills a worker starts its own)."""
    pytest.importorskip("distributed", reason="the dask extra is not installed")
    with start_cluster(tmp_path_factory.mktemp("dask-cluster")) as cluster:
        yield cluster


def witness_lines(path: Path) -> list[list[str]]:
    """The words of each line of a witness file the tests' steps append to (none yet: [])."""
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []
