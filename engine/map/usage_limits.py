"""When an agent's usage limit resets, read from what it said.

An agent that hit its usage limit usually says when the limit resets, in one
of a few forms:

* Claude Code's ``Claude AI usage limit reached|1767225600``: the reset as
  epoch seconds (or milliseconds);
* a wall time: ``5-hour limit reached ∙ resets 3pm (Europe/Berlin)``, ``Your
  limit will reset at 3:30pm``, ``resets 15:00 (UTC)``: the next such time
  after now in that zone (an IANA name; without one, the machine's local
  time; an unknown zone is no reset);
* HTTP's ``Retry-After``, as a number of seconds or an HTTP date
  (``retry-after: 30``, ``Retry-After: Wed, 21 Oct 2026 07:28:00 GMT``).

:func:`reset_at` finds the last of these in a text. It is pure: ``now`` is
given. A reset that is not after ``now``, or further ahead than the longest
retry wait (:data:`engine.map.policy.MAX_RETRY_DELAY`), is no reset.
"""

from __future__ import annotations

import datetime as _dt
import email.utils
import re
import zoneinfo

from engine.map.policy import MAX_RETRY_DELAY

__all__ = ["reset_at"]

_EPOCH = re.compile(r"usage limit reached\|(\d{9,13})\b", re.IGNORECASE)
_WALL = re.compile(
    r"\breset(?:s|ting)?\s+(?:at\s+)?(\d{1,2})(?::(\d\d))?(?::(\d\d))?\s*([ap]\.?m\.?)?"
    r"(?:\s*\(([^()\s]+)\))?",
    re.IGNORECASE,
)
_RETRY_AFTER = re.compile(
    r"""\bretry[-_ ]after["']?\s*[:=]\s*["']?"""
    r"(\d+(?:\.\d+)?(?![\w:.])|[A-Za-z]{3},\s*\d{1,2}\s+[A-Za-z]{3}\s+\d{4}\s+\d\d:\d\d:\d\d\s+\w+)",
    re.IGNORECASE,
)


def reset_at(text: str, now: float) -> float | None:
    """When the usage limit ``text`` speaks of resets (epoch seconds), or None.

    Of several resets in ``text``, the last one said wins (the most recent line).
    """
    found: list[tuple[int, float | None]] = []
    found += [(m.start(), _from_epoch(m.group(1))) for m in _EPOCH.finditer(text)]
    found += [(m.start(), _from_wall(m, now)) for m in _WALL.finditer(text)]
    found += [(m.start(), _from_retry_after(m.group(1), now)) for m in _RETRY_AFTER.finditer(text)]
    for _start, when in sorted(found, key=lambda pair: pair[0], reverse=True):
        if when is not None and now < when <= now + MAX_RETRY_DELAY:
            return when
    return None


def _from_epoch(digits: str) -> float:
    value = float(digits)
    return value / 1000 if value >= 1e11 else value  # milliseconds past 5138 AD as seconds


def _from_wall(m: re.Match[str], now: float) -> float | None:
    hour, minute, second = int(m.group(1)), int(m.group(2) or 0), int(m.group(3) or 0)
    meridiem, zone_name = (m.group(4) or "").lower().replace(".", ""), m.group(5)
    if meridiem:
        if not 1 <= hour <= 12:
            return None
        hour = hour % 12 + (12 if meridiem == "pm" else 0)
    elif m.group(2) is None:
        return None  # "resets 3" alone is no time of day
    if hour > 23 or minute > 59 or second > 59:
        return None
    zone: _dt.tzinfo | None = None
    if zone_name is not None:
        try:
            zone = zoneinfo.ZoneInfo(zone_name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            return None
    # Naive times are the machine's local time, both ways (fromtimestamp and timestamp).
    current = _dt.datetime.fromtimestamp(now, zone)
    wall = current.replace(hour=hour, minute=minute, second=second, microsecond=0)
    if wall <= current:
        wall += _dt.timedelta(days=1)  # wall-clock arithmetic: the same time tomorrow
    return wall.timestamp()


def _from_retry_after(value: str, now: float) -> float | None:
    if value[0].isdigit():
        return now + float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.UTC)
    return when.timestamp()
