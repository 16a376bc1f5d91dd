"""Reading a workflow's YAML (or JSON): bounded, with the nodes kept for line numbers.

libyaml parses when PyYAML has it (ten times faster), the pure-Python
parser otherwise. Nesting is at most :data:`MAX_DEPTH` levels, the document
with its aliases expanded at most :data:`MAX_YAML_NODES` values (a billion
laughs is found in linear time), no alias may sit inside its own anchor,
and no string may hold what no command can carry (NUL, a lone surrogate).
Only ``true``/``false`` are booleans (``on:``, ``yes``, ``no`` stay strings).
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from engine.limits import MAX_DEPTH, MAX_YAML_NODES

__all__ = ["Refused", "load_yaml", "parse_yaml"]


class Refused(yaml.YAMLError):
    """The document is valid YAML, but beyond what a workflow may be."""

    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


class _Loader(yaml.SafeLoader):
    """YAML with only true/false as booleans (``on:``, ``yes``, ``no`` stay strings).

    Nesting is limited to :data:`MAX_DEPTH` while the document is composed.
    """

    depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                line = self.peek_event().start_mark.line + 1  # type: ignore[no-untyped-call]
                raise Refused(f"nested more than {MAX_DEPTH} levels deep (flatten it)", line)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


class _CLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """The same, parsed by libyaml (ten times faster) when PyYAML was built with it."""


LIBYAML = hasattr(yaml, "CSafeLoader")
"""libyaml parses (ten times faster) when PyYAML has it; tests run both parsers."""
for _cls in (_Loader, _CLoader):
    _cls.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    _cls.add_implicit_resolver(
        "tag:yaml.org,2002:bool",
        re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
        list("tTfF"),
    )


def _check_depth(text: str) -> None:
    """Nesting within :data:`MAX_DEPTH`, from libyaml's events (no recursion, little memory).

    Checked before libyaml composes the document, which it does recursively.
    """
    depth = 0
    for event in yaml.parse(text, Loader=_CLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                line = event.start_mark.line + 1 if event.start_mark is not None else 1
                raise Refused(f"nested more than {MAX_DEPTH} levels deep (flatten it)", line)
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _bad_text(value: str) -> str | None:
    """Why a string cannot be passed to a command (a NUL, a lone surrogate), or None."""
    if "\x00" in value:
        return "holds a NUL character (\\0), which no command argument or variable can carry"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "holds a lone surrogate (\\ud800-\\udfff), which is not text (remove it)"
    return None


def _check_graph(root: yaml.Node) -> None:
    """Every node once: strings that cannot be text, recursive aliases, and the expanded size.

    Aliases share nodes, so the expanded size is summed over the graph with
    each node's size counted once (a billion laughs is found in linear time).
    """
    sizes: dict[int, int] = {}
    path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        if done:
            path.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in children)
            if sizes[key] > MAX_YAML_NODES:
                how = (
                    "through its aliases (use fewer anchors)" if len(sizes) < MAX_YAML_NODES else ""
                )
                raise Refused(
                    f"holds over {MAX_YAML_NODES:,} values {how}".strip()
                    + ("" if how else " (split the work: read the items from map.input)"),
                    node.start_mark.line + 1,
                )
            continue
        if key in sizes:
            continue
        if key in path:
            raise Refused("an alias refers to its own anchor (remove the loop)", 1)
        if isinstance(node, yaml.ScalarNode):
            why = _bad_text(node.value) if isinstance(node.value, str) else None
            if why is not None:
                raise Refused(f"a string {why}", node.start_mark.line + 1)
            sizes[key] = 1
            continue
        path.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in children if id(child) not in sizes)


def load_yaml(text: str) -> Any:
    """Parse YAML (or JSON) the way workflow files are parsed."""
    return parse_yaml(text)[1]


def parse_yaml(text: str) -> tuple[yaml.Node | None, Any]:
    """The node tree (for line numbers) and the data, from one pass of the parser."""
    if LIBYAML:
        _check_depth(text)
    loader = _CLoader(text) if LIBYAML else _Loader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None, None
        _check_graph(root)
        return root, loader.construct_document(root)
    finally:
        loader.dispose()
