"""Loading a workflow file, with errors that point at the line.

Every problem is reported as ``FILE:LINE: field.path: what is wrong (how to
fix)``, one line each; unknown keys get a "did you mean" when a known key is
close.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic
import yaml

from engine.items import ItemsError, check_value, compile_filter, compile_json_path, parse_sort
from engine.limits import MAX_DEPTH, MAX_YAML_NODES, limits, read_bounded
from engine.redact import secret_template_problems
from engine.spec import Step, Workflow
from engine.template import argv_problems, shell_problems, template_variables
from ledger.errors import EngineError

__all__ = ["LoadedWorkflow", "Problem", "WorkflowError", "load_workflow", "parse_workflow"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a workflow file."""

    file: str
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.file}:{self.line}: {where}{self.message}"


class WorkflowError(EngineError):
    """A workflow file is invalid; carries every problem found."""

    exit_code = 2
    located = True

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class LoadedWorkflow:
    """A validated workflow and the file it came from."""

    spec: Workflow
    path: Path
    text: str
    hash: str
    """``sha256:<hex>`` of the file's bytes."""
    lines: dict[str, int] = field(default_factory=dict, compare=False)

    @property
    def directory(self) -> Path:
        return self.path.parent


def _loc_text(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


def _node_line(root: yaml.Node | None, loc: tuple[int | str, ...]) -> int:
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


def _allowed_keys(model: type[pydantic.BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


def _model_at(loc: tuple[int | str, ...]) -> type[pydantic.BaseModel] | None:
    """The pydantic model that holds the field at ``loc`` (for "did you mean")."""
    model: Any = Workflow
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        info = getattr(model, "model_fields", {}).get(part)
        if info is None:
            return None
        annotation = info.annotation
        found = None
        for candidate in _walk_types(annotation):
            if isinstance(candidate, type) and issubclass(candidate, pydantic.BaseModel):
                found = candidate
                break
        if found is None:
            return None
        model = found
    return model if isinstance(model, type) else None


def _walk_types(tp: Any) -> list[Any]:
    out = [tp]
    for arg in getattr(tp, "__args__", ()) or ():
        out += _walk_types(arg)
    return out


_HINTS: dict[str, str | None] = {
    "missing": "add it",
    "extra_forbidden": "remove it or fix its spelling",
    "literal_error": None,
    "int_parsing": "use a whole number",
    "int_type": "use a whole number",
    "float_parsing": "use a number",
    "bool_parsing": "use true or false",
    "string_type": "quote it",
    "list_type": "use a list",
    "dict_type": "use a mapping of keys to values",
    "model_type": "use a mapping of keys to values",
}


def _message(error: Any, loc: tuple[int | str, ...]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        key = str(loc[-1])
        model = _model_at(loc)
        close = difflib.get_close_matches(key, _allowed_keys(model), n=1) if model else []
        hint = f"did you mean {close[0]!r}?" if close else "remove it or fix its spelling"
        return f"unknown key {key!r} ({hint})"
    if kind == "missing":
        return "is required (add it)"
    message = str(error["msg"])
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    message = message[0].lower() + message[1:] if message else message
    if kind == "literal_error":
        return message.replace("input should be", "must be")
    fix = _HINTS.get(kind)
    return f"{message} ({fix})" if fix else message


class _Refused(yaml.YAMLError):
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
                raise _Refused(f"nested more than {MAX_DEPTH} levels deep (flatten it)", line)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


class _CLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """The same, parsed by libyaml (ten times faster) when PyYAML was built with it."""


_FAST = hasattr(yaml, "CSafeLoader")
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
                raise _Refused(f"nested more than {MAX_DEPTH} levels deep (flatten it)", line)
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
                raise _Refused(
                    f"holds over {MAX_YAML_NODES:,} values {how}".strip()
                    + ("" if how else " (split the work: read the items from map.input)"),
                    node.start_mark.line + 1,
                )
            continue
        if key in sizes:
            continue
        if key in path:
            raise _Refused("an alias refers to its own anchor (remove the loop)", 1)
        if isinstance(node, yaml.ScalarNode):
            why = _bad_text(node.value) if isinstance(node.value, str) else None
            if why is not None:
                raise _Refused(f"a string {why}", node.start_mark.line + 1)
            sizes[key] = 1
            continue
        path.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in children if id(child) not in sizes)


def load_yaml(text: str) -> Any:
    """Parse YAML (or JSON) the way workflow files are parsed."""
    return _parse(text)[1]


def _parse(text: str) -> tuple[yaml.Node | None, Any]:
    """The node tree (for line numbers) and the data, from one pass of the parser."""
    if _FAST:
        _check_depth(text)
    loader = _CLoader(text) if _FAST else _Loader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None, None
        _check_graph(root)
        return root, loader.construct_document(root)
    finally:
        loader.dispose()


def parse_workflow(text: str, *, file: str) -> tuple[Workflow, yaml.Node | None]:
    """Parse and validate workflow text; raise WorkflowError with every problem."""
    try:
        root, data = _parse(text)
    except _Refused as exc:
        raise WorkflowError([Problem(file, exc.line, "", exc.message)]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc)
        if "nesting depth" in problem:  # libyaml's own limit, met before ours while scanning
            raise WorkflowError(
                [Problem(file, line, "", f"nested more than {MAX_DEPTH} levels deep (flatten it)")]
            ) from None
        raise WorkflowError(
            [Problem(file, line, "", f"not valid YAML or JSON: {problem} (fix the syntax)")]
        ) from None
    except RecursionError:
        raise WorkflowError(
            [Problem(file, 1, "", f"nested too deeply (at most {MAX_DEPTH} levels)")]
        ) from None
    if not isinstance(data, dict):
        raise WorkflowError(
            [Problem(file, 1, "", "a workflow is a mapping with at least `name` and `map`")]
        )
    try:
        spec = Workflow.model_validate(data)
    except pydantic.ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = tuple(error["loc"])
            problems.append(
                Problem(file, _node_line(root, loc), _loc_text(loc), _message(error, loc))
            )
        problems.sort(key=lambda p: (p.line, p.path))
        raise WorkflowError(problems) from None
    return spec, root


_COMMON = {"env", "run", "shell", "last"}
_ITEM = {"item", "item_id", "item_index", "item_total", "attempt"}
_MAP = {"map"}


def _agent_words(spec: Workflow) -> list[str]:
    """The agent's command line as words (a prompt is appended to them)."""
    try:
        return shlex.split(spec.agent.command)
    except ValueError:
        return []


def check_templates(spec: Workflow) -> list[tuple[tuple[int | str, ...], str]]:
    """Variables that are unknown where they are used, or placed unsafely."""
    problems: list[tuple[tuple[int | str, ...], str]] = []
    captures: set[str] = set()

    def check_steps(steps: list[Step], loc: tuple[int | str, ...], roots: set[str]) -> None:
        for i, step in enumerate(steps):
            here = (*loc, i)
            known = roots | captures
            if step.kind == "shell":
                key = "run" if step.run is not None else "shell"
                problems.extend(((*here, key), p) for p in shell_problems(step.text))
                texts = [(key, step.text)]
            elif step.kind == "argv":
                problems.extend(((*here, "argv"), p) for p in argv_problems(step.argv or []))
                texts = [("argv", a) for a in step.argv or []]
            else:
                agent = _agent_words(spec)
                prompt = [*agent, step.claude or ""]
                problems.extend(
                    ((*here, "claude"), p) for p in argv_problems(prompt, literal=len(agent))
                )
                texts = [("claude", step.claude or "")]
            texts += [("env", v) for v in step.env.values()]
            for key, text in texts:
                for name in template_variables(text):
                    if name.split(".")[0] not in known:
                        problems.append(
                            (
                                (*here, key),
                                f"unknown variable ${{{name}}} here (known: "
                                + ", ".join(sorted(known))
                                + ")",
                            )
                        )
            check_steps(step.on_failure, (*here, "on_failure"), roots)
            if step.capture_output:
                captures.add(step.capture_output)

    check_steps(spec.setup, ("setup",), _COMMON)
    if spec.map is not None and spec.map.command is not None:
        known = _COMMON | captures
        problems.extend((("map", "command"), p) for p in shell_problems(spec.map.command))
        for name in template_variables(spec.map.command):
            if name.split(".")[0] not in known:
                problems.append((("map", "command"), f"unknown variable ${{{name}}} here"))
    if spec.map is not None:
        check_steps(spec.map.agent_template, ("map", "agent_template"), _COMMON | _ITEM)
        if spec.map.id is not None:
            for name in template_variables(spec.map.id):
                if name.split(".")[0] not in {"item", "item_index", "env"}:
                    problems.append(
                        (
                            ("map", "id"),
                            f"unknown variable ${{{name}}} in the id (use ${{item...}})",
                        )
                    )
    check_steps(spec.reduce, ("reduce",), _COMMON | _MAP)
    return problems


def check_map(spec: Workflow) -> list[tuple[tuple[int | str, ...], str]]:
    """The map's expressions compiled and its inline items checked, as when a run loads them."""
    problems: list[tuple[tuple[int | str, ...], str]] = []
    if spec.map is None:
        return problems
    checks: list[tuple[str, str | None, Callable[[str], object]]] = [
        ("json_path", spec.map.json_path, compile_json_path),
        ("filter", spec.map.filter, compile_filter),
        ("sort_by", spec.map.sort_by, parse_sort),
    ]
    for key, text, compile_it in checks:
        if text is None:
            continue
        try:
            compile_it(text)
        except ItemsError as exc:
            message = str(exc).removeprefix(f"map.{key}: ")
            problems.append((("map", key), message))
    for index, value in enumerate(spec.map.items or []):
        why = check_value(value)
        if why is not None:
            problems.append((("map", "items", index), why))
            break
    return problems


def load_workflow(path: str | Path, *, raw: bytes | None = None) -> LoadedWorkflow:
    """Read, parse and validate a workflow file (YAML or JSON).

    ``raw``: the file's bytes, already read (a run's frozen copy, loaded as if
    from ``path`` so that its directory is the workflow's).
    """
    path = Path(path)
    if raw is None:
        raw = read_bounded(
            path,
            limit=limits().workflow_bytes,
            what="workflow file",
            env_name="ENGINE_MAX_WORKFLOW_BYTES",
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise WorkflowError(
            [Problem(str(path), line, "", f"not UTF-8 text (byte {exc.start}; save it as UTF-8)")]
        ) from None
    spec, root = parse_workflow(text, file=str(path))
    template_problems = [
        Problem(str(path), _node_line(root, loc), _loc_text(loc), message)
        for loc, message in [
            *check_templates(spec),
            *secret_template_problems(spec),
            *check_map(spec),
        ]
    ]
    if template_problems:
        raise WorkflowError(template_problems)
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    return LoadedWorkflow(spec=spec, path=path.resolve(), text=text, hash=digest)


def describe_changes(old: Workflow, new: Workflow, *, limit: int = 20) -> list[str]:
    """What differs between two workflows, one ``field.path: old -> new`` line each."""
    before = old.model_dump(mode="json", by_alias=True, exclude_unset=False)
    after = new.model_dump(mode="json", by_alias=True, exclude_unset=False)
    lines: list[str] = []

    def short(value: Any) -> str:
        text = json.dumps(value, sort_keys=True)
        return text if len(text) <= 60 else text[:57] + "..."

    def walk(a: Any, b: Any, where: str) -> None:
        if a == b:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                path = f"{where}.{key}" if where else str(key)
                if key not in a:
                    lines.append(f"{path}: added ({short(b[key])})")
                elif key not in b:
                    lines.append(f"{path}: removed (was {short(a[key])})")
                else:
                    walk(a[key], b[key], path)
            return
        if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for index, (x, y) in enumerate(zip(a, b, strict=True)):
                walk(x, y, f"{where}[{index}]")
            return
        lines.append(f"{where}: {short(a)} -> {short(b)}")

    walk(before, after, "")
    if len(lines) > limit:
        lines = [*lines[:limit], f"... and {len(lines) - limit} more"]
    return lines
