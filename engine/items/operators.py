"""What the filter language's operators mean, on JSON values (:mod:`engine.items.filtering`).

A field the item lacks is :data:`MISSING`, which is not ``null``: a
comparison with it is false, except ``== null``. Equality is JSON's (``true``
is not ``1``; ``1`` is ``1.0``); ordering compares numbers with numbers and
strings with strings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from engine.workflow.patterns import Pattern, PatternCache

__all__ = [
    "MISSING",
    "Part",
    "Value",
    "equal",
    "includes",
    "is_null",
    "length",
    "lookup",
    "matcher",
    "member",
    "number",
    "ordering",
    "present",
    "same",
    "strings",
    "truthy",
    "unequal",
]


class _Missing:
    """A field the item does not have (not the same as ``null``)."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()

Part = str | int
Value = Callable[[Any], Any]
"""A compiled operand: the item -> a JSON value, or MISSING."""


def lookup(value: Any, path: tuple[Part, ...]) -> Any:
    """The field at ``path`` of ``value``, or MISSING."""
    for part in path:
        if isinstance(value, Mapping):
            key = str(part)
            if key not in value:
                return MISSING
            value = value[key]
        elif isinstance(value, list):
            index = part if isinstance(part, int) else int(part) if part.isdigit() else -1
            if not 0 <= index < len(value):
                return MISSING
            value = value[index]
        else:
            return MISSING
    return value


def number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def same(a: Any, b: Any) -> bool:
    """JSON equality: ``true`` is not ``1``; ``1`` is ``1.0``."""
    if number(a) and number(b):
        return bool(a == b)
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def ordering(op: str) -> Callable[[Any, Any], bool]:
    compare: Callable[[Any, Any], bool] = {
        "<": lambda a, b: a < b,
        "<=": lambda a, b: a <= b,
        ">": lambda a, b: a > b,
        ">=": lambda a, b: a >= b,
    }[op]

    def ordered(a: Any, b: Any) -> bool:
        if (number(a) and number(b)) or (isinstance(a, str) and isinstance(b, str)):
            return compare(a, b)
        return False

    return ordered


def includes(container: Any, member: Any) -> bool:
    if isinstance(container, str):
        return isinstance(member, str) and member in container
    if isinstance(container, list):
        return any(same(x, member) for x in container)
    if isinstance(container, dict):
        return isinstance(member, str) and member in container
    return False


def is_null(value: Any) -> bool:
    return value is None or value is MISSING


def length(value: Any) -> Any:
    return len(value) if isinstance(value, str | list | dict) else MISSING


def truthy(value: Any) -> bool:
    """A value in a place that wants true or false: present, not null, not false."""
    return value is not MISSING and value is not None and value is not False


def matcher(pattern: Value, literal: Pattern | None, *, whole: bool) -> Callable[[Any, Any], bool]:
    """``text -> found`` against a literal pattern, or one read from the item."""
    patterns = PatternCache()  # a bad pattern from the data matches nothing

    def found(compiled: Pattern | None, text: Any) -> bool:
        if compiled is None or not isinstance(text, str):
            return False
        hit = compiled.fullmatch(text) if whole else compiled.search(text)
        return hit is not None

    def test(item: Any, text: Any) -> bool:
        if literal is not None:
            return found(literal, text)
        value = pattern(item)
        return isinstance(value, str) and found(patterns.get(value), text)

    return test


def present(a: Any, b: Any) -> bool:
    return a is not MISSING and b is not MISSING


def equal(a: Any, b: Any) -> bool:
    if a is MISSING or b is MISSING:
        return is_null(a) and is_null(b)  # missing counts as null here
    return same(a, b)


def unequal(a: Any, b: Any) -> bool:
    return present(a, b) and not same(a, b)


def member(a: Any, b: Any) -> bool:
    return present(a, b) and isinstance(b, list) and any(same(a, x) for x in b)


def strings(a: Any, b: Any) -> bool:
    return isinstance(a, str) and isinstance(b, str)
