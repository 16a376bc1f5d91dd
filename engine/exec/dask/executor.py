"""The Dask executor: one task per attempt on a Dask cluster; the ledger stays here.

:class:`DaskExecutor` connects at its first attempt, in the running loop (to
the scheduler at ``address``, or to a local cluster of ``workers`` processes it
starts), and subscribes to the run's topic, where the tasks publish their
heartbeats. Each attempt is one task with a key of its own
(:func:`attempt_key`), never retried by Dask (``retries=0``, and the
scheduler's ``allowed_failures`` 0): a worker that dies takes its attempt with
it, and the outcome says ``worker_lost`` (transient: the engine's retry policy
dispatches it again, recorded). The scheduler starts no more attempts than its
slots, so no more tasks are submitted than ``max_parallel``.

:class:`DaskAttempt` turns the task's messages into heartbeats, its result into
the outcome, and copies the attempt's logs from the worker's staging directory
into the run directory in bounded chunks, each file's sha256 checked against
its reference. A cancel reaches the process group on the worker (Dask's own
cancel would leave it running): through the attempt's claim on the scheduler,
taken first by the coordinator when no worker has claimed it yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import secrets
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

import msgspec

from engine.exec.dask import require_distributed, worker
from engine.exec.dask.cluster import CONNECT_TIMEOUT, DaskUnreachable, connect
from engine.exec.executor import (
    Attempt,
    AttemptOutcome,
    AttemptRequest,
    Executor,
    ExecutorLost,
    HeartbeatSample,
)
from engine.store.logs import LOGS_DIR, attempt_base
from ledger.atomic import fsync_dir, make_private_dir
from ledger.events import AgentActivity, LogRef

__all__ = ["CHUNK", "DaskAttempt", "DaskExecutor", "attempt_key", "run_prefix"]

CHUNK = 1 << 20
"""Bytes of a log copied from a worker at a time."""

CLOSE_TIMEOUT = 15.0
"""Seconds the client's and a local cluster's close may take."""


def run_prefix(run_id: str, run_dir: Path) -> str:
    """What the task keys of a run start with: its id, and its run directory hashed (two
    homes' runs of one id on one cluster are told apart)."""
    home = hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:8]
    return f"engine-{run_id}-{home}-"


def attempt_key(request: AttemptRequest) -> str:
    """The attempt's task key: its run, item and attempt (the item hashed: any id fits),
    and a token of this dispatch's own (an attempt started again is another task)."""
    base = attempt_base(request.item_id, request.attempt, request.phase)
    return f"{run_prefix(request.run_id, request.run_dir)}{base}-{secrets.token_hex(4)}"


def _topic(run_id: str) -> str:
    return f"engine-{run_id}"


def _lost(what: str, where: str | None) -> AttemptOutcome:
    on = "" if where is None else f" {where}"
    error = f"the dask worker{on} running the attempt was lost: {what}"
    return AttemptOutcome(
        ok=False,
        duration=0.0,
        error_type="worker_lost",
        error=error,
        stderr_tail=error,
        worker=where,
    )


def _failed(error: str) -> AttemptOutcome:
    return AttemptOutcome(
        ok=False, duration=0.0, error_type="unknown", error=error, stderr_tail=error
    )


class DaskExecutor(Executor):
    """Runs attempts as tasks on a Dask cluster.

    ``address``: ``dask://HOST:PORT`` of a running scheduler; None starts a local
    cluster of ``workers`` worker processes of ``threads`` threads each at the first
    attempt (closed by :meth:`close`).
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        workers: int = 2,
        threads: int = 1,
        timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        require_distributed()
        self.address = address
        self.workers = workers
        self.threads = threads
        """Attempts each worker of a local cluster runs at once."""
        self.timeout = timeout
        self._unreachable: DaskUnreachable | None = None
        """Why connecting failed (every later attempt fails at once with it)."""
        self.name = address or "dask-local"
        self.client: Any = None
        self.cluster: Any = None
        self._connecting: asyncio.Lock | None = None
        self._topics: set[str] = set()
        self.attempts: dict[str, DaskAttempt] = {}
        """The attempts running, by key (their messages are handed to them)."""

    async def ready(self, run_id: str) -> Any:
        """The client, connected (once) and subscribed to the run's topic."""
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._unreachable is not None:
                raise self._unreachable
            if self.client is None:
                try:
                    self.client, self.cluster = await connect(
                        self.address, self.workers, self.timeout, threads=self.threads
                    )
                except DaskUnreachable as exc:
                    self._unreachable = exc
                    raise
            if self.lost():
                raise self.lost_error("the client is not connected")
            topic = _topic(run_id)
            if topic not in self._topics:
                self.client.subscribe_topic(topic, self._deliver)
                self._topics.add(topic)
        return self.client

    def lost(self) -> bool:
        """Whether the scheduler was lost: the client no longer runs (reconnecting, or closed)."""
        return self.client is not None and self.client.status != "running"

    def lost_error(self, why: str) -> ExecutorLost:
        return ExecutorLost(
            f"the dask scheduler of {self.name} was lost ({why}): the run stops; its "
            "attempts may still run on the workers",
            hint="start the scheduler again at its address and resume the run: what still "
            "runs is stopped first",
        )

    def _deliver(self, event: tuple[float, dict[str, Any]]) -> None:
        """A task's message (in the client's loop: only hands it over)."""
        message = event[1]
        attempt = self.attempts.get(message.get("key", ""))
        if attempt is not None:
            attempt.message(message)

    async def connect(self, run_id: str) -> None:
        await self.ready(run_id)

    async def start(self, request: AttemptRequest) -> Attempt:
        return DaskAttempt(self, request)

    async def reclaim(self, run_id: str, run_dir: Path) -> dict[str, int]:
        """Stop every attempt of the run still running on the cluster (a dead engine's:
        its tasks run on without it); how many were stopped, by item. Their claims
        stay as long as the scheduler knows their tasks: none of them can run again."""
        client = await self.ready(run_id)
        prefix = run_prefix(run_id, run_dir)
        stopped = await client.run(worker.kill_run, prefix, on_error="ignore")
        per_item: dict[str, int] = {}
        for items in stopped.values():
            for item in items if isinstance(items, list) else ():
                per_item[item] = per_item.get(item, 0) + 1
        return per_item

    async def close(self) -> None:
        client, cluster, self.client, self.cluster = self.client, self.cluster, None, None
        self._topics.clear()
        # Bounded: a cluster whose workers died must not keep the engine from ending.
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), CLOSE_TIMEOUT)
        if cluster is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(cluster.close(), CLOSE_TIMEOUT)


class _Unreadable(Exception):
    """A log could not be read from its worker (the worker, or the cluster, went away)."""


class DaskAttempt(Attempt):
    """One attempt as one Dask task: its heartbeats, its outcome, its cancel."""

    def __init__(self, executor: DaskExecutor, request: AttemptRequest) -> None:
        self.executor = executor
        self.request = request
        self.key = attempt_key(request)
        self.pgid: int | None = None
        self.cancelled = False
        self.submitted = False
        self.worker: str | None = None
        self._samples: asyncio.Queue[HeartbeatSample | None] = asyncio.Queue()
        self.task = asyncio.ensure_future(self._run())

    async def heartbeats(self) -> AsyncIterator[HeartbeatSample]:
        while (sample := await self._samples.get()) is not None:
            yield sample

    def message(self, message: dict[str, Any]) -> None:
        """A message the task published: where it started, or a heartbeat (and its
        process group)."""
        if message.get("event") == "started":
            self.worker = message.get("worker")
        if message.get("event") != "beat":
            return
        data = dict(message["sample"])
        agent = data.pop("agent", None)
        self.pgid = message.get("pgid") or self.pgid
        activity = None if agent is None else msgspec.convert(agent, AgentActivity)
        self._samples.put_nowait(HeartbeatSample(**data, agent=activity))

    async def wait(self) -> AttemptOutcome:
        return await asyncio.shield(self.task)

    def cancel(self, *, force: bool = False) -> Coroutine[Any, Any, None]:
        """Cancelled from this call on: a task not submitted yet never is."""
        self.cancelled = True
        return self._stop(force)

    async def _stop(self, force: bool) -> None:
        if self.submitted and not self.task.done():
            with contextlib.suppress(Exception):  # a lost cluster: the task ends saying so
                await asyncio.wait_for(self._stop_remote(force), CLOSE_TIMEOUT)
        with contextlib.suppress(Exception):
            await asyncio.shield(self.task)

    async def _stop_remote(self, force: bool) -> None:
        """Take the attempt's claim, or tell the worker that holds it to stop it."""
        client = self.executor.client
        holder = await client.run_on_scheduler(worker.claim, self.key, worker.CANCELLED_CLAIM)
        if holder != worker.CANCELLED_CLAIM:  # a worker runs it: stop its process group
            address = holder.rsplit("/", 1)[0]
            await client.run(
                worker.cancel_attempt, self.key, force, workers=[address], on_error="ignore"
            )

    def stopped(self) -> bool:
        """Whether the attempt has been cancelled."""
        return self.cancelled

    async def _run(self) -> AttemptOutcome:
        try:
            return await self._execute()
        finally:
            self.executor.attempts.pop(self.key, None)
            self._samples.put_nowait(None)

    async def _execute(self) -> AttemptOutcome:
        from distributed import KilledWorker  # noqa: PLC0415 - the dask extra
        from distributed.client import FutureCancelledError  # noqa: PLC0415

        interrupted = AttemptOutcome(ok=False, duration=0.0, interrupted=True)
        if self.cancelled:
            return interrupted
        request = self.request
        client = await self.executor.ready(request.run_id)
        if self.stopped():  # cancelled while connecting
            return interrupted
        self.executor.attempts[self.key] = self
        future = client.submit(
            worker.run_attempt,
            request,
            self.key,
            _topic(request.run_id),
            key=self.key,
            pure=False,
            retries=0,
        )
        self.submitted = True
        try:
            finished: worker.Finished = await future
        except (KilledWorker, worker.AlreadyClaimed) as exc:
            if self.worker is None:  # its "started" not heard: the claim says where it was
                with contextlib.suppress(Exception):
                    holder = await client.run_on_scheduler(worker.claimant, self.key)
                    self.worker = None if holder is None else holder.rsplit("/", 1)[0]
            if self.worker is None and isinstance(exc, KilledWorker):  # queued there, unclaimed
                self.worker = getattr(getattr(exc, "last_worker", None), "address", None)
            return _lost(str(exc), self.worker)
        except Exception as exc:
            if self.executor.lost():  # not a worker: the scheduler went away
                raise self.executor.lost_error(f"{type(exc).__name__}: {exc}") from None
            if isinstance(exc, (OSError, FutureCancelledError)):  # its worker went away
                return _lost(f"{type(exc).__name__}: {exc}", self.worker)
            # An error in the engine's own code on the worker.
            return _failed(f"the attempt's task failed on the dask worker: {exc!r}")
        finally:
            del future  # its result is not kept on the worker
        self.worker = finished.worker
        return await self._copy_logs(client, finished)

    async def _copy_logs(self, client: Any, finished: worker.Finished) -> AttemptOutcome:
        """The outcome, its logs copied into the run directory (the staging removed)."""
        outcome = dataclasses.replace(finished.outcome, worker=finished.worker)
        if finished.staging is None:
            return outcome
        try:
            for ref in (outcome.stdout, outcome.stderr):
                if ref is not None:
                    await self._copy(client, finished, ref)
        except _Unreadable as exc:  # its worker went away with the logs: the attempt is lost
            if self.executor.lost():
                raise self.executor.lost_error(str(exc)) from None
            return _lost(f"its logs could not be copied: {exc}", finished.worker)
        except (OSError, ValueError) as exc:
            error = f"cannot copy the attempt's log from worker {finished.worker}: {exc}"
            return AttemptOutcome(  # the logs are not what the command printed
                ok=False,
                duration=outcome.duration,
                exit_code=outcome.exit_code,
                error_type="unknown",
                error=error,
                stderr_tail=f"{outcome.stderr_tail}\n{error}".strip(),
                pgid=outcome.pgid,
                worker=finished.worker,
            )
        finally:
            with contextlib.suppress(Exception):  # the worker may be gone: so is its staging
                await client.run(
                    worker.remove_staging,
                    finished.staging,
                    workers=[finished.worker],
                    on_error="ignore",
                )
        return outcome

    async def _copy(self, client: Any, finished: worker.Finished, ref: LogRef) -> None:
        """One log, chunk by chunk, written, checked against its sha256, made durable."""
        source = f"{finished.staging}/{ref.path}"
        target = self.request.run_dir / ref.path
        make_private_dir(target.parent)
        partial = target.with_name(f".{target.name}.copy")
        digest = hashlib.sha256()
        offset = 0
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with open(fd, "wb") as file:
                while offset < ref.size:
                    chunk = await self._chunk(client, finished, source, offset)
                    if not chunk:
                        break
                    file.write(chunk)
                    digest.update(chunk)
                    offset += len(chunk)
                file.flush()
                os.fsync(file.fileno())
            if f"sha256:{digest.hexdigest()}" != ref.sha256 or offset != ref.size:
                raise ValueError(f"{ref.path} arrived with {offset} bytes not matching its sha256")
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        os.replace(partial, target)
        fsync_dir(self.request.run_dir / LOGS_DIR)

    @staticmethod
    async def _chunk(client: Any, finished: worker.Finished, source: str, offset: int) -> bytes:
        """``CHUNK`` bytes of a staged log from ``offset``, read on its worker."""
        try:
            got = await client.run(
                worker.read_chunk, source, offset, CHUNK, workers=[finished.worker]
            )
        except Exception as exc:
            raise _Unreadable(f"{type(exc).__name__}: {exc}") from None
        chunk: bytes = got[finished.worker]
        return chunk
