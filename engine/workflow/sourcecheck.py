"""The map's item source, checked before a run: the file exists, and the items fit the templates.

* ``map.input`` must exist, unless a setup step mentions it (setup makes it);
  with setup steps that do not mention it, its absence is a warning. A
  missing input that reads like a command (``find . -name '*.py'``) is told
  to be ``map.command`` (or ``input_missing: command``). With
  ``input_missing: command`` a missing input is no problem: the run runs it
  as a command (never run here).
* When the items can be read before the run (inline ``items``, or an input
  file no setup step makes), they are loaded as the run loads them (the same
  bounds: :mod:`engine.limits`; json_path, filter, sort, offset, max_items,
  ids), and each ``${item.FIELD}`` is checked against them: a field no item
  has is an error; one that some items lack is a warning that says how many
  (those attempts would fail), and an error in ``map.id``, since one item
  without its id stops the run. ``map.command`` is never run here.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pydantic

from engine.errors import ItemsError
from engine.items.selection import load_items
from engine.workflow.checks import ItemUse, steps_of
from engine.workflow.problems import Finding, Loc
from engine.workflow.spec import MapSpec

__all__ = ["check_source", "input_missing"]

_COMMAND_WORDS = frozenset(
    {"echo", "find", "ls", "cat", "git", "seq", "printf", "jq", "grep", "python", "python3"}
)
_SELECTION = frozenset(
    {
        "input",
        "input_missing",
        "command",
        "items",
        "json_path",
        "id",
        "filter",
        "sort_by",
        "distinct",
        "offset",
        "max_items",
    }
)
"""The map's keys that select its items."""
_SHELL_SIGNS = re.compile(r"[|;&<>`$]|\s")


def _setup_text(data: dict[str, Any]) -> str:
    texts: list[str] = []
    for _, step in steps_of(data.get("setup"), ("setup",)):
        for key in ("run", "shell", "claude"):
            if isinstance(step.get(key), str):
                texts.append(step[key])
        if isinstance(step.get("argv"), list):
            texts += [a for a in step["argv"] if isinstance(a, str)]
    return "\n".join(texts)


def input_missing(data: dict[str, Any], directory: Path) -> Finding | None:
    """``map.input`` is not there and nothing will make it: an error (a warning with setup)."""
    spec = data.get("map")
    if not isinstance(spec, dict):
        return None
    name = spec.get("input")
    if not isinstance(name, str) or not name or (directory / name).exists():
        return None
    setup = _setup_text(data)
    if Path(name).name in setup:
        return None  # a setup step makes it
    first = name.split()[0] if name.split() else name
    if spec.get("input_missing") == "command":
        # Run as a command when no such file exists: said only of one that reads like a
        # file's name (a misspelt path would run as a command and fail).
        if _SHELL_SIGNS.search(name) or first in _COMMAND_WORDS or "${" in name:
            return None
        return Finding(
            ("map", "input"),
            f"no file {name!r} here, and no setup step mentions it: it will be run as a "
            "command (check the path: it is relative to where the steps run)",
            warning=True,
        )
    if _SHELL_SIGNS.search(name) or first in _COMMAND_WORDS:
        return Finding(
            ("map", "input"),
            f"no file {name!r} here; it reads like a command (to read the items from a "
            f"command's output, write map.command: {name}, or add input_missing: command "
            "to run input as a command when no such file exists)",
        )
    if setup:
        return Finding(
            ("map", "input"),
            f"no file {name!r} yet, and no setup step mentions it (a setup step must make it "
            "before the map starts; the path is relative to the workflow's directory)",
            warning=True,
        )
    return Finding(
        ("map", "input"),
        f"no file {name!r} (check the path: it is relative to the workflow's directory)",
    )


def _lacks(value: Any, parts: list[str]) -> bool:
    """Whether ``${item.<parts>}`` cannot be rendered for ``value`` (as the run renders it)."""
    for part in parts:
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return True
    return False


def _fields(values: list[Any]) -> list[str]:
    found: dict[str, None] = {}
    for value in values[:1000]:
        if isinstance(value, Mapping):
            found.update(dict.fromkeys(k for k in value if isinstance(k, str)))
    return list(found)


def _use_findings(uses: list[ItemUse], values: list[Any]) -> list[Finding]:
    findings: list[Finding] = []
    total = len(values)
    for use in dict.fromkeys(uses):
        parts = use.name.split(".")[1:]
        lacking = [i for i, v in enumerate(values) if _lacks(v, parts)]
        if not lacking:
            continue
        var = f"${{{use.name}}}"
        if len(lacking) == total:
            fields = _fields(values)
            close = difflib.get_close_matches(parts[0], fields, n=1, cutoff=0.6)
            mean = f"did you mean ${{item.{close[0]}}}? " if close else ""
            shown = ", ".join(fields[:12]) + (", ..." if len(fields) > 12 else "")
            have = f"the items have {shown}" if fields else "the items are not mappings"
            findings.append(Finding(use.loc, f"{var}: no item has it ({mean}{have})"))
            continue
        which = ", ".join(str(i) for i in lacking[:5]) + (", ..." if len(lacking) > 5 else "")
        which = f"at index{'es' if len(lacking) > 1 else ''} {which}"
        if use.every_item:
            message = (
                f"{var}: {len(lacking)} of {total} items lack it, {which}, and an item "
                "without its id stops the run (filter them out, or build the id from a field "
                "every item has)"
            )
        else:
            message = (
                f"{var}: {len(lacking)} of {total} items lack it, {which}; their "
                "attempts will fail (filter them out with map.filter, or fix the items)"
            )
        findings.append(Finding(use.loc, message, warning=not use.every_item))
    return findings


def check_source(
    data: dict[str, Any], directory: Path, env: Mapping[str, str], uses: list[ItemUse]
) -> list[Finding]:
    """The map's items, read as a run reads them when that needs no command, against ``uses``."""
    raw = data.get("map")
    if not isinstance(raw, dict) or raw.get("command") is not None:
        return []
    selection = {k: raw[k] for k in _SELECTION if k in raw}
    try:  # only what selects the items: the rest of the map may be wrong, and is said so
        spec = MapSpec.model_validate({**selection, "agent_template": [{"run": "true"}]})
    except pydantic.ValidationError:
        return []  # the schema says what is wrong
    if spec.input is not None:
        if spec.input_missing == "command" and not os.path.lexists(directory / spec.input):
            return []  # a command, run only by the run
        missing = input_missing(data, directory)
        if missing is not None:
            return [missing]
        if Path(spec.input).name in _setup_text(data):
            return []  # setup makes the file again: what it holds now says nothing
    where = ("map", "input") if spec.input is not None else ("map", "items")
    findings: list[Finding] = []
    try:
        loaded = load_items(spec, directory, env)
    except ItemsError as exc:
        findings.append(_load_finding(str(exc), where))
        if spec.id is None or not str(exc).startswith("map.id: "):
            return findings
        try:  # the items are fine but for their ids: their fields are checked still
            loaded = load_items(spec.model_copy(update={"id": None}), directory, env)
        except ItemsError:
            return findings
        uses = [u for u in uses if u.loc != ("map", "id")]
    if not loaded.items:
        return [Finding(where, "selects no items: the map would run nothing", warning=True)]
    return findings + _use_findings(uses, [w.value for w in loaded.items])


def _load_finding(text: str, where: Loc) -> Finding:
    """Why the items cannot be loaded, at the field the message names (``map.filter: ...``)."""
    for key in _SELECTION:
        if text.startswith(f"map.{key}: "):
            return Finding(("map", key), text.removeprefix(f"map.{key}: "))
    return Finding(where, text)
