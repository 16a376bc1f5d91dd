"""What runs on a Dask worker: one attempt as one task, with the local executor's own code.

The task (:func:`run_attempt`) first claims its attempt on the scheduler (one
atomic ``setdefault`` in a dict on the scheduler object): a task that finds its
claim taken (a Dask re-run after a worker died, or the coordinator's cancel
that came first) never starts a process. It then checks that the workspace is
here, and drives a :class:`~engine.exec.local.attempt.LocalAttempt` in an event
loop of its own, its run directory replaced by a staging directory on this
worker: process groups, timeouts with TERM then KILL, hung detection, heartbeats,
captures and output parsing are the local executor's. Each heartbeat is
published on the run's topic (``log_event``); the outcome comes back as the
task's result, and the coordinator copies the logs from staging
(:func:`read_chunk`, :func:`remove_staging`). :func:`cancel_attempt` and
:func:`kill_run` reach the attempts of this worker process through a registry.

Every function here is called by name from the coordinator (pickled by
reference): the engine must be installed in the workers' Python.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import msgspec

from engine.exec.executor import AttemptOutcome, AttemptRequest, HeartbeatSample
from engine.exec.local.attempt import LocalAttempt
from engine.exec.local.guardian_client import Guardian

__all__ = [
    "CANCELLED_CLAIM",
    "AlreadyClaimed",
    "Finished",
    "cancel_attempt",
    "claim",
    "claimant",
    "kill_run",
    "read_chunk",
    "remove_staging",
    "run_attempt",
]

CANCELLED_CLAIM = "cancelled"
"""The claim the coordinator takes for an attempt it cancels before a worker claimed it."""

STAGING = "engine-staging"
"""The directory of the attempts' staging directories, under the worker's local directory."""

_LOCK = threading.Lock()
_RUNNING: dict[str, tuple[asyncio.AbstractEventLoop, LocalAttempt]] = {}
"""Attempts running in this worker process: key -> (their loop, the attempt)."""
_CANCELLED: dict[str, bool] = {}
"""Attempts cancelled before they registered here: key -> force."""


_STOPPING: set[asyncio.Future[None]] = set()
"""Cancels under way (held until the attempt's loop ends)."""


class _SharedGuardian(Guardian):
    """The worker process's guardian, shared by the attempts of its task threads (each
    with a loop of its own): registrations are sent at once, under a lock."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def register(self, pgid: int) -> None:
        with self._lock:
            self._pending[pgid] = True
            self.flush()

    def unregister(self, pgid: int) -> None:
        with self._lock:
            self._pending[pgid] = False
            self.flush()


_GUARDIAN = _SharedGuardian()
"""Stops this worker's attempts' process groups should the worker process die."""


class AlreadyClaimed(RuntimeError):
    """The attempt was claimed by another execution: this one refuses to run."""


@dataclasses.dataclass(frozen=True)
class Finished:
    """What a task gives back: the outcome, where it ran, and where its logs wait."""

    outcome: AttemptOutcome
    worker: str
    staging: str | None
    """The staging directory of its logs on the worker (None: no log to copy, none kept)."""


CLAIMS = "_engine_claims"
"""The attribute of the scheduler object that holds the claims: key -> claimant."""


def _claims(dask_scheduler: Any) -> dict[str, str]:
    """The scheduler's claims; the first call also installs their janitor (a scheduler
    plugin): a claim lives exactly as long as the scheduler knows its task, so that
    nothing can run a task again once its claim is gone (a result lost with its worker
    is computed again while a client still holds the key: the claim refuses that run)."""
    claims: dict[str, str] | None = dask_scheduler.__dict__.get(CLAIMS)
    if claims is None:
        claims = dask_scheduler.__dict__[CLAIMS] = {}
        dask_scheduler.add_plugin(_janitor(claims), name="engine-claims", idempotent=True)
    return claims


def _janitor(claims: dict[str, str]) -> Any:
    from distributed.diagnostics.plugin import SchedulerPlugin  # noqa: PLC0415 - a scheduler

    class ClaimsJanitor(SchedulerPlugin):
        def transition(self, key: Any, start: str, finish: str, *args: Any, **kw: Any) -> None:
            if finish == "forgotten":
                claims.pop(key, None)

    return ClaimsJanitor()


def claim(key: str, claimant: str, dask_scheduler: Any = None) -> str:
    """On the scheduler (its loop: atomic): the key's claimant, ``claimant`` if first."""
    return _claims(dask_scheduler).setdefault(key, claimant)


def claimant(key: str, dask_scheduler: Any = None) -> str | None:
    """On the scheduler: who claimed ``key`` (``ADDRESS/PID`` of a worker), if anyone."""
    return _claims(dask_scheduler).get(key)


def _of_run(key: str, prefix: str) -> bool:
    """Whether ``key`` is an attempt's of the run whose keys start with ``prefix``
    (and not of a run whose id only starts with the same characters)."""
    rest = key.removeprefix(prefix)
    parts = rest.split("-")
    return rest != key and len(parts) == 3 and len(parts[0]) == 16 and parts[1].isdigit()


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _prefix(key: str) -> str:
    """The run's part of an attempt's key (``engine-RUN-HOME-``, before ``ITEM-N-TOKEN``)."""
    return key.rsplit("-", 3)[0] + "-"


def _staging(local_directory: str, prefix: str) -> Path:
    """The staging directory of the run whose keys start with ``prefix``, on this worker."""
    return Path(local_directory) / STAGING / _digest(prefix)


def _interrupted() -> AttemptOutcome:
    return AttemptOutcome(ok=False, duration=0.0, interrupted=True)


def run_attempt(request: AttemptRequest, key: str, topic: str) -> Finished:
    """The task: claim, check the workspace, run the attempt here, give its outcome back."""
    from distributed import get_client, get_worker  # noqa: PLC0415 - on a worker

    worker = get_worker()
    me = f"{worker.address}/{os.getpid()}"
    client: Any = get_client()
    holder = client.run_on_scheduler(claim, key, me)
    if holder == CANCELLED_CLAIM:
        return Finished(_interrupted(), worker.address, None)
    if holder != me:
        raise AlreadyClaimed(f"attempt {key} already claimed by {holder}: refusing to run it again")
    worker.log_event(topic, {"key": key, "event": "started", "worker": worker.address})
    if not request.cwd.is_dir():
        error = (
            f"the workspace {request.cwd} does not exist on worker {worker.address}: the dask "
            "executor needs the workspace at the same path on every worker"
        )
        failed = AttemptOutcome(ok=False, duration=0.0, error_type="validation_failed", error=error)
        return Finished(dataclasses.replace(failed, stderr_tail=error), worker.address, None)
    staging = _staging(worker.local_directory, _prefix(key)) / _digest(key)
    with _LOCK:  # not while remove_staging removes the run's directory, empty
        staging.mkdir(parents=True, exist_ok=True)
    local = dataclasses.replace(request, run_dir=staging)

    def publish(message: dict[str, Any]) -> None:
        worker.log_event(topic, {"key": key, **message})

    outcome = asyncio.run(_drive(local, key, publish))
    if outcome.stdout is None and outcome.stderr is None:  # no log to copy: none kept
        remove_staging(str(staging))
        return Finished(outcome, worker.address, None)
    return Finished(outcome, worker.address, str(staging))


async def _drive(request: AttemptRequest, key: str, publish: Any) -> AttemptOutcome:
    """Run the attempt in this thread's own loop; its heartbeats published as they come."""
    loop = asyncio.get_running_loop()
    with _LOCK:
        force = _CANCELLED.pop(key, None)
        if force is not None:
            return _interrupted()
        attempt = LocalAttempt(request, guardian=_GUARDIAN)
        _RUNNING[key] = (loop, attempt)
    try:
        async for sample in attempt.heartbeats():
            publish({"event": "beat", "sample": _sample(sample), "pgid": attempt.pgid})
        return await attempt.wait()
    finally:
        with _LOCK:
            _RUNNING.pop(key, None)


def _sample(sample: HeartbeatSample) -> dict[str, Any]:
    """A heartbeat as msgpack can carry it."""
    data = dataclasses.asdict(sample)
    data["agent"] = None if sample.agent is None else msgspec.to_builtins(sample.agent)
    return data


def _stop(entry: tuple[asyncio.AbstractEventLoop, LocalAttempt], force: bool) -> None:
    loop, attempt = entry

    def stop() -> None:
        _STOPPING.add(asyncio.ensure_future(attempt.cancel(force=force)))

    with contextlib.suppress(RuntimeError):  # ended meanwhile: its loop is closed
        loop.call_soon_threadsafe(stop)


def cancel_attempt(key: str, force: bool, dask_worker: Any = None) -> str:
    """On the worker: stop the attempt ``key`` (its process group), or keep it from starting."""
    with _LOCK:
        entry = _RUNNING.get(key)
        if entry is None:
            _CANCELLED[key] = force
            return "pending"
    _stop(entry, force)
    return "stopping"


async def kill_run(prefix: str, wait: float = 30.0, dask_worker: Any = None) -> list[str]:
    """On the worker (its loop): stop every attempt running here of the run whose keys
    start with ``prefix`` (a resume's reclaim), SIGKILL to their process groups at once;
    return once they have ended (or after ``wait`` seconds), their staging removed, with
    the items whose attempts were stopped."""
    with _LOCK:
        entries = {key: entry for key, entry in _RUNNING.items() if _of_run(key, prefix)}
    for entry in entries.values():
        pgid = entry[1].pgid
        if pgid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        _stop(entry, True)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        with _LOCK:
            if not any(key in _RUNNING for key in entries):
                break
        await asyncio.sleep(0.02)
    if dask_worker is not None:  # nobody will copy the logs left in the run's staging now
        shutil.rmtree(_staging(dask_worker.local_directory, prefix), ignore_errors=True)
    return [attempt.request.item_id for _loop, attempt in entries.values()]


def read_chunk(path: str, offset: int, size: int, dask_worker: Any = None) -> bytes:
    """On the worker: ``size`` bytes of a staged file from ``offset`` (fewer at its end)."""
    with open(path, "rb") as file:
        file.seek(offset)
        return file.read(size)


def remove_staging(path: str, dask_worker: Any = None) -> None:
    """On the worker: remove an attempt's staging directory, its logs copied, and the
    run's, once it holds no other attempt's (a run leaves nothing on the workers)."""
    shutil.rmtree(path, ignore_errors=True)
    with _LOCK, contextlib.suppress(OSError):  # not empty: another attempt of the run's
        os.rmdir(Path(path).parent)
