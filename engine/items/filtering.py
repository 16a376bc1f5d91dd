"""``map.filter``: a small expression language over the item, parsed once, never ``eval``.

One language for both spellings a workflow may use: the engine's
(``item.size > 100 and item.lang == 'py'``) and Prodigy's
(``severity == 'high' AND unified_score.final_score >= 5``).

* Fields: ``item`` is the item; ``item.a.b``, ``a.b`` (bare: relative to the
  item), ``a[0]``, ``a.0``, ``item['a key']``. A field the item lacks is
  *missing*.
* Literals: ``'single'`` or ``"double"`` quoted strings (backslash escapes),
  numbers, ``true``, ``false``, ``null``, lists ``['a', 'b']``.
* Comparisons: ``==`` (or ``=``), ``!=``, ``<``, ``<=``, ``>``, ``>=``;
  ``x in [...]``, ``x contains y``, ``x matches 're'`` (found anywhere),
  ``x =~ /re/flags`` (the whole string). Ordering compares numbers with
  numbers and strings with strings; anything else is false. A missing field
  makes every comparison false, except ``== null`` (true: missing counts as
  null there, as in ``is_null``).
* Logic: ``and``/``&&``, ``or``/``||``, ``not``/``!``, parentheses; the
  keywords in any case (``AND``, ``Or``). A field alone is true when it is
  present and neither ``null`` nor ``false``.
* Functions: ``is_null(x)``, ``is_not_null(x)``, ``is_number``,
  ``is_string``, ``is_bool``, ``is_array``, ``is_object``,
  ``contains(x, y)``, ``starts_with(x, y)``, ``ends_with(x, y)``,
  ``matches(x, re)`` and ``search(x, re)`` (found anywhere), ``match(x, re)``
  (the whole string), ``length(x)`` (of a string, list or object; compare it:
  ``length(x) == 3``; or ``length(x, 3)``).

Every regular expression runs on RE2 (:mod:`engine.workflow.patterns`); a
literal one RE2 cannot compile is a syntax error, found when the workflow is
validated.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.errors import ItemsError
from engine.items.operators import (
    MISSING,
    Part,
    Value,
    equal,
    includes,
    is_null,
    length,
    lookup,
    matcher,
    member,
    number,
    ordering,
    present,
    strings,
    truthy,
    unequal,
)
from engine.workflow.patterns import Pattern, PatternError, compile_pattern

__all__ = ["Filter", "compile_filter", "field_and_words"]

MAX_NESTING = 100
"""Parentheses, ``not`` and function calls nested at most this deep."""


# --- tokens ------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
    | (?P<num>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?(?!\w))
    | (?P<op>==|!=|<=|>=|=~|&&|\|\||[=<>!()\[\],.@])
    | (?P<name>[^\W\d][\w-]*)
    | (?P<regex>/(?:[^/\\\n]|\\.)*/[A-Za-z]*)
    | (?P<bad>\S)
    )""",
    re.X | re.S,
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "/": "/"}
_ESCAPE = re.compile(r"\\(u[0-9a-fA-F]{4}|.)", re.S)
_KEYWORDS = frozenset({"and", "or", "not", "in", "contains", "matches", "true", "false", "null"})


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # str num op name regex bad end
    text: str
    at: int

    @property
    def word(self) -> str:
        """A name's lower case (keywords are matched in any case)."""
        return self.text.lower() if self.kind == "name" else ""


def _tokens(text: str) -> list[_Token]:
    tokens = [
        _Token(m.lastgroup or "bad", m.group(m.lastgroup or "bad"), m.start(m.lastgroup or "bad"))
        for m in _TOKEN.finditer(text)
        if m.lastgroup
    ]
    return [*tokens, _Token("end", "", len(text))]


def _unquote(text: str) -> str:
    def one(m: re.Match[str]) -> str:
        code = m.group(1)
        if len(code) == 5:
            return chr(int(code[1:], 16))
        if code in "\\'\"":
            return code
        return _ESCAPES.get(code, "\\" + code)  # unknown escapes stay: '\d' for a pattern

    return _ESCAPE.sub(one, text[1:-1])


class _SyntaxError(Exception):
    pass


# --- parsing ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Node:
    value: Value
    """The item -> the node's value (a comparison's is a bool)."""
    pattern: Pattern | None = None
    """A literal pattern (``/re/`` or a quoted string), compiled when parsed."""
    literal: Any = MISSING
    """A literal's value, when the node is one."""


def _constant(value: Any) -> _Node:
    return _Node(lambda _item: value, literal=value)


_FUNCTIONS: dict[str, tuple[int, int]] = {
    "is_null": (1, 1),
    "is_not_null": (1, 1),
    "is_number": (1, 1),
    "is_string": (1, 1),
    "is_bool": (1, 1),
    "is_array": (1, 1),
    "is_object": (1, 1),
    "contains": (2, 2),
    "starts_with": (2, 2),
    "ends_with": (2, 2),
    "matches": (2, 2),
    "search": (2, 2),
    "match": (2, 2),
    "length": (1, 2),
}
_TYPES: dict[str, Callable[[Any], bool]] = {
    "is_number": number,
    "is_string": lambda v: isinstance(v, str),
    "is_bool": lambda v: isinstance(v, bool),
    "is_array": lambda v: isinstance(v, list),
    "is_object": lambda v: isinstance(v, dict),
}
_COMPARISONS = frozenset({"==", "=", "!=", "<", "<=", ">", ">=", "=~"})


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.i = 0
        self.depth = 0

    # tokens
    def peek(self) -> _Token:
        return self.tokens[self.i]

    def next(self) -> _Token:
        token = self.tokens[self.i]
        self.i = min(self.i + 1, len(self.tokens) - 1)
        return token

    def fail(self, token: _Token, what: str = "") -> _SyntaxError:
        if token.kind == "end":
            return _SyntaxError("unexpected end of expression")
        if token.kind == "bad" and token.text in "'\"":
            return _SyntaxError(f"the string opened at character {token.at + 1} is not closed")
        shown = token.text if len(token.text) <= 20 else token.text[:17] + "..."
        return _SyntaxError(f"{what or 'unexpected'} {shown!r} at character {token.at + 1}")

    def expect(self, text: str) -> None:
        token = self.next()
        if token.text != text:
            raise self.fail(token, f"expected {text!r}, found")

    def nest(self) -> None:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise _SyntaxError(f"nested more than {MAX_NESTING} levels deep")

    # grammar: or > and > not > comparison > operand
    def parse(self) -> Callable[[Any], bool]:
        node = self.disjunction()
        if self.peek().kind != "end":
            raise self.fail(self.peek())
        value = node.value
        return lambda item: truthy(value(item))

    def disjunction(self) -> _Node:
        terms = [self.conjunction()]
        while self.peek().word == "or" or self.peek().text == "||":
            self.next()
            terms.append(self.conjunction())
        if len(terms) == 1:
            return terms[0]
        values = [t.value for t in terms]
        return _Node(lambda item: any(truthy(v(item)) for v in values))

    def conjunction(self) -> _Node:
        terms = [self.negation()]
        while self.peek().word == "and" or self.peek().text == "&&":
            self.next()
            terms.append(self.negation())
        if len(terms) == 1:
            return terms[0]
        values = [t.value for t in terms]
        return _Node(lambda item: all(truthy(v(item)) for v in values))

    def negation(self) -> _Node:
        if self.peek().word == "not" or self.peek().text == "!":
            self.next()
            self.nest()
            inner = self.negation().value
            self.depth -= 1
            return _Node(lambda item: not truthy(inner(item)))
        return self.comparison()

    def comparison(self) -> _Node:
        left = self.operand()
        token = self.peek()
        op = token.text if token.kind == "op" and token.text in _COMPARISONS else token.word
        if op not in _COMPARISONS and op not in ("in", "contains", "matches"):
            return left
        self.next()
        right = self.operand()
        return _Node(_binary(op, left, right))

    def operand(self) -> _Node:
        token = self.peek()
        if token.kind == "str":
            self.next()
            text = _unquote(token.text)
            return _Node(lambda _item: text, literal=text)
        if token.kind == "num":
            self.next()
            number = float(token.text) if any(c in token.text for c in ".eE") else int(token.text)
            return _constant(number)
        if token.kind == "regex":
            self.next()
            return _regex_literal(token)
        if token.text == "[":
            return self.list_literal()
        if token.text == "(":
            self.next()
            self.nest()
            node = self.disjunction()
            self.depth -= 1
            self.expect(")")
            return node
        if token.kind == "name" and self.tokens[self.i + 1].text == "(":
            return self.call()
        if token.word in ("true", "false", "null"):
            self.next()
            return _constant({"true": True, "false": False, "null": None}[token.word])
        if (token.kind == "name" and token.word not in _KEYWORDS) or token.text == "@":
            path = self.path()
            return _Node(lambda item: lookup(item, path))
        raise self.fail(token)

    def list_literal(self) -> _Node:
        self.expect("[")
        self.nest()
        values: list[Any] = []
        while self.peek().text != "]":
            node = self.operand()
            if node.literal is MISSING:
                raise _SyntaxError("a list holds only strings, numbers, true, false or null")
            values.append(node.literal)
            if self.peek().text != ",":
                break
            self.next()
        self.expect("]")
        self.depth -= 1
        return _constant(values)

    def path(self) -> tuple[Part, ...]:
        first = self.next()
        parts: list[Part] = []
        if first.kind == "name" and first.text != "item":
            parts.append(first.text)  # a bare field: relative to the item
        while True:
            token = self.peek()
            if token.text == ".":
                self.next()
                part = self.next()
                if part.kind == "name":
                    parts.append(part.text)
                elif part.kind == "num" and part.text.isdigit():
                    parts.append(int(part.text))
                else:
                    raise self.fail(part, "expected a field name after '.', found")
            elif token.text == "[":
                self.next()
                part = self.next()
                if part.kind == "str":
                    parts.append(_unquote(part.text))
                elif part.kind == "num" and part.text.isdigit():
                    parts.append(int(part.text))
                else:
                    raise self.fail(part, "expected an index or a quoted name in [...], found")
                self.expect("]")
            else:
                return tuple(parts)

    def call(self) -> _Node:
        token = self.next()
        name = token.word
        if name not in _FUNCTIONS:
            known = ", ".join(sorted(_FUNCTIONS))
            raise _SyntaxError(f"unknown function {token.text!r} (known: {known})")
        self.expect("(")
        self.nest()
        args: list[_Node] = []
        while self.peek().text != ")":
            args.append(self.disjunction())
            if self.peek().text != ",":
                break
            self.next()
        self.expect(")")
        self.depth -= 1
        least, most = _FUNCTIONS[name]
        if not least <= len(args) <= most:
            want = str(least) if least == most else f"{least} or {most}"
            plural = "" if want == "1" else "s"
            raise _SyntaxError(f"{name}() takes {want} argument{plural}, not {len(args)}")
        return _Node(_function(name, args))


def _regex_literal(token: _Token) -> _Node:
    body, _, flags = token.text[1:].rpartition("/")
    unknown = set(flags) - set("ism")
    if unknown:
        raise _SyntaxError(f"/{body}/{flags}: unknown flag {''.join(sorted(unknown))!r} (i, s, m)")
    try:
        compiled = compile_pattern(
            body.replace("\\/", "/"),
            ignore_case="i" in flags,
            dot_all="s" in flags,
            multi_line="m" in flags,
        )
    except PatternError as exc:
        raise _SyntaxError(f"/{body}/: {exc}") from None
    return _Node(lambda _item: body, pattern=compiled, literal=body)


def _literal_pattern(node: _Node, where: str) -> Pattern | None:
    """A pattern known when parsed: compiled now, so a bad one is a syntax error."""
    if node.pattern is not None:
        return node.pattern
    if isinstance(node.literal, str):
        try:
            return compile_pattern(node.literal)
        except PatternError as exc:
            raise _SyntaxError(f"{where}: {node.literal!r}: {exc}") from None
    return None


def _binary(op: str, left: _Node, right: _Node) -> Value:
    a, b = left.value, right.value
    if op in ("matches", "=~"):
        where = "matches" if op == "matches" else "=~"
        test = matcher(b, _literal_pattern(right, where), whole=op == "=~")
        return lambda item: test(item, a(item))
    if op in ("==", "="):
        return lambda item: equal(a(item), b(item))
    if op == "!=":
        return lambda item: unequal(a(item), b(item))
    if op == "in":
        return lambda item: member(a(item), b(item))
    if op == "contains":
        return lambda item: present(x := a(item), y := b(item)) and includes(x, y)
    ordered = ordering(op)
    return lambda item: present(x := a(item), y := b(item)) and ordered(x, y)


def _function(name: str, args: list[_Node]) -> Value:
    values = [arg.value for arg in args]
    first = values[0]
    if name == "is_null":
        return lambda item: is_null(first(item))
    if name == "is_not_null":
        return lambda item: not is_null(first(item))
    if name in _TYPES:
        check = _TYPES[name]
        return lambda item: check(first(item))
    if name == "length":
        if len(values) == 2:  # Prodigy's length(x, n)
            second = values[1]
            return lambda item: equal(length(first(item)), second(item))
        return lambda item: length(first(item))
    second = values[1]
    if name in ("matches", "search", "match"):
        test = matcher(second, _literal_pattern(args[1], f"{name}()"), whole=name == "match")
        return lambda item: test(item, first(item))
    if name == "contains":
        return lambda item: present(x := first(item), y := second(item)) and includes(x, y)
    if name == "starts_with":
        return lambda item: strings(x := first(item), y := second(item)) and x.startswith(y)
    return lambda item: strings(x := first(item), y := second(item)) and x.endswith(y)


# --- the public face --------------------------------------------------------------------


@dataclass(frozen=True)
class Filter:
    """A compiled ``map.filter``."""

    expression: str
    test: Callable[[Any], bool]

    def __call__(self, item: Any) -> bool:
        return self.test(item)


def compile_filter(expression: str) -> Filter:
    """Compile a filter once; raise ItemsError naming the problem."""
    try:
        if not expression.strip():
            raise _SyntaxError("the expression is empty")
        return Filter(expression, _Parser(expression).parse())
    except (_SyntaxError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise ItemsError(
            f"map.filter: cannot parse {expression[:80]!r}: {reason}",
            hint="e.g. item.size > 100 and item.lang == 'py'",
        ) from None


def field_and_words(text: str, where: str) -> tuple[tuple[Part, ...], list[str]]:
    """A field as ``sort_by`` and ``distinct`` name it (``item.a.b``, ``a.b``, ``a[0]``,
    ``item``), and the words after it, upper-cased (``DESC``, ``NULLS LAST``)."""
    parser = _Parser(text)
    token = parser.peek()
    try:
        if not ((token.kind == "name" and token.word not in _KEYWORDS) or token.text == "@"):
            raise parser.fail(token, "expected a field, found")
        path = parser.path()
        words: list[str] = []
        while parser.peek().kind == "name":
            words.append(parser.next().text.upper())
        if parser.peek().kind != "end":
            raise parser.fail(parser.peek())
    except _SyntaxError as exc:
        raise ItemsError(
            f"{where}: cannot parse {text.strip()[:80]!r}: {exc}",
            hint="name a field of the item, e.g. priority or item.meta.owner",
        ) from None
    return path, words
