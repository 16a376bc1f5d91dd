"""``${...}`` variables, and how their values reach a command safely.

A value never changes a command's syntax. In a shell command every
``${name}`` is replaced by a reference to an environment variable that holds
the value (``"${ENGINE_VAR_1}"``, quoted), so the shell sees data, never
code. A variable inside single quotes cannot work that way and is a
validation error. ``argv`` steps and agent prompts substitute values into
single arguments, with no shell at all.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

__all__ = [
    "VARIABLE",
    "TemplateError",
    "render_shell",
    "render_text",
    "scan_shell",
    "template_variables",
    "value_text",
]

VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_\-]+)*)\}")
"""``${name}`` or ``${name.field.sub}``."""


class TemplateError(ValueError):
    """A variable is unknown, unset, or placed where it cannot be safe."""


@dataclass(frozen=True)
class Placement:
    start: int
    end: int
    name: str
    quoting: str
    """``none``, ``double`` or ``single``: the shell quoting around it."""


def scan_shell(command: str) -> list[Placement]:
    """Every ``${...}`` in a shell command with the quoting it stands in."""
    found: list[Placement] = []
    state = "none"
    i = 0
    n = len(command)
    while i < n:
        c = command[i]
        if state == "single":
            if c == "'":
                state = "none"
            i += 1
            continue
        if c == "\\" and i + 1 < n:
            i += 2
            continue
        if c == "'" and state == "none":
            # Look for variables inside the single-quoted span too.
            close = command.find("'", i + 1)
            span_end = n if close < 0 else close
            for m in VARIABLE.finditer(command, i + 1, span_end):
                found.append(Placement(m.start(), m.end(), m.group(1), "single"))
            i = span_end + 1
            continue
        if c == '"':
            state = "double" if state == "none" else "none"
            i += 1
            continue
        var = VARIABLE.match(command, i)
        if var:
            found.append(Placement(var.start(), var.end(), var.group(1), state))
            i = var.end()
            continue
        i += 1
    return found


def template_variables(text: str) -> list[str]:
    """The variable names used in any template."""
    return [m.group(1) for m in VARIABLE.finditer(text)]


def value_text(value: Any) -> str:
    """How a value appears in a command: strings as they are, the rest as JSON."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return msgspec.json.encode(value, order="sorted").decode()


def _lookup(name: str, context: Mapping[str, Any]) -> Any:
    parts = name.split(".")
    if parts[0] not in context:
        raise TemplateError(f"unknown variable ${{{name}}}")
    value = context[parts[0]]
    for i, part in enumerate(parts[1:], start=1):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            where = ".".join(parts[:i])
            raise TemplateError(f"${{{name}}}: {where} has no field {part!r}")
    return value


def render_text(template: str, context: Mapping[str, Any]) -> str:
    """Substitute values into plain text (an argv element, a prompt, an id)."""
    return VARIABLE.sub(lambda m: value_text(_lookup(m.group(1), context)), template)


def render_shell(command: str, context: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
    """A shell command whose variables are environment references, and that environment."""
    env: dict[str, str] = {}
    out: list[str] = []
    last = 0
    by_value: dict[str, str] = {}
    for placement in scan_shell(command):
        if placement.quoting == "single":
            raise TemplateError(
                f"${{{placement.name}}} is inside single quotes, where its value could "
                "not be passed safely (use double quotes)"
            )
        text = value_text(_lookup(placement.name, context))
        var = by_value.get(text)
        if var is None:
            var = f"ENGINE_VAR_{len(by_value) + 1}"
            by_value[text] = var
            env[var] = text
        out.append(command[last : placement.start])
        out.append(f"${{{var}}}" if placement.quoting == "double" else f'"${{{var}}}"')
        last = placement.end
    out.append(command[last:])
    return "".join(out), env
