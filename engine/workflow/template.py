"""``${...}`` variables, and how their values reach a command safely.

A value never changes a command's syntax. In a shell command every
``${name}`` is replaced by a reference to an environment variable that holds
the value (``"${ENGINE_VAR_1}"``, quoted), so the shell sees data, never
code. When the text is code for another shell (``bash -c "..."``, ``eval``,
backticks, a here-document read by ``sh``), the reference is written so that
*that* shell expands it: ``shellscan`` finds where each placement stands,
``shellcode`` which words are code for which program, ``placement`` how a
reference is written there: inside single quotes it closes them around a
double-quoted reference, in arithmetic its value must be a whole number
(checked here, when the command is rendered). A placement where no shell
would expand a value as data (``$'...'``, code for another interpreter) is a
validation error. ``argv`` steps and agent prompts substitute values into
single arguments, with no shell at all, except a shell's command string
(``[sh, -c, "..."]``), rendered like a shell command.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import msgspec

from engine.workflow.placement import (
    ESCAPED,
    VARIABLE,
    Placement,
    TemplateError,
    number_problem,
    reference,
)
from engine.workflow.shellcode import command_strings, foreign_code
from engine.workflow.shellscan import scan, scan_edits

__all__ = [
    "VARIABLE",
    "Placement",
    "TemplateError",
    "argv_problems",
    "render_argv",
    "render_shell",
    "render_text",
    "scan_shell",
    "shell_problems",
    "template_variables",
    "value_text",
]


def scan_shell(command: str) -> list[Placement]:
    """Every ``${...}`` in a shell command, with the quoting of each shell that reads it."""
    return scan(command)


def shell_problems(command: str) -> list[str]:
    """Why some variable of a shell command cannot carry its value as data (empty: none).

    A ``${...}`` that is neither a variable nor a shell parameter is one too.
    """
    bad: list[str] = []
    try:
        placed = [p.problem for p in scan(command, bad=bad) if p.problem is not None]
    except TemplateError as exc:
        return [str(exc)]
    return placed + bad


def argv_problems(args: Sequence[str], *, literal: int = 0) -> list[str]:
    """The same for a program's arguments: only a shell's command string is code."""
    problems: list[str] = []
    for index, program in foreign_code(args):
        if index >= literal:
            for name in template_variables(args[index]):
                problems.append(str(Placement(0, 0, name, ("foreign",), (program,)).problem))
    for index, shell, env_lost in command_strings(args):
        if index < literal:
            continue
        bad: list[str] = []
        try:
            placements = scan(args[index], bad=bad)
        except TemplateError as exc:
            problems.append(str(exc))
            continue
        for found in placements:
            p = replace(found, shells=(shell, *found.shells), env_lost=found.env_lost or env_lost)
            if p.problem is not None:
                problems.append(p.problem)
        problems.extend(bad)
    return problems


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
    """Substitute values into plain text (an argv element, a prompt, an id); ``$${name}``
    is the text ``${name}``."""
    return _VARIABLE_OR_ESCAPED.sub(
        lambda m: m.group(1) or value_text(_lookup(m.group(2), context)), template
    )


_VARIABLE_OR_ESCAPED = re.compile(f"{ESCAPED.pattern}|{VARIABLE.pattern}")


def unescaped(text: str) -> str:
    """The text a template's literal part stands for: ``$${name}`` is ``${name}``."""
    return ESCAPED.sub(r"\1", text) if "$${" in text else text


def render_shell(
    command: str, context: Mapping[str, Any], *, in_children: set[str] | None = None
) -> tuple[str, dict[str, str]]:
    """A shell command whose variables are environment references, and that environment.

    ``in_children`` (when given) receives the variables that a shell started
    by the command expands (``bash -c "... ${item}"``): those must be in its
    environment, not only in the command's own shell.
    """
    env: dict[str, str] = {}
    return _render_shell(command, context, env, in_children), env


def render_argv(
    args: Sequence[str], context: Mapping[str, Any], *, literal: int = 0
) -> tuple[list[str], dict[str, str]]:
    """A program's arguments, and the environment they reference.

    Each argument is one template rendered as plain text, except a shell's
    command string (``[sh, -c, "..."]``), which is rendered as a shell command
    so that the shell expands each value as data. The first ``literal``
    arguments (an agent's command line) are kept as they are.
    """
    problems = argv_problems(args, literal=literal)
    if problems:
        raise TemplateError(problems[0])
    code = {index for index, _, _ in command_strings(args)}
    env: dict[str, str] = {}
    out = list(args[:literal])
    for index in range(literal, len(args)):
        if index in code:
            out.append(_render_shell(args[index], context, env))
        else:
            out.append(render_text(args[index], context))
    return out, env


_SAME_SHELL = frozenset({"eval", "trap"})
"""Command-string levels run by the shell that holds the variables, not by a child."""


def _render_shell(
    command: str,
    context: Mapping[str, Any],
    env: dict[str, str],
    in_children: set[str] | None = None,
) -> str:
    pieces: list[tuple[int, int, str]] = []
    by_value = {text: var for var, text in env.items()}
    placements, edits = scan_edits(command)
    for placement in placements:
        if placement.problem is not None:
            raise TemplateError(placement.problem)
        text = value_text(_lookup(placement.name, context))
        if (why := number_problem(placement, text)) is not None:
            raise TemplateError(why)
        var = by_value.get(text)
        if var is None:
            var = f"ENGINE_VAR_{len(by_value) + 1}"
            by_value[text] = var
            env[var] = text
        if in_children is not None and not _SAME_SHELL.issuperset(placement.shells):
            in_children.add(var)
        pieces.append((placement.start, placement.end, reference(placement, var)))
    out: list[str] = []
    last = 0
    for start, end, text in sorted([*pieces, *edits]):
        out.append(unescaped(command[last:start]))
        out.append(text)
        last = end
    out.append(unescaped(command[last:]))
    return "".join(out)
