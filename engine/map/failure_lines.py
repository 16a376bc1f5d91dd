"""Failures told on stderr while the map runs, as ``map.error_collection`` says.

Presentation only: every failure is in the ledger whatever is told here.

* ``immediate``: one line per failed attempt, as it is recorded;
* ``batched:N``: a block of N such lines each time N more attempts failed,
  and the rest when the map ends;
* ``aggregate`` (the default): nothing while the map runs; the run's summary
  (and ``engine dlq list``, ``engine query``) tell them at the end.

A line names the item, the attempt, the error type, the first line of the
error and what follows (a retry, the dead-letter queue, or nothing more)::

    engine: item r1 attempt 1 failed, rate_limited: HTTP 429 (retry in 2.0s)

An attempt interrupted because the engine stops (a signal, a cancel) is not
told: it is no failure of the item, and it runs again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ledger.events import Event, ItemDeadLettered, ItemFailed, ItemRetryScheduled

__all__ = ["FailureLines", "failure_line"]

ITEM_WIDTH = 80
ERROR_WIDTH = 200


class FailureLines:
    """The failed attempts of one map, told through ``warn`` as ``mode`` says."""

    def __init__(self, mode: str, warn: Callable[[str], None]) -> None:
        self.warn = warn
        self.immediate = mode == "immediate"
        self.batch = 1 if self.immediate else _batch_size(mode)
        """Failed attempts per block; 0: none told while the map runs (``aggregate``)."""
        self.waiting: list[str] = []
        self.told = 0

    def note(self, events: Sequence[Event]) -> None:
        """The failures among ``events`` (one append's), told once enough are waiting."""
        if not self.batch:
            return
        decisions: dict[tuple[str, int], Event] = {
            (e.item, e.attempt): e
            for e in events
            if isinstance(e, ItemRetryScheduled | ItemDeadLettered)
        }
        for e in events:
            if isinstance(e, ItemFailed) and e.error_type != "interrupted":
                self.waiting.append(failure_line(e, decisions.get((e.item, e.attempt))))
        while len(self.waiting) >= self.batch:
            self._tell(self.waiting[: self.batch])
            del self.waiting[: self.batch]

    def flush(self) -> None:
        """Tell what waits (the map ended before a block was full)."""
        if self.waiting:
            self._tell(self.waiting)
            self.waiting = []

    def _tell(self, lines: list[str]) -> None:
        self.told += len(lines)
        if self.immediate:
            for line in lines:
                self.warn(f"engine: {line}")
            return
        plural = "s" if len(lines) != 1 else ""
        head = f"engine: {len(lines)} more failed attempt{plural} ({self.told} in all):"
        self.warn("\n".join([head, *(f"  {line}" for line in lines)]))


def failure_line(failed: ItemFailed, decision: Event | None) -> str:
    """One failed attempt as a line: item, attempt, error type, the error's first line,
    and what follows it."""
    first = next((line for line in failed.message.splitlines() if line.strip()), "")
    error = _printable(first.strip(), ERROR_WIDTH) or "(no message)"
    item = _printable(failed.item, ITEM_WIDTH)
    if isinstance(decision, ItemRetryScheduled):
        then = f"retry in {decision.delay:.1f}s" if decision.delay > 0 else "retry now"
    elif isinstance(decision, ItemDeadLettered):
        then = "dead-lettered"
    else:
        then = "not retried"
    return f"item {item} attempt {failed.attempt} failed, {failed.error_type}: {error} ({then})"


def _batch_size(mode: str) -> int:
    """N of ``batched:N`` (validated by the spec); 0 for ``aggregate``."""
    kind, _, size = mode.partition(":")
    return int(size) if kind == "batched" and size.isdigit() else 0


def _printable(text: str, width: int) -> str:
    """``text`` safe for a terminal (control characters as ``?``), cut to ``width``."""
    safe = "".join(ch if ch.isprintable() else "?" for ch in text[: width + 1])
    return safe if len(safe) <= width else safe[: width - 3] + "..."
