"""Regular expressions from workflows, run by RE2: linear time, whatever the pattern.

A workflow's patterns (``classify``, ``=~ /.../``, ``match()`` and
``search()`` in a filter) are compiled by RE2 (google-re2), whose matching
time grows linearly with the text. A pattern such as ``(a+)+$``, which
makes a backtracking engine (Python's ``re``) run for ages, is as fast as any
other. RE2 has no backreferences (``\\1``) and no lookaround (``(?=...)``):
such a pattern is refused when the workflow is validated.
"""

from __future__ import annotations

from typing import Any, Protocol

import re2

__all__ = ["Pattern", "PatternCache", "PatternError", "compile_pattern"]

MAX_PATTERN_MEMORY = 8 << 20
"""RE2's memory budget for one compiled pattern (a huge pattern is refused)."""


class PatternError(ValueError):
    """A pattern RE2 cannot compile; the message says why."""


class Pattern(Protocol):
    """What the engine uses of a compiled pattern."""

    pattern: str

    def search(self, text: str) -> Any: ...

    def fullmatch(self, text: str) -> Any: ...


def _options() -> Any:
    options = re2.Options()
    options.log_errors = False  # errors are raised, never printed to stderr
    options.max_mem = MAX_PATTERN_MEMORY
    return options


def compile_pattern(
    pattern: str, *, ignore_case: bool = False, dot_all: bool = False, multi_line: bool = False
) -> Pattern:
    """Compile with RE2; raise :class:`PatternError` with a readable reason."""
    if not isinstance(pattern, str):
        raise PatternError("a pattern is a string")
    flags = "i" * ignore_case + "s" * dot_all + "m" * multi_line
    try:
        return re2.compile(  # type: ignore[no-any-return]
            f"(?{flags}){pattern}" if flags else pattern, _options()
        )
    except re2.error as exc:
        reason = exc.args[0] if exc.args else "invalid"
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        reason = str(reason).split(": ", 1)[0]
        hint = ""
        if "escape" in reason or "perl operator" in reason:
            hint = " (RE2 syntax: no backreferences or lookaround)"
        raise PatternError(f"not a valid regular expression: {reason}{hint}") from None


class PatternCache:
    """Patterns read from the data (not the workflow's), compiled once each by RE2; a bad
    one is None, which matches nothing. At most ``limit`` are kept."""

    def __init__(self, limit: int = 300) -> None:
        self.limit = limit
        self.cache: dict[str, Pattern | None] = {}

    def get(self, pattern: str) -> Pattern | None:
        if pattern not in self.cache:
            if len(self.cache) >= self.limit:
                self.cache.clear()
            try:
                self.cache[pattern] = compile_pattern(pattern)
            except PatternError:
                self.cache[pattern] = None
        return self.cache[pattern]
