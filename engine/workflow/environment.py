"""A run's environment: ``env_files``, ``env``, a profile, ``secrets``, ``--var``.

What a command gets, later sources winning: the engine's own environment,
then the ``env_files`` (in their order), ``env``, the profile chosen with
``--profile``, the ``secrets`` given as a mapping (``NAME: SOURCE``, the
value of ``SOURCE``), and ``--var``. The same values are ``${env.X}``.

A secret's value is never recorded. A secret is a name listed in or mapped
by ``secrets``, or an ``env`` or profile entry written ``{value: TEXT,
secret: true}``. The run keeps a copy of the workflow with each secret entry's
value replaced by ``***`` (:func:`masked_text`), and the workflow's hash is
that copy's; ``run.created`` records the values read from ``env_files``
(secrets as ``***``) and the profile's name. A secret entry whose value is
``***`` (the run's copy, once the workflow file is gone) takes its value from
the environment variable of the same name; a resume prefers that variable to
the file's value in any case (:func:`resolve`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from engine.errors import ProfileUnknown, WorkflowError
from engine.limits import MAX_ENV_ENTRY, limits, read_bounded
from engine.workflow.fields import EnvValue, check_env_name, entry_value
from engine.workflow.problems import Finding, Problem, locate
from engine.workflow.reading import parse_yaml
from engine.workflow.spec import Workflow

if TYPE_CHECKING:
    from engine.workflow.load import LoadedWorkflow

__all__ = [
    "MASK",
    "Environment",
    "mask_spec",
    "masked_text",
    "profile_entries",
    "read_env_file",
    "read_env_files",
    "recorded_copy",
    "recorded_files",
    "recorded_hash",
    "resolve",
    "validate_environment",
]

MASK = "***"
"""What a secret's value is in the run's copy of the workflow and in the ledger."""


@dataclass
class Environment:
    """What a run's commands get from the workflow, and what must never be recorded."""

    values: dict[str, str] = field(default_factory=dict)
    """Every variable the workflow sets (``${env.X}``), laid over the engine's environment."""
    secrets: list[str] = field(default_factory=list)
    """The values of the secrets (for the redactor)."""
    missing: list[str] = field(default_factory=list)
    """Secret entries with no value: ``***`` in the workflow, no variable of that name."""


def profile_entries(spec: Workflow, profile: str | None) -> dict[str, str | EnvValue]:
    """The variables of ``profile`` (its ``description`` is none); ProfileUnknown if none such."""
    if profile is None:
        return {}
    if profile not in spec.profiles:
        known = sorted(spec.profiles)
        listed = ", ".join(known) if known else "the workflow has no profiles"
        raise ProfileUnknown(
            f"--profile {profile}: the workflow has no such profile (known: {listed})",
            profile=profile,
            known=known,
        )
    return {k: v for k, v in spec.profiles[profile].items() if k != "description"}


def resolve(
    spec: Workflow,
    *,
    profile: str | None = None,
    files: Mapping[str, str] | None = None,
    variables: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
    resuming: bool = False,
) -> Environment:
    """The run's variables, in order of precedence, and its secrets' values.

    ``files``: the values read from ``env_files``; ``variables``: ``--var``.
    A secret entry takes the variable of its name from ``environ`` when its
    value is ``***``, and always when ``resuming``; ``missing`` names those
    that have neither.
    """
    env = os.environ if environ is None else environ
    names = spec.secret_names
    out = Environment(values=dict(files or {}))
    for name, entry in {**spec.env, **profile_entries(spec, profile)}.items():
        value = entry_value(entry)
        if name in names and (value == MASK or (resuming and name in env)):
            if name not in env:
                out.missing.append(name)
                continue
            value = env[name]
        out.values[name] = value
    if isinstance(spec.secrets, dict):
        for name, source in spec.secrets.items():
            if source in env:
                out.values[name] = env[source]
    out.values.update(variables or {})
    for name in spec.secrets if isinstance(spec.secrets, list) else ():
        if name not in out.values and env.get(name):
            out.values[name] = env[name]  # ${env.NAME} of a listed secret
    out.secrets = [v for n in sorted(names) if (v := out.values.get(n) or env.get(n, ""))]
    return out


def recorded_files(files: Mapping[str, str], names: Collection[str]) -> dict[str, str]:
    """The values read from ``env_files`` as ``run.created`` records them: secrets as ``***``."""
    return {k: MASK if k in names else v for k, v in files.items()}


# --- .env files ------------------------------------------------------------------------

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}


class _Bad(ValueError):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


def _quoted(text: str, start: int, quote: str, line: int) -> tuple[str, int]:
    """The value of a quoted string opening at ``start``, and the index after it."""
    out: list[str] = []
    i = start + 1
    while i < len(text):
        char = text[i]
        if char == quote:
            return "".join(out), i + 1
        if char == "\\" and quote == '"' and i + 1 < len(text) and text[i + 1] in _ESCAPES:
            out.append(_ESCAPES[text[i + 1]])
            i += 2
            continue
        out.append(char)
        i += 1
    raise _Bad(line, f"the value's {quote} is not closed (close the quote)")


def _parse_env(text: str) -> dict[str, str]:
    """``KEY=VALUE`` lines; ``_Bad`` names the line of the first that is not."""
    values: dict[str, str] = {}
    i, line = 0, 1
    while i < len(text):
        end = text.find("\n", i)
        end = len(text) if end < 0 else end
        raw = text[i:end].rstrip("\r")
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            i, line = end + 1, line + 1
            continue
        if stripped.startswith("export") and stripped[6:7] in (" ", "\t"):
            stripped = stripped[6:].lstrip()
        key, sep, rest = stripped.partition("=")
        key = key.strip()
        if not sep:
            raise _Bad(
                line, "not KEY=VALUE (write KEY=VALUE, or start the line with # for a comment)"
            )
        try:
            check_env_name(key)
        except ValueError as exc:
            raise _Bad(line, str(exc)) from None
        first = line
        offset = i + raw.index("=") + 1
        while offset < len(text) and text[offset] in " \t":
            offset += 1
        if offset < len(text) and text[offset] in "\"'":
            value, after = _quoted(text, offset, text[offset], line)
            end = text.find("\n", after)
            end = len(text) if end < 0 else end
            trailing = text[after:end].strip()
            if trailing and not trailing.startswith("#"):
                raise _Bad(first, "text after the closing quote (quote the whole value)")
            line += text.count("\n", i, end)
        else:
            value = rest.split(" #", 1)[0].split("\t#", 1)[0].strip()
        if "\0" in value:
            raise _Bad(first, "the value holds a NUL byte, which no environment can carry")
        if len(key.encode()) + len(value.encode("utf-8", "surrogatepass")) + 2 > MAX_ENV_ENTRY:
            raise _Bad(first, f"{key}=... is larger than an environment entry ({MAX_ENV_ENTRY:,})")
        values[key] = value
        i, line = end + 1, line + 1
    return values


def read_env_file(path: Path) -> dict[str, str]:
    """One ``.env`` file's variables; WorkflowError naming the line that is not ``KEY=VALUE``."""
    raw = read_bounded(
        path, limit=limits().workflow_bytes, what="env file", env_name="ENGINE_MAX_WORKFLOW_BYTES"
    )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise WorkflowError(
            [Problem(str(path), line, "", f"not UTF-8 text (byte {exc.start}; save it as UTF-8)")]
        ) from None
    try:
        return _parse_env(text.removeprefix("\ufeff"))
    except _Bad as exc:
        raise WorkflowError([Problem(str(path), exc.line, "", exc.message)]) from None


def _env_file_path(directory: Path, name: str) -> Path:
    return directory / Path(name).expanduser()


def read_env_files(spec: Workflow, directory: Path) -> tuple[dict[str, str], list[str]]:
    """The ``env_files`` read in order, later ones winning, and those not found (skipped)."""
    values: dict[str, str] = {}
    missing: list[str] = []
    for name in spec.env_files:
        path = _env_file_path(directory, name)
        if not path.exists() and not path.is_symlink():
            missing.append(name)
            continue
        values.update(read_env_file(path))
    return values, missing


def validate_environment(path: Path, spec: Workflow, *, profile: str | None) -> list[Problem]:
    """What ``engine validate`` says of the environment: env files not found (warnings), not
    ``KEY=VALUE`` (errors); ProfileUnknown for a ``--profile`` the workflow does not have."""
    profile_entries(spec, profile)
    if not spec.env_files:
        return []
    problems: list[Problem] = []
    findings: list[Finding] = []
    for index, name in enumerate(spec.env_files):
        file = _env_file_path(path.resolve().parent, name)
        if not file.exists() and not file.is_symlink():
            findings.append(
                Finding(
                    ("env_files", index),
                    f"{name}: no such file; a run skips it "
                    "(create it, or remove it from env_files)",
                    warning=True,
                )
            )
            continue
        try:
            read_env_file(file)
        except WorkflowError as exc:
            problems += exc.problems
    if findings:
        try:
            root, _ = parse_yaml(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            root = None
        problems = locate(str(path), root, findings) + problems
    return problems


# --- what is recorded ------------------------------------------------------------------


def mask_spec(spec: Workflow) -> Workflow:
    """``spec`` with each secret entry's value replaced by ``***`` (for comparisons shown)."""
    names = spec.secret_names
    if not names:
        return spec

    def masked(entries: Mapping[str, Any], is_profile: bool) -> dict[str, Any]:
        out = dict(entries)
        for k, v in entries.items():
            if k in names and not (is_profile and k == "description"):
                out[k] = v.model_copy(update={"value": MASK}) if isinstance(v, EnvValue) else MASK
        return out

    profiles = {name: masked(p, True) for name, p in spec.profiles.items()}
    return spec.model_copy(update={"env": masked(spec.env, False), "profiles": profiles})


def _entry_nodes(root: yaml.Node | None, names: Collection[str]) -> list[yaml.Node]:
    """The value nodes of the secret entries of ``env`` and of every profile."""
    if not isinstance(root, yaml.MappingNode):
        return []
    sections: list[tuple[yaml.Node, bool]] = []
    for key, value in root.value:
        if key.value == "env":
            sections.append((value, False))
        elif key.value == "profiles" and isinstance(value, yaml.MappingNode):
            sections += [(v, True) for _, v in value.value]
    nodes: list[yaml.Node] = []
    for section, is_profile in sections:
        if not isinstance(section, yaml.MappingNode):
            continue
        for key, value in section.value:
            if key.value not in names or (is_profile and key.value == "description"):
                continue
            if isinstance(value, yaml.MappingNode):
                nodes += [v for k, v in value.value if k.value == "value"]
            else:
                nodes.append(value)
    return nodes


def _masked_data(data: Any, names: Collection[str]) -> Any:
    """The document as parsed, with the secret entries' values ``***``."""
    if not isinstance(data, dict):
        return data

    def entries(section: Any, is_profile: bool) -> Any:
        if not isinstance(section, dict):
            return section
        out = dict(section)
        for k, v in section.items():
            if k in names and not (is_profile and k == "description"):
                out[k] = {**v, "value": MASK} if isinstance(v, dict) and "value" in v else MASK
        return out

    out = dict(data)
    if "env" in out:
        out["env"] = entries(out["env"], False)
    if isinstance(out.get("profiles"), dict):
        out["profiles"] = {k: entries(v, True) for k, v in out["profiles"].items()}
    return out


def masked_text(text: str, spec: Workflow) -> str:
    """The workflow's text with each secret entry's value replaced by ``***``.

    The rest of the text (comments, layout) is kept; when replacing the
    values in place would not give the same document with those values
    masked (it always should), the masked document is written as YAML
    instead. Any other occurrence of a secret entry's value (a comment, a
    command) is replaced by ``***`` too.
    """
    names = spec.secret_names
    if not names:
        return text
    root, data = parse_yaml(text)
    spans = sorted(
        {(n.start_mark.index, n.end_mark.index) for n in _entry_nodes(root, names)}, reverse=True
    )
    out = text
    for start, end in spans:
        segment = out[start:end]
        out = out[:start] + '"***"' + segment[len(segment.rstrip()) :] + out[end:]
    expected = _masked_data(data, names)
    try:
        same = parse_yaml(out)[1] == expected
    except yaml.YAMLError:
        same = False
    if not same:
        out = yaml.safe_dump(expected, sort_keys=False, allow_unicode=True)
    values = {
        entry_value(v)
        for entries in (spec.env, *spec.profiles.values())
        for k, v in entries.items()
        if k in names and entry_value(v) not in ("", MASK)
    }
    for value in sorted(values, key=len, reverse=True):
        out = out.replace(value, MASK)
    return out


def recorded_hash(text: str) -> str:
    """``sha256:<hex>`` of the workflow as the run keeps it (:func:`masked_text`)."""
    return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def recorded_copy(loaded: LoadedWorkflow) -> tuple[str, str]:
    """The workflow as a run keeps it (secret entries ``***``) and that copy's hash."""
    text = masked_text(loaded.text, loaded.spec)
    return text, loaded.hash if text == loaded.text else recorded_hash(text)
