"""The python-jsonpath environment behind ``map.json_path`` (``map.filter`` has its own
parser: :mod:`engine.items.filtering`).

Its own module so that runs without it never import python-jsonpath.
Every regular expression in a path's filter (``=~ /.../``, ``match()``,
``search()``) is compiled by RE2 (see :mod:`engine.workflow.patterns`), so no pattern
can make matching take exponential time; a literal pattern that RE2 cannot
compile is a syntax error of the path or filter.
"""

from __future__ import annotations

from typing import Any

import jsonpath
from jsonpath.exceptions import JSONPathSyntaxError
from jsonpath.filter import (
    UNDEFINED,
    BaseExpression,
    FunctionExtension,
    RegexLiteral,
    StringLiteral,
)
from jsonpath.function_extensions import ExpressionType, FilterFunction
from jsonpath.parse import Parser
from jsonpath.stream import TokenStream
from jsonpath.token import TOKEN_RE_FLAGS

from engine.workflow.patterns import PatternCache, PatternError, compile_pattern

__all__ = ["environment"]


class _EndsWith(FilterFunction):
    arg_types = [ExpressionType.VALUE, ExpressionType.VALUE]
    return_type = ExpressionType.LOGICAL

    def __call__(self, value: object, suffix: object) -> bool:
        return isinstance(value, str) and isinstance(suffix, str) and value.endswith(suffix)


class _Includes(FilterFunction):
    arg_types = [ExpressionType.VALUE, ExpressionType.VALUE]
    return_type = ExpressionType.LOGICAL

    def __call__(self, container: object, member: object) -> bool:
        if isinstance(container, str):
            return isinstance(member, str) and member in container
        if isinstance(container, list | dict):
            return member in container
        return False


class _IsNull(FilterFunction):
    arg_types = [ExpressionType.VALUE]
    return_type = ExpressionType.LOGICAL

    def __call__(self, value: object) -> bool:
        return value is None or value is UNDEFINED


class _Pattern(FilterFunction):
    """``match(value, re)`` (whole string) or ``search(value, re)``, by RE2."""

    arg_types = [ExpressionType.VALUE, ExpressionType.VALUE]
    return_type = ExpressionType.LOGICAL

    def __init__(self, *, whole: bool) -> None:
        self.whole = whole
        self.patterns = PatternCache()

    def __call__(self, value: object, pattern: object) -> bool:
        if not isinstance(value, str) or not isinstance(pattern, str):
            return False
        compiled = self.patterns.get(pattern)  # RFC 9535: a bad pattern matches nothing
        if compiled is None:
            return False
        found = compiled.fullmatch(value) if self.whole else compiled.search(value)
        return found is not None


class _Parser(Parser):
    """``/re/flags`` literals compiled by RE2; a bad one is a syntax error."""

    def parse_regex(self, stream: TokenStream) -> BaseExpression:
        token = stream.current()
        flags = ""
        if stream.peek().kind == TOKEN_RE_FLAGS:
            stream.next()
            flags = stream.next().value
        try:
            compiled: Any = compile_pattern(
                token.value, ignore_case="i" in flags, dot_all="s" in flags, multi_line="m" in flags
            )
        except PatternError as exc:
            raise JSONPathSyntaxError(f"/{token.value}/: {exc}", token=token) from None
        return RegexLiteral(value=compiled)

    def parse_function_extension(self, stream: TokenStream) -> BaseExpression:
        """``match(x, 'literal')`` and ``search(...)``: a literal RE2 cannot compile is an error."""
        token = stream.current()
        expression = super().parse_function_extension(stream)
        if isinstance(expression, FunctionExtension) and expression.name in _PATTERN_FUNCTIONS:
            for arg in expression.args[1:2]:
                if isinstance(arg, StringLiteral):
                    try:
                        compile_pattern(arg.value)
                    except PatternError as exc:
                        raise JSONPathSyntaxError(
                            f"{expression.name}(): {arg.value!r}: {exc}", token=token
                        ) from None
        return expression


_PATTERN_FUNCTIONS = frozenset({"match", "search"})


class _Environment(jsonpath.JSONPathEnvironment):
    parser_class = _Parser


def environment() -> jsonpath.JSONPathEnvironment:
    env = _Environment()
    env.function_extensions["ends_with"] = _EndsWith()
    env.function_extensions["starts_with"] = env.function_extensions["startswith"]
    env.function_extensions["includes"] = _Includes()
    env.function_extensions["is_null"] = _IsNull()
    env.function_extensions["match"] = _Pattern(whole=True)
    env.function_extensions["search"] = _Pattern(whole=False)
    return env
