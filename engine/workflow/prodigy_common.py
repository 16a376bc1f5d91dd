"""What every part of the Prodigy translation shares: its record, templates, retries.

:class:`Translation` gathers what a translation finds (problems at the
Prodigy file's places) and where each key of the engine's document came
from; :func:`rewrite` puts a Prodigy template in the engine's spelling;
:func:`step_retry` and :func:`backoff` read Prodigy's retries. Part of the
Prodigy dialect (:mod:`engine.workflow.prodigy`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.workflow.problems import Finding, Loc
from engine.workflow.prodigy_keys import key_note
from engine.workflow.spec import ERROR_TYPES

__all__ = [
    "AUTOMATION_ENV",
    "JITTER_FACTOR",
    "RENAMED",
    "Translation",
    "backoff",
    "rewrite",
    "scalar_text",
    "step_retry",
]

_NATIVE_ROOTS = frozenset(
    {
        "item",
        "item_id",
        "item_index",
        "item_total",
        "attempt",
        "env",
        "last",
        "shell",
        "claude",
        "map",
        "merge",
        "run",
        "validation",
    }
)
RENAMED = {
    "map.results": "map.agent_results",
    "map.success_rate": "map.success_percent",
    "map.failure_rate": "map.failure_percent",
    "merge.session_id": "run.id",
}
"""Prodigy's variables that the engine has under another name."""

_BRACED = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)((?:\.[A-Za-z0-9_\-]+)*)\}")
_BARE = re.compile(r"(?<![$\\])\$([A-Za-z_][A-Za-z0-9_]*)")

JITTER_FACTOR = 0.3
"""Prodigy's spread of a delay with jitter: delay * (1 +/- 0.15)."""
AUTOMATION_ENV = {"PRODIGY_AUTOMATION": "true"}
"""What Prodigy sets for the agents it runs."""


@dataclass
class Translation:
    """What a translation found: problems at Prodigy's places, and where each engine key was."""

    env_names: set[str] = field(default_factory=set)
    """The names ``env``, ``secrets``, ``profiles`` and ``env_files`` declare."""
    environ: Mapping[str, str] = field(default_factory=dict)
    """The environment the file is read in."""
    captures: set[str] = field(default_factory=set)
    findings: list[Finding] = field(default_factory=list)
    origins: dict[Loc, Loc] = field(default_factory=dict)
    """An engine place -> the Prodigy place it comes from."""
    renames: list[list[tuple[Loc, Loc]]] = field(default_factory=list)
    """For each step being translated (innermost last): its keys Prodigy names otherwise."""
    last_renames: list[tuple[Loc, Loc]] = field(default_factory=list)

    def warn(self, loc: Loc, message: str) -> None:
        self.findings.append(Finding(loc, message, warning=True))

    def error(self, loc: Loc, message: str) -> None:
        self.findings.append(Finding(loc, message))

    def came_from(self, native: Loc, prodigy: Loc) -> None:
        self.origins[native] = prodigy

    def rest(self, section: dict[str, Any], loc: Loc, where: str, handled: set[str]) -> None:
        """One warning or error for each key of ``section`` not in ``handled``."""
        for key in section:
            if key in handled:
                continue
            here = (*loc, str(key))
            known = key_note(where, str(key))
            if known is None:
                self.warn(
                    here,
                    f"{key!r} is not a key Prodigy reads here: ignored, as Prodigy ignores it "
                    "(remove it or fix its spelling)",
                )
            elif known.treatment == "refused":
                self.error(here, f"Prodigy's {key!r} is refused: {known.engine}")
            elif known.treatment == "warned":
                self.warn(here, f"Prodigy's {key!r}: {known.engine}")

    def expect(self, value: Any, kinds: tuple[type, ...], loc: Loc, what: str) -> bool:
        """Whether ``value`` is of one of ``kinds``; an error naming ``what`` it must be if not."""
        if isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds):
            return True
        found = "a list" if isinstance(value, list) else type(value).__name__
        found = {"dict": "a mapping", "str": "text", "NoneType": "nothing"}.get(found, found)
        self.error(loc, f"must be {what} (found {found}; see docs/prodigy.md)")
        return False

    def renamed(self, native: Loc, prodigy: Loc) -> None:
        """Inside the step being translated, the key at ``native`` is Prodigy's ``prodigy``."""
        self.renames[-1].append((native, prodigy))

    def said(self, message: str) -> str:
        """A message about the engine's form, in the names the Prodigy file uses."""
        for old, new in RENAMED.items():
            if not new.startswith("run."):
                message = message.replace("${" + new, "${" + old)
        return message

    def relocate(self, loc: Loc) -> Loc:
        """The Prodigy place of an engine place (its longest known prefix, mapped)."""
        for size in range(len(loc), -1, -1):
            found = self.origins.get(loc[:size])
            if found is not None:
                return (*found, *loc[size:])
        return loc


def scalar_text(value: Any) -> Any:
    """A scalar as YAML gives it (``3``, ``true``), as the text Prodigy reads."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, int | float) else value


# --- templates --------------------------------------------------------------------------------


def rewrite(text: Any, out: Translation, *, shell: bool) -> Any:
    """A Prodigy template in the engine's spelling.

    ``${map.results}`` and the other renamed variables get the engine's name;
    a declared environment name (``${VAR}``, ``$VAR``) becomes ``${env.VAR}``,
    whose value reaches the command as data wherever it stands, as Prodigy's
    textual substitution puts it there. Any other ``${name}`` Prodigy leaves
    as it is: in a shell command it is the shell's (written ``$${name}``,
    the text ``${name}``, whatever the quoting); in a prompt it is the
    environment's variable when there is one, else the text.
    """
    if not isinstance(text, str) or "$" not in text:
        return text

    def braced(m: re.Match[str]) -> str:
        root, rest = m.group(1), m.group(2)
        whole = root + rest
        for old, new in RENAMED.items():
            if whole == old or whole.startswith(old + "."):
                return "${" + new + whole[len(old) :] + "}"
        if rest or root in _NATIVE_ROOTS or root in out.captures:
            return m.group(0)
        if root in out.env_names or (not shell and root in out.environ):
            return "${env." + root + "}"
        return "$" + m.group(0)

    def bare(m: re.Match[str]) -> str:
        name = m.group(1)
        return "${env." + name + "}" if name in out.env_names else m.group(0)

    return _BARE.sub(bare, _BRACED.sub(braced, text))


_RETRY_ON = {
    "network": ["api_error"],
    "server_error": ["api_error"],
    "timeout": ["timeout", "hung"],
    "rate_limit": ["rate_limited"],
}


def step_retry(raw: Any, loc: Loc, out: Translation) -> Any:
    """Prodigy's step ``retry:`` (attempts, backoff, delays, jitter, retry_on)."""
    if not isinstance(raw, dict):
        return raw
    handled = {"attempts", "backoff", "initial_delay", "max_delay", "jitter", "jitter_factor"}
    out.rest(raw, loc, "step.retry", handled | {"retry_on"})
    made: dict[str, Any] = {
        "max_attempts": raw.get("attempts", 3),
        "initial": raw.get("initial_delay", 1),
        "max": raw.get("max_delay", 30),
        "jitter": raw.get("jitter", False),
    }
    if "jitter_factor" in raw or made["jitter"] is True:
        made["jitter_factor"] = raw.get("jitter_factor", JITTER_FACTOR)
    made.update(backoff(raw.get("backoff", "exponential"), (*loc, "backoff"), out))
    types: list[str] = []
    for index, kind in enumerate(raw.get("retry_on") or []):
        if isinstance(kind, str) and kind in _RETRY_ON:
            types += _RETRY_ON[kind]
        else:
            out.warn(
                (*loc, "retry_on", index),
                f"retry_on {kind!r} is not one of network, timeout, server_error, "
                "rate_limit: not applied (every other kind of failure is not retried)",
            )
    made["retry_on"] = sorted(set(types)) if types else list(ERROR_TYPES)
    return made


def backoff(raw: Any, loc: Loc, out: Translation) -> dict[str, Any]:
    """``fixed``, ``{linear: {increment}}``, ``{exponential: {base|multiplier, initial}}``, ..."""
    if isinstance(raw, str):
        return {"backoff": raw}
    if isinstance(raw, dict) and isinstance(raw.get("type"), str):  # the form of Prodigy's docs
        raw = {raw["type"]: {k: v for k, v in raw.items() if k != "type"}}
    if not isinstance(raw, dict) or len(raw) != 1:
        out.error(
            loc,
            "must be fixed, linear, exponential or fibonacci, or one of them with "
            "its settings: {exponential: {initial: 1s, multiplier: 2}}",
        )
        return {}
    ((kind, params),) = raw.items()
    if params is None:
        params = {}
    if not out.expect(params, (dict,), (*loc, str(kind)), "a mapping of its settings"):
        return {}
    made: dict[str, Any] = {"backoff": kind}
    if kind == "exponential":
        if "base" in params or "multiplier" in params:
            factor: Any = params.get("base", params.get("multiplier"))
            whole = isinstance(factor, int) and not isinstance(factor, bool)
            made["multiplier"] = float(factor) if whole else factor
        if "initial" in params:
            made["initial"] = params["initial"]
    elif kind == "fixed" and "delay" in params:
        made["initial"] = params["delay"]
    elif kind == "linear":
        step = params.get("increment", params.get("initial"))
        if step is not None:
            made["initial"] = step
        if "initial" in params and "increment" in params and params["initial"] != step:
            out.warn(loc, "linear backoff waits increment x n here (its initial is not added)")
    elif kind == "fibonacci" and "initial" in params:
        made["initial"] = params["initial"]
    elif kind == "custom":
        out.warn(loc, "custom delays are not supported: exponential backoff is used instead")
        made["backoff"] = "exponential"
    return made
