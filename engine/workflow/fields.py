"""The value types of a workflow's fields: durations, environment names and maps, counts.

Shared by the spec's models (:mod:`engine.workflow.spec`, which re-exports
them) and by whatever reads a workflow's values before its models do.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictInt

from engine.limits import MAX_DURATION, MAX_ENV_ENTRY

__all__ = [
    "USD",
    "Count",
    "Duration",
    "EnvEntries",
    "EnvMap",
    "EnvNames",
    "EnvValue",
    "Profiles",
    "Secrets",
    "check_env_name",
    "entry_value",
    "parse_duration",
]

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


def _check_entry(name: str, value: str) -> None:
    check_env_name(name)
    size = len(name.encode("utf-8")) + len(value.encode("utf-8", "surrogatepass")) + 2
    if size > MAX_ENV_ENTRY:
        raise ValueError(
            f"the entry {name}=... is {size:,} bytes: an environment entry holds at most "
            f"{MAX_ENV_ENTRY:,} (put the value in a file and give its path)"
        )


def _env_names(env: dict[str, str]) -> dict[str, str]:
    for name, value in env.items():
        _check_entry(name, value)
    return env


def _env_name_list(names: list[str]) -> list[str]:
    for name in names:
        check_env_name(name)
    return names


class EnvValue(BaseModel):
    """An ``env`` entry written as a mapping: ``{value: TEXT, secret: true}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    value: str
    secret: bool = False
    """Passed to commands like any value, never recorded (the run's copy of the
    workflow holds ``***`` in its place)."""


_ENTRY = "an entry is a string, or {value: TEXT, secret: true}"


def _env_value(value: Any) -> Any:
    """A string as it is; a mapping ``{value, secret}`` as an :class:`EnvValue`."""
    if isinstance(value, str | EnvValue):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"must be a string (quote it); {_ENTRY}")
    unknown = [str(k) for k in value if k not in ("value", "secret")]
    if unknown:
        raise ValueError(f"unknown key {unknown[0][:40]!r} in an env entry ({_ENTRY})")
    if "value" not in value:
        raise ValueError(f"an env entry written as a mapping needs `value` ({_ENTRY})")
    if not isinstance(value["value"], str):
        raise ValueError("`value` must be a string (quote it)")
    secret = value.get("secret", False)
    if not isinstance(secret, bool):
        raise ValueError("`secret` must be true or false")
    return EnvValue(value=value["value"], secret=secret)


def entry_value(entry: str | EnvValue) -> str:
    """An ``env`` entry's value, whichever way it is written."""
    return entry if isinstance(entry, str) else entry.value


def _env_entries(env: dict[str, str | EnvValue]) -> dict[str, str | EnvValue]:
    for name, entry in env.items():
        _check_entry(name, entry_value(entry))
    return env


Entry = Annotated[str | EnvValue, BeforeValidator(_env_value)]


def _profile(profile: dict[str, Any]) -> dict[str, Any]:
    for name, entry in profile.items():
        if name == "description":
            if not isinstance(entry, str):
                raise ValueError("a profile's `description` is text (quote it)")
        else:
            _check_entry(name, entry_value(entry))
    return profile


def _profiles(profiles: Any) -> Any:
    if isinstance(profiles, dict):
        for name in profiles:
            if not isinstance(name, str) or not name.strip():
                raise ValueError("a profile's name is a non-empty string")
    return profiles


def _secret_sources(value: Any) -> Any:
    """``[NAME, ...]`` as it is; ``{NAME: SOURCE}`` with ``{env: SOURCE}`` read as ``SOURCE``."""
    if isinstance(value, list):
        for name in value:
            if not isinstance(name, str):
                raise ValueError("a secret's name is a string (quote it)")
        return value
    if not isinstance(value, dict):
        raise ValueError(
            "use a list of names (taken from the environment), or a mapping "
            "NAME: SOURCE_VARIABLE (the command gets NAME with SOURCE_VARIABLE's value)"
        )
    out: dict[str, str] = {}
    for name, given in value.items():
        source = given["env"] if isinstance(given, dict) and list(given) == ["env"] else given
        if not isinstance(name, str) or not isinstance(source, str):
            raise ValueError(
                f"the source of {str(name)[:40]} must be an environment variable's name, "
                "or {env: NAME}"
            )
        out[name] = source
    return out


def _secret_names(value: list[str] | dict[str, str]) -> list[str] | dict[str, str]:
    for name in value:
        check_env_name(name)
    if isinstance(value, dict):
        for source in value.values():
            check_env_name(source)
    return value


EnvMap = Annotated[dict[str, str], AfterValidator(_env_names)]
EnvEntries = Annotated[dict[str, Entry], AfterValidator(_env_entries)]
"""``env``: each value a string, or ``{value: TEXT, secret: true}``."""
Profiles = Annotated[
    dict[str, Annotated[dict[str, Entry], AfterValidator(_profile)]],
    BeforeValidator(_profiles),
]
"""``profiles``: NAME -> entries as in ``env``, and an optional ``description``."""
Secrets = Annotated[
    list[str] | dict[str, str], BeforeValidator(_secret_sources), AfterValidator(_secret_names)
]
"""``secrets``: names taken from the environment, or NAME -> the variable it is taken from."""
EnvNames = Annotated[list[str], AfterValidator(_env_name_list)]
Count = Annotated[StrictInt, Field(le=2**62)]
"""A whole number (``true`` or ``2.0`` is refused), small enough for the ledger."""


def _usd(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{value!r} is not an amount (write US dollars as a number, e.g. 25.0)")
    return float(value)


USD = Annotated[float, BeforeValidator(_usd)]
"""An amount of US dollars: a number (``"25"`` or ``true`` is refused)."""


Duration = Annotated[float, BeforeValidator(parse_duration)]
"""Seconds: a finite number from 0 to a year, or a string such as ``10s`` or ``1h30m``."""
