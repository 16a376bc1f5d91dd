"""The Prodigy dialect: a MapReduce workflow as Prodigy writes it, read as the engine's.

A workflow file with a top-level ``mode:`` is Prodigy's (``mode: mapreduce``).
:func:`translate` turns its document into the engine's own (a plain mapping
that the one spec, :class:`engine.workflow.spec.Workflow`, then validates):
Prodigy's defaults apply (``max_parallel`` 10, its agent command line, a
worktree per agent, no retry unless asked for), its spellings become the
engine's, and every key the engine does not support is warned of or refused
(:mod:`engine.workflow.prodigy_keys`), at its line in the file. The engine
underneath is one: what runs is the translated workflow.

Values Prodigy resolves when it reads the file (``max_parallel: $VAR``,
``agent_timeout_secs``, ``setup.timeout``, the ``${VAR}`` in ``map.input``)
are resolved from the workflow's ``env``, then the environment.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import WorkflowError
from engine.workflow.environment import read_env_file
from engine.workflow.problems import Loc
from engine.workflow.prodigy_common import Translation, rewrite, scalar_text
from engine.workflow.prodigy_keys import KEYS
from engine.workflow.prodigy_policy import error_policy
from engine.workflow.prodigy_steps import translate_steps

__all__ = ["AGENT_COMMAND", "DEFAULT_MAX_PARALLEL", "Reading", "is_prodigy", "translate"]

AGENT_COMMAND = "claude --print --dangerously-skip-permissions"
"""How Prodigy runs a ``claude:`` step (the prompt is the last argument)."""
DEFAULT_MAX_PARALLEL = 10
NO_RETRY = {"max_attempts": 2, "retry_on": ["interrupted", "worker_lost"]}
"""Prodigy retries no failure unless asked; an attempt a crash cut short (of the engine,
or of the machine it ran on) runs once more, as Prodigy's resume runs it again."""
_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def is_prodigy(data: Any) -> bool:
    """Whether a parsed workflow is written in the Prodigy dialect (it has ``mode:``)."""
    return isinstance(data, dict) and "mode" in data


@dataclass(frozen=True)
class Reading:
    """What the values Prodigy resolves when it reads the file come from, beside the file:
    the run's environment, ``--profile``, ``--var``, and where ``env_files`` are."""

    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    directory: Path | None = None
    profile: str | None = None
    variables: Mapping[str, str] = field(default_factory=dict)


def translate(
    data: dict[str, Any], reading: Reading | None = None
) -> tuple[dict[str, Any], Translation]:
    """The engine's document for a Prodigy one, and what the translation found."""
    reading = reading or Reading()
    environ = reading.environ
    out = Translation(environ=environ)
    mode = data.get("mode")
    if not isinstance(mode, str) or mode.lower() != "mapreduce":
        out.error(
            ("mode",),
            f"mode {mode!r} is not read: only Prodigy's MapReduce workflows are "
            "(write mode: mapreduce, or drop mode and write the engine's own format)",
        )
    native: dict[str, Any] = {}
    env = _environment(data, native, out)
    resolve = _Resolver(_read_time_values(data, env, reading, out.env_names), out)
    out.rest(data, (), "top", {k.name for k in KEYS if k.where == "top"})
    if "name" in data:
        native["name"] = data["name"]
    native["agent"] = {"command": AGENT_COMMAND}
    phase_timeout: dict[str, Any] = {}
    for phase in ("setup", "reduce", "merge"):
        if phase not in data:
            continue
        raw = data[phase]
        if isinstance(raw, dict) and phase != "reduce":
            out.rest(
                raw,
                (phase,),
                phase,
                {"commands", "timeout", "capture_outputs"}
                if phase == "setup"
                else {"commands", "timeout"},
            )
            timeout = resolve.duration(raw.get("timeout"), (phase, "timeout"))
            if timeout is not None:
                phase_timeout[phase] = timeout
                out.came_from(("phase_timeout", phase), (phase, "timeout"))
            steps = translate_steps(raw.get("commands", []), (phase, "commands"), (phase,), out)
            if phase == "setup":
                _capture_outputs(raw.get("capture_outputs"), steps, out)
        else:
            steps = translate_steps(raw, (phase,), (phase,), out)
        native[phase] = steps
    if phase_timeout:
        native["phase_timeout"] = phase_timeout
    if "map" in data:
        native["map"] = _map(data["map"], resolve, out)
        out.came_from(("map",), ("map",))
    circuit = error_policy(data, native.get("map"), out)
    if circuit is not None:
        native["circuit_breaker"] = circuit
    return native, out


def _environment(data: dict[str, Any], native: dict[str, Any], out: Translation) -> dict[str, str]:
    """``env``, ``secrets``, ``env_files``, ``profiles`` in the engine's form; the plain
    values of ``env`` (what the file's ``$VAR`` resolve to)."""
    plain: dict[str, str] = {}
    env = data.get("env")
    if isinstance(env, dict):
        made: dict[str, Any] = {}
        for name, value in env.items():
            here = ("env", name)
            if isinstance(value, dict) and "value" in value:
                secret = value.get("secret", False)
                made[name] = {"value": scalar_text(value["value"]), "secret": secret}
                if secret is not True:
                    plain[name] = made[name]["value"]
            elif isinstance(value, dict):
                out.error(
                    here,
                    "a value computed by a command or a condition is not supported: compute it "
                    "in a setup step (capture_output: NAME) and use ${NAME}",
                )
            else:
                made[name] = plain[name] = scalar_text(value)
            out.env_names.add(str(name))
        native["env"] = made
    elif env is not None:
        native["env"] = env
    secrets = data.get("secrets")
    if isinstance(secrets, dict):
        native["secrets"] = {
            name: _secret_source(value, ("secrets", name), out) for name, value in secrets.items()
        }
        out.env_names.update(str(name) for name in secrets)
    elif secrets is not None and out.expect(
        secrets, (list,), ("secrets",), "a mapping of names to their sources, or a list of names"
    ):
        native["secrets"] = secrets
        out.env_names.update(str(n) for n in secrets)
    if "env_files" in data:
        native["env_files"] = data["env_files"]
    profiles = data.get("profiles")
    if profiles is not None:
        native["profiles"] = profiles
        for values in profiles.values() if isinstance(profiles, dict) else ():
            if isinstance(values, dict):
                out.env_names.update(str(k) for k in values if k != "description")
    return plain


_ENV_REF = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")


def _secret_source(value: Any, loc: Loc, out: Translation) -> Any:
    """Prodigy's secret (``"${env:NAME}"``, ``{provider: env, key: NAME}``): the variable
    its value is read from."""
    if isinstance(value, str):
        m = _ENV_REF.fullmatch(value.strip())
        return m.group(1) if m else value
    if isinstance(value, dict):
        provider = value.get("provider", "env")
        if provider == "env" and isinstance(value.get("key"), str):
            return value["key"]
        out.error(
            loc,
            f"secrets from provider {provider!r} are not supported: only from the environment "
            "(provider: env, key: NAME)",
        )
        return str(loc[-1])
    return value


def _read_time_values(
    data: dict[str, Any], env: Mapping[str, str], reading: Reading, declared: set[str]
) -> dict[str, str]:
    """The variables a value resolved with the file sees, in the run's order: the
    environment, ``env_files``, ``env``, the profile, ``--var``. The names the
    ``env_files`` set join ``declared``."""
    values = dict(reading.environ)
    files = data.get("env_files")
    directory = reading.directory
    names = files if isinstance(files, list) and directory is not None else []
    for name in names:
        assert directory is not None
        path = directory / Path(str(name)).expanduser()
        if path.is_file():
            # A bad line is said by the environment's own check, at its line.
            with contextlib.suppress(WorkflowError):
                found = read_env_file(path)
                values.update(found)
                declared.update(found)
    values.update(env)
    profiles = data.get("profiles")
    chosen = profiles.get(reading.profile) if isinstance(profiles, dict) else None
    if isinstance(chosen, dict):
        values.update(
            {str(k): str(v) for k, v in chosen.items() if k != "description" and _plain(v)}
        )
    values.update(reading.variables)
    return values


def _plain(value: Any) -> bool:
    return isinstance(value, str | int | float) and not isinstance(value, bool)


class _Resolver:
    """``$VAR`` and ``${VAR}`` in the values Prodigy reads with the file."""

    def __init__(self, values: Mapping[str, str], out: Translation):
        self.values, self.out = values, out

    def text(self, value: str, loc: Loc) -> str | None:
        def one(m: re.Match[str]) -> str:
            name = m.group(1) or m.group(2)
            found = self.values.get(name)
            if found is None:
                raise KeyError(name)
            return found

        try:
            return _REFERENCE.sub(one, value)
        except KeyError as exc:
            self.out.error(
                loc,
                f"environment variable {exc.args[0]!r} is not set in the workflow's env, its "
                "env_files, the profile, --var or the environment (add it to env, or export it)",
            )
            return None

    def duration(self, value: Any, loc: Loc) -> Any:
        """A timeout Prodigy may get as seconds, as text or as an environment reference:
        seconds when it reads as a whole number, else the text (a duration such as
        ``10m`` is the engine's, anything else its error, at this key)."""
        if not isinstance(value, str):
            return value
        text = self.text(value, loc)
        return int(text) if text is not None and text.strip().isdigit() else text

    def number(self, value: Any, loc: Loc) -> Any:
        """A whole number Prodigy may get as text or as an environment reference."""
        if not isinstance(value, str):
            return value
        text = self.text(value, loc)
        if text is None:
            return None
        try:
            return int(text)
        except ValueError:
            self.out.error(loc, f"{text[:40]!r} is not a whole number (write e.g. 5)")
            return None


def _capture_outputs(raw: Any, steps: list[dict[str, Any]], out: Translation) -> None:
    """Setup's ``capture_outputs: {VAR: index}``: the step at that index captures ``VAR``."""
    if not isinstance(raw, dict):
        return
    for name, spec in raw.items():
        here = ("setup", "capture_outputs", name)
        index = spec if isinstance(spec, int) else None
        if isinstance(spec, dict) and isinstance(spec.get("command_index"), int):
            index = spec["command_index"]
        if index is None or not 0 <= index < len(steps):
            out.error(here, "name the setup step whose output it keeps by its index (0, 1, ...)")
            continue
        steps[index]["capture_output"] = name
        out.captures.add(str(name))


_MAP_SAME = ("json_path", "filter", "sort_by", "distinct", "max_items", "offset")


def _map(raw: Any, resolve: _Resolver, out: Translation) -> Any:
    if not isinstance(raw, dict):
        return raw
    handled = {*_MAP_SAME, "input", "max_parallel", "agent_template"}
    handled |= {"agent_timeout_secs", "timeout_config"}
    out.rest(raw, ("map",), "map", handled)
    made: dict[str, Any] = {k: raw[k] for k in _MAP_SAME if k in raw and raw[k] != ""}
    if isinstance(raw.get("input"), str):
        # A file's path or a command, known only once setup ran: a template either way
        # (values as data), never text pasted in.
        made["input"] = rewrite(raw["input"], out, shell=True)
        made["input_missing"] = "command"
    elif "input" in raw:
        made["input"] = raw["input"]
    parallel = resolve.number(
        raw.get("max_parallel", DEFAULT_MAX_PARALLEL), ("map", "max_parallel")
    )
    if parallel is not None:  # else said already
        made["max_parallel"] = parallel
    made["agent_template"] = translate_steps(
        raw.get("agent_template"), ("map", "agent_template"), ("map", "agent_template"), out
    )
    template = made["agent_template"]
    if isinstance(template, list) and template and isinstance(template[-1], dict):
        template[-1].setdefault("output", "text")  # the agent's result is what it printed last
    _timeouts(raw, made, resolve, out)
    made["isolation"] = "worktree"
    made["work_at"] = "repository"
    made["id"] = "item_${item_index}"
    made["retry"] = dict(NO_RETRY)
    return made


def _timeouts(
    raw: dict[str, Any], made: dict[str, Any], resolve: _Resolver, out: Translation
) -> None:
    """``agent_timeout_secs`` and ``timeout_config``: the item's and each command's timeouts."""
    config = raw.get("timeout_config")
    here: Loc = ("map", "timeout_config")
    if config is not None and not out.expect(config, (dict,), here, "a mapping"):
        config = None
    config = config if isinstance(config, dict) else {}
    if config:
        out.rest(
            config,
            here,
            "timeout_config",
            {"agent_timeout_secs", "command_timeouts", "timeout_policy"},
        )
    where: Loc = (
        ("map", "agent_timeout_secs")
        if "agent_timeout_secs" in raw
        else (*here, "agent_timeout_secs")
    )
    agent = resolve.duration(raw.get("agent_timeout_secs", config.get("agent_timeout_secs")), where)
    policy = str(config.get("timeout_policy", "PerAgent")).lower().replace("_", "")
    if policy not in ("peragent", "percommand", "hybrid"):
        out.error((*here, "timeout_policy"), "must be PerAgent, PerCommand or Hybrid")
    if agent is not None and policy in ("peragent", "hybrid"):
        made["timeout"] = agent
        out.came_from(("map", "timeout"), where)
    per_command: dict[str, tuple[Any, Loc]] = {}
    if policy == "percommand" and agent is not None:
        per_command = {"claude": (agent, where), "shell": (agent, where)}
    given = config.get("command_timeouts")
    if given is not None and out.expect(given, (dict,), (*here, "command_timeouts"), "a mapping"):
        for kind, value in given.items():
            place: Loc = (*here, "command_timeouts", kind)
            per_command[str(kind)] = (resolve.duration(value, place), place)
    steps = made.get("agent_template")
    for index, step in enumerate(steps if isinstance(steps, list) else []):
        kind = "claude" if isinstance(step, dict) and "claude" in step else "shell"
        if not isinstance(step, dict) or "timeout" in step or kind not in per_command:
            continue
        step["timeout"], place = per_command[kind]
        out.came_from(("map", "agent_template", index, "timeout"), place)
