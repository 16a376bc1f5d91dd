"""Which ``${...}`` a shell reads as one of its parameters, and what to say of the others.

In a shell command the engine's variables are ``${name}`` and
``${name.field}``; any other ``${...}`` is left to the shell, which expands
its own parameters (``${HOME}``, ``${x:-default}``, ``${#x}``, ``${1}``) and
stops on anything else with "Bad substitution": ``${item.n:-3}``,
``${x|default:y}``, ``${cmd:...}``. Such a text is refused at validation.
"""

from __future__ import annotations

import re

__all__ = ["bad_parameter", "bad_parameter_message"]

_PARAMETER = re.compile(r"[#!]?(?:[A-Za-z_][A-Za-z0-9_]*|[0-9]+|[@*#?$!0-])")
"""The name of a shell parameter in ``${...}``, with its ``#`` (length) or ``!`` (indirection)."""
_AFTER_NAME = frozenset("}[:-=?+#%/^,@*")
"""What may follow the name in ``${...}`` (``}``, a subscript, an operator)."""
_AFTER_COLON = frozenset("-=?+ (~!$_") | frozenset("0123456789")
"""After ``${name:``: an operator, or bash's substring offset (an arithmetic expression)."""


def bad_parameter(text: str) -> str | None:
    """Why ``${`` + ``text`` (up to its ``}``) is no parameter of any shell, or None."""
    m = _PARAMETER.match(text)
    if m is None:
        return "bad" if text.strip() else "unclosed"
    after = text[m.end() : m.end() + 1]
    if not after:
        return "unclosed"
    if after not in _AFTER_NAME:
        return "bad"
    if after == ":":
        nxt = text[m.end() + 1 : m.end() + 2]
        if not nxt or not (nxt in _AFTER_COLON or nxt.isalpha()):
            return "bad"
    return None


def bad_parameter_message(written: str, kind: str) -> str:
    """The problem of ``written`` (a ``${...}``), ``kind`` as :func:`bad_parameter` said."""
    shown = written if len(written) <= 60 else written[:57] + "..."
    if kind == "unclosed":
        return f"{shown} is not closed (end it with }})"
    m = re.match(r"\$\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_\-]+)*)", written)
    name = m.group(1) if m else "name"
    use = f"use ${{{name}}}; " if m else ""
    return (
        f"{shown} is neither a variable of the engine nor a shell parameter: the shell "
        'would stop on it with "Bad substitution" (the engine\'s variables are ${name} or '
        f"${{name.field}}, without defaults or filters: {use}for a default, set a shell "
        f'variable first: v="${{{name}}}"; echo "${{v:-DEFAULT}}")'
    )
