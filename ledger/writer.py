"""The ledger writer: one per run, append-only, group-committed, fail-stop.

* **One writer per run.** :meth:`LedgerWriter.open` takes the run's
  :class:`~ledger.lock.RunLock` (an flock on the run directory) and an flock
  on the ledger file's inode; a second writer gets
  :class:`~ledger.errors.LedgerLocked` naming the holder, whatever happened
  to the ``lock`` file.
* **Recovery on open.** A torn tail is copied aside to
  ``ledger.ndjson.torn-<offset>``, the file is truncated to the last valid
  record and fsynced, and a ``ledger.recovered`` event records it before
  anything else is appended. Corruption is refused (LedgerCorrupt).
* **Group commit.** :meth:`append` and :meth:`append_many` are thread-safe
  and return only once their records are written and ``fdatasync``ed. While
  one caller (the leader) writes and syncs a batch, others stage their
  records for the next batch; one fsync covers them all.
* **Fail-stop.** A failed write or fsync is never retried (after a failed
  fsync the kernel may have dropped the dirty pages, and a second fsync can
  report success over lost data). The writer refuses every later append with
  :class:`~ledger.errors.LedgerWriteFailed`; reopening recovers the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from hashlib import sha256
from pathlib import Path
from typing import Any

import msgspec

from ledger.atomic import FILE_MODE, atomic_write, fsync_dir, make_private_dir
from ledger.codec import LEDGER_NAME, MAX_RECORD_BYTES, SUFFIX_LEN, body_template
from ledger.errors import LedgerError, LedgerWriteFailed, RecordInvalid, RecordTooLarge
from ledger.events import (
    EVENT_TYPES,
    FORMAT_VERSION,
    RECORD_TYPES,
    Event,
    LedgerRecovered,
    LockAcquired,
    Record,
    decode_record,
)
from ledger.lock import RunLock, lock_fd
from ledger.reader import LedgerReader, ScanResult, TornTail
from ledger.times import utc_now

__all__ = ["LEDGER_NAME", "LedgerWriter"]

_encode_event = msgspec.json.Encoder().encode
_TYPE_BYTES = {t: t.encode() for t in EVENT_TYPES}


class LedgerWriter:
    """Appends records to one run's ledger. Create with :meth:`open`."""

    def __init__(
        self,
        *,
        path: Path,
        run_id: str,
        fd: int,
        lock: RunLock,
        next_seq: int,
        last_hash: bytes,
        clock: Callable[[], str] = utc_now,
        redact: Callable[[Event, bytes], Event] | None = None,
        sync: Callable[[int], None] = os.fdatasync,
    ) -> None:
        self.path = path
        self.run_id = run_id
        self.lock = lock
        self._fd: int | None = fd
        self._next_seq = next_seq
        self._prev_hash = last_hash
        self._durable_seq = next_seq - 1
        self._durable_end = os.fstat(fd).st_size
        self._pending: list[bytes] = []
        self._mu = threading.Lock()
        self._cond = threading.Condition(self._mu)
        self._flushing = False
        self._failed: BaseException | None = None
        self.recovered: TornTail | None = None
        """The torn tail this writer moved aside on open, if any."""
        self.opening: list[Record] = []
        """The records the writer appended when it opened (apply them too)."""
        self.fsyncs = 0
        """How many fdatasync calls this writer made (group-commit batches)."""
        self._sync = sync
        self._io: ThreadPoolExecutor | None = None
        self._io_busy = False
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._clock = clock
        self._redact = redact

    # --- opening ------------------------------------------------------------

    @classmethod
    def open(
        cls,
        run_dir: str | os.PathLike[str],
        run_id: str,
        *,
        create: bool = False,
        command: str | None = None,
        clock: Callable[[], str] = utc_now,
        redact: Callable[[Event, bytes], Event] | None = None,
        sync: Callable[[int], None] = os.fdatasync,
    ) -> LedgerWriter:
        """Lock the run, recover a torn tail, and return a writer at its end.

        With ``create`` the run directory and an empty ledger are made when
        missing. The first records appended are ``ledger.recovered`` (when a
        torn tail was moved aside) and ``lock.acquired``. ``clock`` gives
        each record's ``ts`` (RFC 3339 UTC); tests pass a fixed one.
        ``redact``: every event passes it, with its JSON, before it is hashed
        (the engine's redactor): what it returns is what is recorded, and
        what the returned records carry; an event it returns unchanged is
        not encoded again. ``sync`` makes a batch durable (``os.fdatasync``;
        tests pass one that fails or waits).
        """
        run_dir = Path(run_dir)
        if create:
            make_private_dir(run_dir)
        elif not run_dir.is_dir():
            raise LedgerError(f"{run_dir}: no such run directory", hint="check the run id")
        lock = RunLock(run_dir)
        holder = lock.acquire(command=command)
        try:
            path, fd, scan, moved_to = _open_ledger(run_dir, create=create)
        except BaseException:
            lock.release()
            raise
        writer = cls(
            path=path,
            run_id=run_id,
            fd=fd,
            lock=lock,
            next_seq=scan.records,
            last_hash=scan.last_hash,
            clock=clock,
            redact=redact,
            sync=sync,
        )
        try:
            writer.recovered = scan.torn
            writer.opening = writer.append_many(_opening_events(holder, scan.torn, moved_to))
        except BaseException:
            writer.close()
            raise
        return writer

    # --- appending ----------------------------------------------------------

    @property
    def next_seq(self) -> int:
        """The seq the next appended record will get."""
        return self._next_seq

    @property
    def closed(self) -> bool:
        return self._fd is None

    def append(self, event: Event) -> Record:
        """Append one event; return its record once it is durable."""
        return self.append_many((event,))[0]

    def append_many(self, events: Iterable[Event]) -> list[Record]:
        """Append events in order; return their records once all are durable."""
        batch = list(events)
        if not batch:
            return []
        with self._mu:
            self._check_open()
            records = self._stage(batch)
            self._wait_durable_locked(records[-1].seq)
        return records

    async def append_async(self, events: Iterable[Event]) -> list[Record]:
        """Append events from a coroutine; return their records once durable.

        The event loop never blocks on the disk: an I/O thread writes and
        fsyncs, and keeps going while records are staged, so every flush
        carries whatever the tasks staged during the one before (group
        commit across tasks).
        """
        batch = list(events)
        if not batch:
            return []
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._mu:
            self._check_open()
            records = self._stage(batch)
            self._waiters.append((records[-1].seq, future))
            start = not self._io_busy
            self._io_busy = True
        if start:
            if self._io is None:
                self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-io")
            self._io.submit(self._io_loop)
        await future
        return records

    def _io_loop(self) -> None:
        """The I/O thread: flush what is staged until nothing is left.

        Whatever happens, it leaves with ``_io_busy`` cleared and every
        waiter it took settled: durable records as successes, the rest with
        the error.
        """
        error: BaseException | None = None
        try:
            while True:
                with self._mu:
                    target = self._next_seq - 1
                    if target <= self._durable_seq:
                        break
                    self._wait_durable_locked(target)
                    ready = [w for w in self._waiters if w[0] <= self._durable_seq]
                    self._waiters = [w for w in self._waiters if w[0] > self._durable_seq]
                _settle(ready, None)
        except BaseException as exc:
            error = exc
        finally:
            with self._mu:
                self._io_busy = False
                waiters, self._waiters = self._waiters, []
                durable = self._durable_seq
            _settle([w for w in waiters if w[0] <= durable], None)
            _settle(
                [w for w in waiters if w[0] > durable],
                error
                or LedgerError(f"{self.path}: the writer stopped before this append was durable"),
            )

    def _wait_durable_locked(self, target: int) -> None:
        """Return once seq ``target`` is durable, leading a flush if none runs."""
        while self._durable_seq < target:
            if self._failed is not None:
                raise LedgerWriteFailed(
                    f"{self.path}: an earlier write failed; the writer is stopped",
                    hint="stop the engine and resume the run; the ledger recovers on open",
                ) from self._failed
            if self._flushing:
                self._cond.wait()
            else:
                self._flush_locked()

    def _check_open(self) -> None:
        if self._failed is not None:
            raise LedgerWriteFailed(
                f"{self.path}: an earlier write failed; the writer is stopped",
                hint="stop the engine and resume the run; the ledger recovers on open",
            ) from self._failed
        if self._fd is None:
            raise LedgerError(f"{self.path}: the writer is closed")

    def _stage(self, events: Sequence[Event]) -> list[Record]:
        """Encode, chain and queue events (caller holds the mutex)."""
        staged: list[bytes] = []
        records: list[Record] = []
        seq = self._next_seq
        prev = self._prev_hash
        run = self.run_id
        ts = self._clock()  # records staged together are assigned one time
        template = body_template(ts=ts, run=run)
        encode = _encode_event
        new_hash = sha256
        redact = self._redact
        for given in events:
            event, data = given, encode(given)
            if redact is not None and (redacted := redact(given, data)) is not given:
                event, data = redacted, encode(redacted)
            kind = event.TYPE
            body = template % (seq, _TYPE_BYTES[kind], data)
            if len(body) + SUFFIX_LEN > MAX_RECORD_BYTES:
                raise RecordTooLarge(
                    event_type=kind, size=len(body) + SUFFIX_LEN, limit=MAX_RECORD_BYTES
                )
            h = new_hash(prev)
            h.update(body)
            hex_digest = h.hexdigest()
            digest = hex_digest.encode()
            line = b'%s,"hash":"%s"}\n' % (body, digest)
            try:  # what is acknowledged must read back (NaN, wrong types, ...)
                decode_record(line)
            except (msgspec.DecodeError, UnicodeDecodeError) as exc:
                raise RecordInvalid(event_type=kind, reason=str(exc)) from None
            staged.append(line)
            records.append(
                RECORD_TYPES[kind](
                    v=FORMAT_VERSION, seq=seq, ts=ts, run=run, data=event, hash=hex_digest
                )
            )
            prev = digest
            seq += 1
        # Only a fully staged batch changes the writer's state.
        self._pending.extend(staged)
        self._next_seq = seq
        self._prev_hash = prev
        return records

    def _flush_locked(self) -> None:
        """Write and sync everything staged; the caller holds the mutex."""
        self._flushing = True
        batch = b"".join(self._pending)
        self._pending.clear()
        last = self._next_seq - 1
        fd = self._fd
        error: BaseException | None = None
        interrupt: BaseException | None = None
        self._mu.release()
        try:
            assert fd is not None
            try:
                _write_all(fd, batch, 0)
                self._sync(fd)
            except OSError:
                raise
            except BaseException as exc:
                # A signal's handler raised (Ctrl-C, SIGTERM) between two system
                # calls: the batch is still the engine's to finish. The file's
                # size says how much of it is written (only this writer appends).
                interrupt = exc
                _write_all(fd, batch, os.fstat(fd).st_size - self._durable_end)
                self._sync(fd)
        except BaseException as exc:
            error = exc
        finally:
            self._mu.acquire()
            self._flushing = False
            self.fsyncs += 1
            if error is not None:
                self._failed = error
                # Do not leave unsynced bytes for a later open to trust (fsyncgate):
                # cut the file back to what was durable, best effort.
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, self._durable_end)  # type: ignore[arg-type]
            else:
                self._durable_seq = last
                self._durable_end += len(batch)
            self._cond.notify_all()
        if error is not None:
            raise LedgerWriteFailed(
                f"{self.path}: write or fsync failed ({error}); the writer is stopped",
                hint="nothing after the last durable record is trusted; resume the run",
            ) from error
        if interrupt is not None:
            raise interrupt  # the batch is durable; the interrupt goes on

    # --- closing ------------------------------------------------------------

    def close(self) -> None:
        """Flush what is staged, close the file and release the lock."""
        with self._mu:
            while self._flushing:
                self._cond.wait()
            if self._pending and self._failed is None and self._fd is not None:
                with contextlib.suppress(LedgerWriteFailed):
                    self._flush_locked()
            fd, self._fd = self._fd, None
        if self._io is not None:
            self._io.shutdown(wait=True)
            self._io = None
        if fd is not None:
            os.close(fd)
        self.lock.release()

    def __enter__(self) -> LedgerWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _settle(waiters: list[tuple[int, asyncio.Future[None]]], error: BaseException | None) -> None:
    """Resolve waiting appends from the I/O thread: one wake-up per event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
    for _seq, future in waiters:
        by_loop.setdefault(future.get_loop(), []).append(future)
    for loop, futures in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            loop.call_soon_threadsafe(_resolve, futures, error)


def _resolve(futures: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for future in futures:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


def _open_ledger(run_dir: Path, *, create: bool) -> tuple[Path, int, ScanResult, str]:
    """Open the run's ledger (made when missing, with ``create``) for appending.

    The caller holds the run lock. The whole chain is verified and a torn
    tail moved aside; returns the path, the locked descriptor, the scan, and
    the name the torn tail was moved to (empty when there was none).
    """
    path = run_dir / LEDGER_NAME
    if not path.exists():
        if not create:
            raise LedgerError(f"{path}: no ledger in the run directory")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        os.fsync(fd)
        os.close(fd)
        fsync_dir(run_dir)
    fd = _open_locked(path, run_dir)
    try:
        scan = LedgerReader(path).verify()
        moved_to = _move_aside(path, scan.torn) if scan.torn is not None else ""
    except BaseException:
        os.close(fd)
        raise
    return path, fd, scan, moved_to


def _opening_events(holder: dict[str, Any], torn: TornTail | None, moved_to: str) -> list[Event]:
    """What a writer appends first: the recovery it made, if any, and who holds the lock."""
    opening: list[Event] = []
    if torn is not None:
        opening.append(
            LedgerRecovered(
                offset=torn.offset, length=torn.length, moved_to=moved_to, reason=torn.reason
            )
        )
    opening.append(
        LockAcquired(
            pid=int(holder["pid"]),
            host=str(holder["host"]),
            command=str(holder["command"]),
            started_at=str(holder["started_at"]),
            user=holder.get("user"),
        )
    )
    return opening


def _open_locked(path: Path, run_dir: Path) -> int:
    """Open the ledger for appending, holding an flock on its own inode.

    The run directory's lock keeps a second writer out of the run; this one
    keeps it off the file, whatever path leads to it (a hard link, a moved
    file): two writers never append to one ledger inode.
    """
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    try:
        lock_fd(fd, path=path, run_dir=run_dir)
        if os.fstat(fd).st_ino != os.stat(path).st_ino:
            raise LedgerError(
                f"{path}: the ledger was replaced while it was being opened",
                hint="make sure no other program writes to the run directory, then retry",
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


def _move_aside(path: Path, torn: TornTail) -> str:
    """Copy a torn tail beside the ledger, truncate it away, durably; the copy's name."""
    with open(path, "rb") as f:
        f.seek(torn.offset)
        tail = f.read()
    target = path.with_name(f"{path.name}.torn-{torn.offset}")
    n = 1
    while target.exists() and target.read_bytes() != tail:
        target = path.with_name(f"{path.name}.torn-{torn.offset}.{n}")
        n += 1
    atomic_write(target, tail)
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.ftruncate(fd, torn.offset)
        os.fsync(fd)
    finally:
        os.close(fd)
    return target.name


def _write_all(fd: int, batch: bytes, start: int) -> None:
    """Write ``batch[start:]`` to ``fd``, however many calls it takes."""
    view = memoryview(batch)[start:]
    while view:
        written = os.write(fd, view)
        view = view[written:]
