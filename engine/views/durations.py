"""Lengths of time as people write them, for every view and the CLI alike."""

from __future__ import annotations

__all__ = ["human_duration"]


def human_duration(seconds: float | None) -> str:
    """A length of time as people write it: ``850ms``, ``4.2s``, ``12s``, ``1m12s``, ``2h03m``,
    ``3d04h``."""
    if seconds is None:
        return "-"
    seconds = max(seconds, 0.0)
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 59.95:
        return f"{seconds:.1f}".removesuffix(".0") + "s"
    whole = round(seconds)
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"
