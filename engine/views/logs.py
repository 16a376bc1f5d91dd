"""An attempt's output, as ``engine logs`` shows it: which file, read now or followed.

The file of an ended attempt is the one its ``item.succeeded`` or
``item.failed`` record names (a path under the run directory, its sha256
and size); a running attempt's is the partial file it is writing
(:mod:`engine.store.logs` names both). An attempt whose engine died before
its outcome was recorded (``interrupted``) has its partial file until the
next engine keeps it under its final name and names it in ``item.failed``.
Whichever executor ran the attempt, the files are found the same way.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from engine.home import RunRef
from engine.store.logs import LOGS_DIR, Stream, log_paths
from engine.views.status import unknown_item
from ledger.errors import EngineError
from ledger.events import ItemFailed, ItemSucceeded, LogRef, Record
from ledger.lock import RunLock
from ledger.reader import LedgerReader, ScanResult
from projections.base import Projection, handles
from projections.items import ItemState
from projections.replay import replay

__all__ = ["AttemptLog", "LogMissing", "NoSuchAttempt", "find_log", "follow_log", "read_log"]

_CHUNK = 1 << 16

AttemptState = Literal["ended", "running", "interrupted"]
"""``ended``: its outcome is recorded; ``running``: an engine runs it now;
``interrupted``: no outcome, and no engine holds the run (it died)."""


class NoSuchAttempt(EngineError):
    """``engine logs`` named an item the run does not have, or an attempt it has not made."""

    exit_code = 2

    def __init__(
        self, message: str, *, run_id: str, item: str, attempt: int | None, hint: str | None
    ) -> None:
        self.run_id = run_id
        self.item = item
        self.attempt = attempt
        super().__init__(message, hint=hint)


class LogMissing(EngineError):
    """The log file an outcome record names is not there (or not where a log can be)."""

    exit_code = 1

    def __init__(self, message: str, *, path: str, hint: str | None = None) -> None:
        self.path = path
        super().__init__(message, hint=hint)


@dataclass(frozen=True)
class AttemptLog:
    """One stream of one attempt, and where its bytes are now."""

    run_dir: Path
    item: str
    attempt: int
    attempts: int
    """Attempts the item has had so far."""
    stream: Stream
    state: AttemptState
    ref: LogRef | None
    """The log as its outcome record names it (ended attempts only)."""
    path: Path | None
    """The file to read: the final log, or the partial one; None when nothing was printed."""
    scan: ScanResult
    """Where the ledger was read to."""

    @property
    def partial(self) -> bool:
        """The file is what the attempt had printed when it was cut short (or so far)."""
        return self.state != "ended"


class _Outcomes(Projection):
    """An on-demand fold: one item's outcome records, by attempt."""

    def __init__(self, item: str) -> None:
        self.item = item
        self.outcomes: dict[int, ItemSucceeded | ItemFailed] = {}

    @handles(ItemSucceeded, ItemFailed)
    def _outcome(self, record: Record, e: ItemSucceeded | ItemFailed) -> None:
        if e.item == self.item:
            self.outcomes[e.attempt] = e


def find_log(
    ref: RunRef, item: str, *, attempt: int | None = None, stream: Stream = "stdout"
) -> AttemptLog:
    """The log of ``item``'s attempt (its last one by default) on ``stream``.

    :class:`NoSuchAttempt` (exit 2) for an item the run does not have, one
    that has not run (pending, skipped), or an attempt it has not made;
    :class:`LogMissing` (exit 1) when the file its record names is gone.
    """
    fold = _Outcomes(item)
    p = replay(ref.ledger, extra=(fold,))
    assert p.scan is not None
    run_id = p.run.run_id or ref.run_id
    state = p.items.items.get(item)
    if state is None:
        message, hint = unknown_item(run_id, item, p.items.items)
        raise NoSuchAttempt(message, run_id=run_id, item=item, attempt=attempt, hint=hint)
    if state.attempts == 0:
        raise NoSuchAttempt(
            f"item {item!r} of run {run_id} has no attempt yet: it is {_why(state)}",
            run_id=run_id,
            item=item,
            attempt=attempt,
            hint="an attempt's log exists once it has started; `engine status` shows the run",
        )
    number = state.attempts if attempt is None else attempt
    if not 1 <= number <= state.attempts:
        plural = "s" if state.attempts > 1 else ""
        which = f"1 to {state.attempts}" if state.attempts > 1 else "1"
        raise NoSuchAttempt(
            f"item {item!r} of run {run_id} has no attempt {number}: "
            f"it has had {state.attempts} attempt{plural}",
            run_id=run_id,
            item=item,
            attempt=number,
            hint=f"give --attempt {which}, or leave it out for the last one",
        )
    outcome = fold.outcomes.get(number)
    kind: AttemptState
    log: LogRef | None = None
    if outcome is not None:
        kind = "ended"
        log = outcome.stdout if stream == "stdout" else outcome.stderr
        path = None if log is None else _recorded(ref.run_dir, log)
    else:
        kind = "running" if RunLock(ref.run_dir).probe() is not None else "interrupted"
        path = _present(*log_paths(ref.run_dir, item, number, stream))
    return AttemptLog(ref.run_dir, item, number, state.attempts, stream, kind, log, path, p.scan)


def _why(state: ItemState) -> str:
    if state.status == "skipped":
        return "skipped (a cache hit)" if state.cache_hit else "skipped"
    return state.status


def _recorded(run_dir: Path, log: LogRef) -> Path:
    """The file an outcome record names: under the run's log directory, and there."""
    logs = (run_dir / LOGS_DIR).resolve()
    path = (run_dir / log.path).resolve()
    if path.parent != logs:
        raise LogMissing(
            f"{log.path}: the ledger names a log outside {run_dir / LOGS_DIR}",
            path=log.path,
            hint="the ledger was edited; check it with `engine audit verify`",
        )
    if not path.is_file():
        raise LogMissing(
            f"{run_dir / log.path}: the attempt's log is missing",
            path=str(run_dir / log.path),
            hint="it was deleted or moved; the ledger keeps its sha256 and size",
        )
    return path


def _present(final: Path, partial: Path) -> Path | None:
    """The partial file while it is written, else the final one; None before the first byte."""
    for path in (partial, final):
        if path.is_file():
            return path
    return None


def read_log(log: AttemptLog) -> Iterator[bytes]:
    """The log's bytes as they are now, in chunks."""
    if log.path is None:
        return
    try:
        f = open(log.path, "rb")  # noqa: SIM115 - closed below; a generator holds it
    except FileNotFoundError:
        # A partial file made final in between (an attempt just ending, or a resume).
        final, _ = log_paths(log.run_dir, log.item, log.attempt, log.stream)
        if log.state == "ended" or not final.is_file():
            return
        f = open(final, "rb")  # noqa: SIM115
    with f:
        while chunk := f.read(_CHUNK):
            yield chunk


def follow_log(ref: RunRef, log: AttemptLog, *, check_every: float = 1.0) -> Iterator[bytes]:
    """The log's bytes, then what the attempt prints until it ends (its outcome is
    recorded, or the engine running it is gone); an ended attempt's log, whole."""
    if log.state != "running":
        yield from read_log(log)
        return
    import watchfiles  # noqa: PLC0415 - only a follower needs it

    final, partial = log_paths(ref.run_dir, log.item, log.attempt, log.stream)
    fold = _Outcomes(log.item)
    position = log.scan
    reading = _Follower(final, partial)
    yield from reading.more()
    checked = time.monotonic()
    targets = {str(ref.ledger.resolve()), str(final.resolve()), str(partial.resolve())}

    def ours(_change: object, path: str) -> bool:
        return path in targets

    try:
        for _changes in watchfiles.watch(
            ref.run_dir,
            watch_filter=ours,
            debounce=20,
            step=10,
            rust_timeout=int(check_every * 1000),
            yield_on_timeout=True,
        ):
            yield from reading.more()
            if ref.ledger.stat().st_size > position.end_offset:
                reader = LedgerReader(ref.ledger, start=position)
                for record in reader.records():
                    fold.apply(record)
                assert reader.result is not None
                position = reader.result
            ended = log.attempt in fold.outcomes
            if not ended and time.monotonic() - checked >= check_every:
                checked = time.monotonic()
                ended = RunLock(ref.run_dir).probe() is None  # its engine is gone
            if ended:
                yield from reading.more()
                return
    finally:
        reading.close()


class _Follower:
    """A growing log read from where it was: the partial file, kept open as it becomes final."""

    def __init__(self, final: Path, partial: Path) -> None:
        self.final = final
        self.partial = partial
        self.fd: int | None = None

    def more(self) -> Iterator[bytes]:
        if self.fd is None:
            for path in (self.partial, self.final):
                try:
                    self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                    break
                except FileNotFoundError:
                    continue
            else:
                return
        while chunk := os.read(self.fd, _CHUNK):
            yield chunk

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
