"""Time as the ledger writes it: RFC 3339 UTC with microseconds, and back to epoch seconds.

Every timestamp the project writes (a record's ``ts``, a retry's
``not_before``, a heartbeat's ``touched_at``, a lock holder's start) has
this one form, ``2026-12-01T12:00:00.000000Z``, and every reader turns one
back into epoch seconds with :func:`epoch`.
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Callable

__all__ = ["FORMAT", "epoch", "reading", "rfc3339", "utc_now"]

FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
"""The ``strftime`` form of every timestamp (UTC, microseconds, ``Z``)."""

_second_cache: tuple[int, str] = (-1, "")


def utc_now() -> str:
    """The current time in :data:`FORMAT` (the writer's hot path: the second's prefix is cached)."""
    global _second_cache
    second, fraction = divmod(time.time_ns() // 1000, 1_000_000)
    cached_second, prefix = _second_cache  # one tuple: threads never see half an update
    if cached_second != second:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second_cache = (second, prefix)
    return f"{prefix}.{fraction:06d}Z"


def rfc3339(seconds: float) -> str:
    """Epoch seconds in :data:`FORMAT`."""
    return _dt.datetime.fromtimestamp(seconds, _dt.UTC).strftime(FORMAT)


def epoch(ts: str) -> float:
    """Epoch seconds of an RFC 3339 time (``Z`` or an offset; naive times are UTC)."""
    parsed = _dt.datetime.fromisoformat(ts)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=_dt.UTC)
    return parsed.timestamp()


def reading(clock: Callable[[], float]) -> Callable[[], str]:
    """A clock of epoch seconds as one of RFC 3339 text: for the real clock
    (:func:`time.time`), :func:`utc_now` (the same time, its second's prefix cached)."""
    if clock is time.time:
        return utc_now
    return lambda: rfc3339(clock())
