"""The value types of a workflow's fields: durations, environment names and maps, counts.

Shared by the spec's models (:mod:`engine.workflow.spec`, which re-exports
them) and by whatever reads a workflow's values before its models do.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, StrictInt

from engine.limits import MAX_DURATION, MAX_ENV_ENTRY

__all__ = ["Count", "Duration", "EnvMap", "EnvNames", "check_env_name", "parse_duration"]

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _seconds(number: float) -> float:
    """A duration's seconds, checked: finite, not negative, at most a year."""
    if math.isnan(number) or math.isinf(number):
        raise ValueError("a duration is a finite number of seconds (not NaN or infinity)")
    if number < 0:
        raise ValueError("a duration cannot be negative")
    if number > MAX_DURATION:
        raise ValueError(f"a duration is at most {MAX_DURATION:.0f} seconds (a year)")
    return number


def parse_duration(value: Any) -> Any:
    """``"1h30m"`` -> 5400.0; numbers are seconds; anything else is refused."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '10s', '2m'")
    if isinstance(value, int):
        # Compared before float(): a 400-digit int would overflow it.
        return _seconds(float(max(-1, min(value, int(MAX_DURATION) + 1))))
    if isinstance(value, float):
        return _seconds(value)
    if isinstance(value, str):
        text = value.strip().replace(" ", "")
        if 0 < len(text) <= 64 and _DURATION.sub("", text) == "":
            return _seconds(sum(float(n) * _UNITS[u] for n, u in _DURATION.findall(text)))
        try:
            number = float(text) if len(text) <= 64 else math.nan
        except ValueError:
            number = math.nan
        if math.isnan(number) and text.lower().lstrip("+-") != "nan":
            raise ValueError(
                f"{value[:40]!r} is not a duration (use e.g. '500ms', '10s', '2m', '1h30m')"
            )
        return _seconds(number)
    raise ValueError("a duration is a number of seconds or a string like '10s', '2m'")


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_env_name(name: str) -> str:
    """An environment variable's name: letters, digits and ``_``, not first a digit."""
    if not _ENV_NAME.fullmatch(name):
        raise ValueError(
            f"{name[:40]!r} is not an environment variable name "
            "(use letters, digits and _, not starting with a digit)"
        )
    return name


def _env_names(env: dict[str, str]) -> dict[str, str]:
    for name, value in env.items():
        check_env_name(name)
        size = len(name.encode("utf-8")) + len(value.encode("utf-8", "surrogatepass")) + 2
        if size > MAX_ENV_ENTRY:
            raise ValueError(
                f"the entry {name}=... is {size:,} bytes: an environment entry holds at most "
                f"{MAX_ENV_ENTRY:,} (put the value in a file and give its path)"
            )
    return env


def _env_name_list(names: list[str]) -> list[str]:
    for name in names:
        check_env_name(name)
    return names


EnvMap = Annotated[dict[str, str], AfterValidator(_env_names)]
EnvNames = Annotated[list[str], AfterValidator(_env_name_list)]
Count = Annotated[StrictInt, Field(le=2**62)]
"""A whole number (``true`` or ``2.0`` is refused), small enough for the ledger."""


Duration = Annotated[float, BeforeValidator(parse_duration)]
"""Seconds: a finite number from 0 to a year, or a string such as ``10s`` or ``1h30m``."""
