"""``map.sort_by`` and ``map.distinct``: the order of the items, and one item per value.

* ``sort_by``: ``field [ASC|DESC] [NULLS FIRST|NULLS LAST], field2 ...``, the
  words in any case, fields bare (``priority``) or ``item.``-prefixed. ASC by
  default; a null or missing value goes last whatever the direction (``NULLS
  FIRST`` to put it first); stable: items with equal keys keep their order.
  Values of different types sort by type: booleans, numbers, strings, then
  lists and objects (by their canonical JSON).
* ``distinct``: a field; the first item of each of its values is kept (the
  value compared as canonical JSON; missing and null are one value).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from engine.errors import ItemsError
from engine.items.filtering import field_and_words
from engine.items.operators import MISSING, Part, lookup, number

__all__ = ["SortKey", "distinct", "parse_distinct", "parse_sort", "sort"]

_SORT_HINT = "e.g. 'priority DESC, item.name ASC NULLS FIRST'"


@dataclass(frozen=True)
class SortKey:
    path: tuple[Part, ...]
    descending: bool
    nulls_first: bool


def _key(part: str) -> SortKey:
    path, words = field_and_words(part, "map.sort_by")
    descending = False
    if words and words[0] in ("ASC", "ASCENDING", "DESC", "DESCENDING"):
        descending = words.pop(0).startswith("DESC")
    nulls_first = False
    if len(words) == 2 and words[0] == "NULLS" and words[1] in ("FIRST", "LAST"):
        nulls_first = words[1] == "FIRST"
        words = []
    if words:
        raise ItemsError(
            f"map.sort_by: cannot parse {part.strip()!r}: {' '.join(words)!r} is not ASC, "
            "DESC, NULLS FIRST or NULLS LAST",
            hint=_SORT_HINT,
        )
    return SortKey(path, descending, nulls_first)


def parse_sort(text: str) -> list[SortKey]:
    """The sort keys, most significant first; ItemsError naming a part that does not parse."""
    keys = [_key(part) for part in text.split(",") if part.strip()]
    if not keys:
        raise ItemsError("map.sort_by: names no field", hint=_SORT_HINT)
    return keys


def _rank(value: Any) -> tuple[int, Any]:
    """Mixed types sort by type first: booleans, numbers, strings, then the rest as JSON."""
    if isinstance(value, bool):
        return (0, value)
    if number(value):
        return (1, value)
    if isinstance(value, str):
        return (2, value)
    return (3, msgspec.json.encode(value, order="sorted"))


def sort(values: list[Any], keys: list[SortKey]) -> list[Any]:
    """``values`` ordered by ``keys``; stable (equal keys keep their order, also DESC)."""
    ordered = list(values)
    for key in reversed(keys):  # stable sorts, least significant key first
        fields = [lookup(v, key.path) for v in ordered]
        present = [(f, v) for f, v in zip(fields, ordered, strict=True) if f is not None]
        present = [(f, v) for f, v in present if f is not MISSING]
        absent = [v for f, v in zip(fields, ordered, strict=True) if f is None or f is MISSING]
        present.sort(key=lambda pair: _rank(pair[0]), reverse=key.descending)
        ranked = [v for _, v in present]
        ordered = absent + ranked if key.nulls_first else ranked + absent
    return ordered


def parse_distinct(text: str) -> tuple[Part, ...]:
    """``map.distinct``: one field, bare or ``item.``-prefixed."""
    path, words = field_and_words(text, "map.distinct")
    if words:
        raise ItemsError(
            f"map.distinct: cannot parse {text.strip()!r}: one field only, not {' '.join(words)!r}",
            hint="e.g. distinct: path (or item.meta.owner)",
        )
    return path


def distinct(values: list[Any], path: tuple[Part, ...]) -> list[Any]:
    """The first item of each value of the field at ``path`` (missing counts as null)."""
    seen: set[bytes] = set()
    kept: list[Any] = []
    for value in values:
        field = lookup(value, path)
        key = msgspec.json.encode(None if field is MISSING else field, order="sorted")
        if key not in seen:
            seen.add(key)
            kept.append(value)
    return kept
