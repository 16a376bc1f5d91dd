"""What is wrong with a workflow, where: ``FILE:LINE: field.path: what (how to fix)``.

A :class:`Problem` is an error (``engine validate`` and ``engine run`` exit
2) or a warning (printed; the workflow still runs). The checks find
:class:`Finding` objects, which name the field by its place in the document
as written (``map.agent_template[0].run``); :func:`locate` turns them into
problems with the line of that field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import yaml

__all__ = ["Finding", "Loc", "Problem", "loc_text", "locate", "node_line"]

Loc = tuple[int | str, ...]
"""Where a value is in the document: keys and list indexes from the top."""

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a workflow file."""

    file: str
    line: int
    path: str
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        label = "warning: " if self.severity == "warning" else ""
        return f"{self.file}:{self.line}: {where}{label}{self.message}"

    @property
    def parts(self) -> tuple[str, str | None]:
        """The message as (what is wrong, how to fix it): its closing ``(...)`` is the fix."""
        start = self.message.find(" (")
        if start < 0 or not self.message.endswith(")"):
            return self.message, None
        return self.message[:start], self.message[start + 2 : -1]

    def to_json(self) -> dict[str, Any]:
        """``{file, line, field, message, hint}`` (``engine validate --json``)."""
        what, hint = self.parts
        return {
            "file": self.file,
            "line": self.line,
            "field": self.path or None,
            "message": what,
            "hint": hint,
        }


@dataclass(frozen=True)
class Finding:
    """A problem found at a place in the document, before its line is known."""

    loc: Loc
    message: str
    warning: bool = False


def loc_text(loc: Loc) -> str:
    """``("map", "agent_template", 0, "run")`` -> ``map.agent_template[0].run``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


def node_line(root: yaml.Node | None, loc: Loc) -> int:
    """The 1-based line of the node at ``loc`` (or of its deepest ancestor found)."""
    node = root
    line = (root.start_mark.line + 1) if root is not None else 1
    for part in loc:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == part:
                    child = value
                    line = key.start_mark.line + 1  # the key's line (also for unknown keys)
                    break
        elif (
            isinstance(node, yaml.SequenceNode)
            and isinstance(part, int)
            and 0 <= part < len(node.value)
        ):
            child = node.value[part]
            line = child.start_mark.line + 1
        if child is None:
            break
        node = child
    return line


def locate(file: str, root: yaml.Node | None, findings: list[Finding]) -> list[Problem]:
    """Findings as problems with their lines, each once, in the order of the file."""
    problems = {
        Problem(
            file,
            node_line(root, f.loc),
            loc_text(f.loc),
            f.message,
            "warning" if f.warning else "error",
        ): None
        for f in findings
    }
    return sorted(problems, key=lambda p: (p.line, p.path))
