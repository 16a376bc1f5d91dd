"""When an agent's usage limit resets, read from what it said.

An agent that hit its usage limit usually says when the limit resets, in one
of a few forms:

* Claude Code's ``Claude AI usage limit reached|1767225600``: the reset as
  epoch seconds (or milliseconds);
* a wall time: ``5-hour limit reached ∙ resets 3pm (Europe/Berlin)``, ``Your
  limit will reset at 3:30pm``, ``resets 15:00 (UTC)``: the next such time
  after now in that zone (an IANA name; without one, the machine's local
  time; an unknown zone is no reset);
* a date and a wall time: ``Weekly limit reached ∙ resets Oct 9, 10am (UTC)``,
  ``resets Dec 3 at 9am (Europe/Berlin)``, ``resets October 9 at 10:30am``: that
  date's time in that zone (this year's, else next year's when it is past); or a
  weekday and a wall time (``resets Mon 10am``): that time on the next such day;
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
from collections.abc import Iterable

from engine.map.policy import MAX_RETRY_DELAY

__all__ = ["failure_reset", "reset_at"]

_EPOCH = re.compile(r"usage limit reached\|(\d{9,13})\b", re.IGNORECASE)
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WALL = re.compile(
    r"\breset(?:s|ting)?\s+(?:(?:at|on)\s+)?"
    # a date first: "Oct 9, ", "December 3 at ", or a weekday: "Mon ", "Tuesday at "
    r"(?:(?P<month>jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?"
    r"|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?\s+(?P<day>\d{1,2})"
    r"(?:st|nd|rd|th)?,?\s+(?:at\s+)?"
    r"|(?P<weekday>mon(?:day)?|tue(?:s(?:day)?)?|wed(?:nesday)?|thu(?:r(?:s(?:day)?)?)?"
    r"|fri(?:day)?|sat(?:urday)?|sun(?:day)?)\.?,?\s+(?:at\s+)?)?"
    r"(?P<hour>\d{1,2})(?::(?P<minute>\d\d))?(?::(?P<second>\d\d))?\s*(?P<meridiem>[ap]\.?m\.?)?"
    r"(?:\s*\((?P<zone>[^()\s]+)\))?",
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


def failure_reset(error_type: str, texts: Iterable[str | None], now: float) -> float | None:
    """When the usage limit a failure hit resets: for a ``rate_limited`` one, the first of
    ``texts`` (its message, then the ends of its stderr and stdout) that says; else None."""
    if error_type != "rate_limited":
        return None
    for text in texts:
        resets = reset_at(text, now) if text else None
        if resets is not None:
            return resets
    return None


def _from_epoch(digits: str) -> float:
    value = float(digits)
    return value / 1000 if value >= 1e11 else value  # milliseconds past 5138 AD as seconds


def _from_wall(m: re.Match[str], now: float) -> float | None:
    hour, minute, second = int(m["hour"]), int(m["minute"] or 0), int(m["second"] or 0)
    meridiem, zone_name = (m["meridiem"] or "").lower().replace(".", ""), m["zone"]
    if meridiem:
        if not 1 <= hour <= 12:
            return None
        hour = hour % 12 + (12 if meridiem == "pm" else 0)
    elif m["minute"] is None:
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
    at = _dt.time(hour, minute, second)
    if m["month"] is not None:
        wall = _next_date(current, _MONTHS.index(m["month"][:3].lower()) + 1, int(m["day"]), at)
        return None if wall is None else wall.timestamp()
    # Wall-clock arithmetic: the same time of day, that day (or the next such day).
    wall = _dt.datetime.combine(current.date(), at, current.tzinfo)
    weekday = m["weekday"]
    if weekday is not None:
        wall += _dt.timedelta(days=(_WEEKDAYS.index(weekday[:3].lower()) - current.weekday()) % 7)
    if wall <= current:
        wall += _dt.timedelta(days=1 if weekday is None else 7)
    return wall.timestamp()


def _next_date(current: _dt.datetime, month: int, day: int, at: _dt.time) -> _dt.datetime | None:
    """The first ``month``/``day`` at ``at`` after ``current``: this year's, else next
    year's (None for a day that year has not, like Feb 30; a later one is too far)."""
    for year in (current.year, current.year + 1):
        try:
            wall = _dt.datetime.combine(_dt.date(year, month, day), at, current.tzinfo)
        except ValueError:
            continue  # Feb 29 of a common year, Apr 31
        if wall > current:
            return wall
    return None


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
