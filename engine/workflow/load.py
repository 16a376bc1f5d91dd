"""Loading a workflow file, with errors that point at the line.

Every problem is reported as ``FILE:LINE: field.path: what is wrong (how to
fix)``, one line each, and all of them in one pass: the checks of templates
and expressions (:mod:`engine.workflow.checks`) read the document as
written, so they run even when the schema refuses something elsewhere.
Unknown keys get a "did you mean" when a known key is close, or when they
are another tool's spelling of one (:mod:`engine.workflow.hints`).

Three levels: :func:`load_workflow` checks the file alone (``engine run``,
``engine resume``); :func:`preflight` checks what a new run needs of the
machine before anything is created (the map's input file, the steps'
programs); :func:`validate_workflow` does both and reads the items when it
can (``engine validate``).
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic
import yaml

from engine.errors import WorkflowError
from engine.limits import MAX_DEPTH, limits, read_bounded
from engine.redact import secret_template_problems
from engine.workflow.checks import TemplateChecks, check_document
from engine.workflow.hints import foreign_hint
from engine.workflow.problems import Finding, Loc, Problem, locate
from engine.workflow.prodigy import Reading, is_prodigy, translate
from engine.workflow.prodigy_common import Translation
from engine.workflow.programs import missing_programs
from engine.workflow.reading import Refused, load_yaml, parse_yaml
from engine.workflow.sourcecheck import check_source, input_missing
from engine.workflow.spec import Workflow

__all__ = [
    "LoadedWorkflow",
    "Problem",
    "WorkflowError",
    "describe_changes",
    "load_workflow",
    "load_yaml",
    "parse_workflow",
    "preflight",
    "run_environment",
    "validate_workflow",
]


@dataclass(frozen=True)
class LoadedWorkflow:
    """A validated workflow and the file it came from."""

    spec: Workflow
    path: Path
    text: str
    hash: str
    """``sha256:<hex>`` of the file's bytes."""
    document: Any = field(default=None, compare=False, repr=False)
    """The parsed document, as written, or the engine's form of a Prodigy one (what
    :func:`preflight` reads)."""
    shown: str = ""
    """The file as the user named it (in messages); ``path`` is resolved."""
    dialect: Translation | None = field(default=None, compare=False, repr=False)
    """A Prodigy workflow's translation (None: the engine's own format)."""

    @property
    def directory(self) -> Path:
        return self.path.parent


def _allowed_keys(model: type[pydantic.BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


def _model_at(loc: Loc) -> type[pydantic.BaseModel] | None:
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


@functools.cache
def _every_key() -> dict[str, str]:
    """Every key of the spec, at its path (``max_parallel`` -> ``map.max_parallel``)."""
    out: dict[str, str] = {}
    todo: list[tuple[str, type[pydantic.BaseModel]]] = [("", Workflow)]
    seen: set[type[pydantic.BaseModel]] = set()
    while todo:
        prefix, model = todo.pop(0)
        if model in seen:
            continue
        seen.add(model)
        for name, info in model.model_fields.items():
            key = info.alias or name
            out.setdefault(key, prefix + key)
            for candidate in _walk_types(info.annotation):
                if isinstance(candidate, type) and issubclass(candidate, pydantic.BaseModel):
                    todo.append((prefix + key + ".", candidate))
    return out


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


def _message(error: Any, loc: Loc) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        key = str(loc[-1])
        model = _model_at(loc)
        allowed = _allowed_keys(model) if model else []
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = foreign_hint(key, model.__name__ if model else None, allowed)
        elsewhere = difflib.get_close_matches(key, list(_every_key()), n=1)
        if hint is None and close:
            hint = f"did you mean {close[0]!r}?"
        elif hint is None and elsewhere:
            hint = f"did you mean {_every_key()[elsewhere[0]]}? it is not a key here"
        elif hint is None:
            hint = "remove it or fix its spelling"
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


@dataclass
class _Checked:
    """A workflow text parsed and checked: the spec when the schema took it, and every finding."""

    file: str
    root: yaml.Node | None
    data: Any
    spec: Workflow | None
    findings: list[Finding]
    templates: TemplateChecks | None = None
    dialect: Translation | None = None

    def problems(self) -> list[Problem]:
        return locate(self.file, self.root, relocated(self.findings, self.dialect))


def relocated(findings: list[Finding], dialect: Translation | None) -> list[Finding]:
    """Findings at their places in the file as written: a Prodigy workflow's findings
    on the engine's form moved to the Prodigy keys they come from, with the
    translation's own."""
    if dialect is None:
        return findings
    moved = [Finding(dialect.relocate(f.loc), dialect.said(f.message), f.warning) for f in findings]
    return [*dialect.findings, *moved]


def _parse(text: str, file: str) -> tuple[yaml.Node | None, Any]:
    """The node tree and the data; WorkflowError when it is not a YAML mapping."""
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
    return root, data


def _check_text(
    text: str, file: str, *, check_env: bool = False, reading: Reading | None = None
) -> _Checked:
    """The schema, the templates and the expressions, each whatever the others found.

    ``check_env``: warn of an ``${env.X}`` that ``env:`` does not set (a run
    may give it with ``--var``, so only ``engine validate`` says it).
    """
    root, data = _parse(text, file)
    dialect = None
    if is_prodigy(data):
        data, dialect = translate(data, reading)
    findings: list[Finding] = []
    spec: Workflow | None = None
    try:
        spec = Workflow.model_validate(data)
    except pydantic.ValidationError as exc:
        for error in exc.errors():
            loc = tuple(error["loc"])
            findings.append(Finding(loc, _message(error, loc)))
    templates = check_document(data, check_env=check_env)
    findings += templates.findings
    if spec is not None:
        findings += [Finding(loc, message) for loc, message in secret_template_problems(spec)]
    return _Checked(file, root, data, spec, findings, templates, dialect)


def _raise_errors(problems: list[Problem]) -> None:
    if any(p.severity == "error" for p in problems):
        raise WorkflowError(problems)


def parse_workflow(text: str, *, file: str) -> tuple[Workflow, yaml.Node | None]:
    """Parse and validate workflow text; raise WorkflowError with every problem."""
    checked = _check_text(text, file)
    _raise_errors(checked.problems())
    assert checked.spec is not None
    return checked.spec, checked.root


def _read(path: Path, raw: bytes | None) -> tuple[bytes, str]:
    if raw is None:
        raw = read_bounded(
            path,
            limit=limits().workflow_bytes,
            what="workflow file",
            env_name="ENGINE_MAX_WORKFLOW_BYTES",
        )
    try:
        return raw, raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise WorkflowError(
            [Problem(str(path), line, "", f"not UTF-8 text (byte {exc.start}; save it as UTF-8)")]
        ) from None


def load_workflow(
    path: str | Path,
    *,
    raw: bytes | None = None,
    profile: str | None = None,
    variables: Mapping[str, str] | None = None,
) -> LoadedWorkflow:
    """Read, parse and validate a workflow file (YAML or JSON).

    ``raw``: the file's bytes, already read (a run's frozen copy, loaded as if
    from ``path`` so that its directory is the workflow's). Raises
    WorkflowError with every problem when one is an error.
    """
    path = Path(path)
    raw, text = _read(path, raw)
    reading = Reading(directory=path.resolve().parent, profile=profile, variables=variables or {})
    checked = _check_text(text, str(path), reading=reading)
    problems = checked.problems()
    _raise_errors(problems)
    assert checked.spec is not None
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    return LoadedWorkflow(
        spec=checked.spec,
        path=path.resolve(),
        text=text,
        hash=digest,
        document=checked.data,
        shown=str(path),
        dialect=checked.dialect,
    )


def run_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The environment a run's commands get (this process's, with ``env`` over it).

    The ``engine`` executable's directory comes first on ``PATH``, as in a run.
    """
    out = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    current = out.get("PATH", "")
    if bin_dir not in current.split(os.pathsep):
        out["PATH"] = bin_dir + (os.pathsep + current if current else "")
    out.update(env)
    return out


def preflight(
    loaded: LoadedWorkflow, env: Mapping[str, str], *, allow_missing: bool = False
) -> None:
    """What a new run needs of the machine before it is created; WorkflowError when it lacks it.

    ``env``: the run's environment (:func:`run_environment`). A program not
    found is an error unless ``allow_missing``; a ``map.input`` that is not
    there, and that no setup step mentions, always is.
    """
    data = loaded.document
    if not isinstance(data, dict):
        return
    findings = [] if allow_missing else missing_programs(data, env)
    missing = input_missing(data, loaded.directory)
    if missing is not None and not missing.warning:
        findings.append(missing)
    if findings:
        root, _ = parse_yaml(loaded.text)
        moved = relocated(findings, loaded.dialect)
        if loaded.dialect is not None:
            moved = moved[len(loaded.dialect.findings) :]  # said when it was loaded
        raise WorkflowError(locate(loaded.shown or str(loaded.path), root, moved))


def validate_workflow(
    path: str | Path, *, profile: str | None = None
) -> tuple[Workflow | None, list[Problem]]:
    """Everything ``engine validate`` checks, in one pass: the spec (None when invalid), problems.

    The file, its templates and expressions; the map's input file and, when
    they can be read without running a command, its items against the
    templates; the steps' programs on ``PATH`` (warnings: the machine that
    runs the workflow may differ). Raises WorkflowError only when the file
    is not a YAML mapping, InputRefused when it cannot be read.
    """
    path = Path(path)
    _, text = _read(path, None)
    reading = Reading(directory=path.resolve().parent, profile=profile)
    checked = _check_text(text, str(path), check_env=True, reading=reading)
    data: dict[str, Any] = checked.data
    directory = path.resolve().parent
    section = data.get("env")
    env = {
        k: v
        for k, v in (section.items() if isinstance(section, dict) else ())
        if isinstance(k, str) and isinstance(v, str)
    }
    findings = list(checked.findings)
    findings += [
        Finding(f.loc, f.message, warning=True)
        for f in missing_programs(data, run_environment(env))
    ]
    uses = checked.templates.item_uses if checked.templates else []
    selection = {("map", key) for key in ("json_path", "filter", "sort_by", "items", "id")}
    said = any(f.loc[:2] in selection and not f.warning for f in findings)
    source = [] if said else check_source(data, directory, env, uses)
    if not source and (missing := input_missing(data, directory)) is not None:
        source = [missing]  # the map's schema failed: its input is still said to be missing
    findings += source
    if checked.spec is not None and (found := isolation_unusable(checked.spec, directory)):
        findings.append(found)
    return checked.spec, locate(str(path), checked.root, relocated(findings, checked.dialect))


def isolation_unusable(spec: Workflow, directory: Path) -> Finding | None:
    """``map.isolation: worktree`` where the workspace is in no git repository with a commit."""
    if spec.map is None or spec.map.isolation != "worktree":
        return None
    try:
        done = subprocess.run(
            ["git", "-C", str(directory), "rev-parse", "-q", "--verify", "HEAD^{commit}"],
            capture_output=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Finding(("map", "isolation"), f"worktree isolation needs git, which fails: {exc}")
    if done.returncode == 0:
        return None
    if b"not a git repository" in done.stderr:
        why = f"{directory} is not in a git repository (run `git init` and commit there)"
    else:
        why = f"the repository of {directory} has no commit yet (commit once first)"
    return Finding(("map", "isolation"), f"worktree isolation needs a git workspace: {why}")


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
