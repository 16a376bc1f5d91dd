"""Loading a workflow file, with errors that point at the line.

Every problem is reported as ``FILE:LINE: field.path: what is wrong (how to
fix)``, one line each; unknown keys get a "did you mean" when a known key is
close.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic
import yaml

from engine.errors import ItemsError, WorkflowError
from engine.items.selection import check_value, compile_filter, compile_json_path, parse_sort
from engine.limits import MAX_DEPTH, limits, read_bounded
from engine.redact import secret_template_problems
from engine.workflow.reading import Refused, load_yaml, parse_yaml
from engine.workflow.spec import Step, Workflow
from engine.workflow.template import argv_problems, shell_problems, template_variables
from engine.workflow.variables import Phase, known_roots

__all__ = [
    "LoadedWorkflow",
    "Problem",
    "WorkflowError",
    "load_workflow",
    "load_yaml",
    "parse_workflow",
]


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


@dataclass(frozen=True)
class LoadedWorkflow:
    """A validated workflow and the file it came from."""

    spec: Workflow
    path: Path
    text: str
    hash: str
    """``sha256:<hex>`` of the file's bytes."""

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


def parse_workflow(text: str, *, file: str) -> tuple[Workflow, yaml.Node | None]:
    """Parse and validate workflow text; raise WorkflowError with every problem."""
    try:
        root, data = parse_yaml(text)
    except Refused as exc:
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

    def check_steps(steps: list[Step], loc: tuple[int | str, ...], phase: Phase) -> None:
        for i, step in enumerate(steps):
            here = (*loc, i)
            known = known_roots(phase, captures)
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
            check_steps(step.on_failure, (*here, "on_failure"), phase)
            if step.capture_output:
                captures.add(step.capture_output)

    check_steps(spec.setup, ("setup",), "setup")
    if spec.map is not None and spec.map.command is not None:
        known = known_roots("map.command", captures)
        problems.extend((("map", "command"), p) for p in shell_problems(spec.map.command))
        for name in template_variables(spec.map.command):
            if name.split(".")[0] not in known:
                problems.append((("map", "command"), f"unknown variable ${{{name}}} here"))
    if spec.map is not None:
        check_steps(spec.map.agent_template, ("map", "agent_template"), "map")
        if spec.map.id is not None:
            for name in template_variables(spec.map.id):
                if name.split(".")[0] not in known_roots("map.id"):
                    problems.append(
                        (
                            ("map", "id"),
                            f"unknown variable ${{{name}}} in the id (use ${{item...}})",
                        )
                    )
    check_steps(spec.reduce, ("reduce",), "reduce")
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
