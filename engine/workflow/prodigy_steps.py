"""Prodigy's steps in the engine's terms: commands, handlers, retries, validation, templates.

Part of the Prodigy dialect (:mod:`engine.workflow.prodigy`). Each function
takes a piece of the Prodigy document as written, with its place there, and
returns the engine's form of it; what it cannot translate it says, at the
Prodigy place, through :class:`Translation` (one warning or error per key,
with the note of :mod:`engine.workflow.prodigy_keys`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.workflow.problems import Finding, Loc
from engine.workflow.prodigy_keys import key_note
from engine.workflow.spec import ERROR_TYPES

__all__ = ["RENAMED", "Translation", "backoff", "rewrite", "translate_steps"]

_NATIVE_ROOTS = frozenset(
    {
        "item",
        "item_id",
        "item_index",
        "item_total",
        "attempt",
        "env",
        "last",
        "shell",
        "claude",
        "map",
        "merge",
        "run",
        "validation",
    }
)
RENAMED = {
    "map.results": "map.agent_results",
    "map.success_rate": "map.success_percent",
    "merge.session_id": "run.id",
}
"""Prodigy's variables that the engine has under another name."""

_BRACED = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)((?:\.[A-Za-z0-9_\-]+)*)\}")
_BARE = re.compile(r"(?<![$\\])\$([A-Za-z_][A-Za-z0-9_]*)")

AUTOMATION_ENV = {"PRODIGY_AUTOMATION": "true"}
"""What Prodigy sets for the agents it runs."""


@dataclass
class Translation:
    """What a translation found: problems at Prodigy's places, and where each engine key was."""

    env_names: set[str] = field(default_factory=set)
    """The names ``env``, ``secrets``, ``profiles`` and ``env_files`` declare."""
    environ: Mapping[str, str] = field(default_factory=dict)
    """The environment the file is read in."""
    captures: set[str] = field(default_factory=set)
    findings: list[Finding] = field(default_factory=list)
    origins: dict[Loc, Loc] = field(default_factory=dict)
    """An engine place -> the Prodigy place it comes from."""

    def warn(self, loc: Loc, message: str) -> None:
        self.findings.append(Finding(loc, message, warning=True))

    def error(self, loc: Loc, message: str) -> None:
        self.findings.append(Finding(loc, message))

    def came_from(self, native: Loc, prodigy: Loc) -> None:
        self.origins[native] = prodigy

    def rest(self, section: dict[str, Any], loc: Loc, where: str, handled: set[str]) -> None:
        """One warning or error for each key of ``section`` not in ``handled``."""
        for key in section:
            if key in handled:
                continue
            here = (*loc, str(key))
            known = key_note(where, str(key))
            if known is None:
                self.warn(
                    here,
                    f"{key!r} is not a key Prodigy reads here: ignored, as Prodigy ignores it "
                    "(remove it or fix its spelling)",
                )
            elif known.treatment == "refused":
                self.error(here, f"Prodigy's {key!r} is refused: {known.engine}")
            elif known.treatment == "warned":
                self.warn(here, f"Prodigy's {key!r}: {known.engine}")

    def said(self, message: str) -> str:
        """A message about the engine's form, in the names the Prodigy file uses."""
        for old, new in RENAMED.items():
            if not new.startswith("run."):
                message = message.replace("${" + new, "${" + old)
        return message

    def relocate(self, loc: Loc) -> Loc:
        """The Prodigy place of an engine place (its longest known prefix, mapped)."""
        for size in range(len(loc), -1, -1):
            found = self.origins.get(loc[:size])
            if found is not None:
                return (*found, *loc[size:])
        return loc


# --- templates --------------------------------------------------------------------------------


def rewrite(text: Any, out: Translation, *, shell: bool) -> Any:
    """A Prodigy template in the engine's spelling.

    ``${map.results}`` and the other renamed variables get the engine's name;
    a declared environment name (``${VAR}``, ``$VAR``) becomes ``${env.VAR}``,
    whose value reaches the command as data wherever it stands, as Prodigy's
    textual substitution puts it there. Any other ``${name}`` Prodigy leaves
    as it is: in a shell command it is the shell's (written ``$${name}``,
    the text ``${name}``, whatever the quoting); in a prompt it is the
    environment's variable when there is one, else the text.
    """
    if not isinstance(text, str) or "$" not in text:
        return text

    def braced(m: re.Match[str]) -> str:
        root, rest = m.group(1), m.group(2)
        whole = root + rest
        for old, new in RENAMED.items():
            if whole == old or whole.startswith(old + "."):
                return "${" + new + whole[len(old) :] + "}"
        if rest or root in _NATIVE_ROOTS or root in out.captures:
            return m.group(0)
        if root in out.env_names or (not shell and root in out.environ):
            return "${env." + root + "}"
        return "$" + m.group(0)

    def bare(m: re.Match[str]) -> str:
        name = m.group(1)
        return "${env." + name + "}" if name in out.env_names else m.group(0)

    return _BARE.sub(bare, _BRACED.sub(braced, text))


# --- steps ------------------------------------------------------------------------------------

_KINDS = ("shell", "claude", "write_file", "test")
_COMMON = {
    "name",
    "timeout",
    "commit_required",
    "env",
    "working_dir",
    "capture",
    "capture_output",
    "capture_format",
    "on_failure",
    "on_success",
    "retry",
    "max_attempts",
    "validate",
}


def translate_steps(
    raw: Any, ploc: Loc, nloc: Loc | None, out: Translation
) -> list[dict[str, Any]]:
    """A Prodigy list of steps (or ``{commands: [...]}``) as the engine's steps.

    ``nloc``: where they go in the engine's document, recorded for each step
    (None: inside another step, whose place stands for theirs).
    """
    if isinstance(raw, dict) and "commands" in raw:
        out.rest(raw, ploc, "reduce", {"commands"})
        raw, ploc = raw["commands"], (*ploc, "commands")
    if not isinstance(raw, list):
        if nloc is not None:
            out.came_from(nloc, ploc)
        return raw  # type: ignore[no-any-return]  # the schema says what is wrong
    steps: list[dict[str, Any]] = []
    for index, step in enumerate(raw):
        for made in _step(step, (*ploc, index), out):
            if nloc is not None:
                out.came_from((*nloc, len(steps)), (*ploc, index))
            steps.append(made)
    return steps


def _step(raw: Any, loc: Loc, out: Translation) -> list[dict[str, Any]]:
    """One Prodigy step: the engine's step, and the one its ``on_success`` adds."""
    if not isinstance(raw, dict):
        return [raw]
    step: dict[str, Any] = {}
    if "shell" in raw:
        step["run"] = rewrite(raw["shell"], out, shell=True)
    if "claude" in raw:
        step["claude"] = rewrite(raw["claude"], out, shell=False)
        step["env"] = dict(AUTOMATION_ENV)
    if isinstance(raw.get("write_file"), dict):
        step["write_file"] = _write_file(raw["write_file"], (*loc, "write_file"), out)
    elif "write_file" in raw:
        step["write_file"] = raw["write_file"]
    if "test" in raw:
        _test(raw["test"], (*loc, "test"), step, out)
    _common(raw, loc, step, out)
    out.rest(raw, loc, "step", {*_KINDS, *_COMMON})
    made = [step]
    if "on_success" in raw:
        after = _step(raw["on_success"], (*loc, "on_success"), out)
        for extra in after:
            if isinstance(extra, dict):
                extra["on_failure"] = {"recover": True}  # Prodigy ignores its failure
        made += after
    return made


def _common(raw: dict[str, Any], loc: Loc, step: dict[str, Any], out: Translation) -> None:
    for key in ("name", "timeout", "commit_required"):
        if key in raw:
            step[key] = raw[key]
    if isinstance(raw.get("env"), dict):
        env = {k: rewrite(_text(v), out, shell=False) for k, v in raw["env"].items()}
        step["env"] = {**step.get("env", {}), **env}
    elif "env" in raw:
        step["env"] = raw["env"]
    if "working_dir" in raw:
        step["cwd"] = raw["working_dir"]
    capture = raw.get("capture", raw.get("capture_output"))
    if isinstance(capture, str):
        step["capture_output"] = capture
        out.captures.add(capture)
    elif capture is not None and not isinstance(capture, bool):
        step["capture_output"] = capture  # the schema says what is wrong
    if "capture_format" in raw:
        step["capture_format"] = raw["capture_format"]
    if "on_failure" in raw:
        handlers = _on_failure(raw["on_failure"], (*loc, "on_failure"), out)
        if handlers is not None:
            step["on_failure"] = handlers
    if "retry" in raw:
        step["retry"] = _step_retry(raw["retry"], (*loc, "retry"), out)
    elif "max_attempts" in raw:
        step["retry"] = {
            "max_attempts": raw["max_attempts"],
            "retry_on": list(ERROR_TYPES),
            "initial": 1,
            "jitter": False,
        }
    if "validate" in raw:
        step["validate"] = _validate(raw["validate"], (*loc, "validate"), out)


def _text(value: Any) -> Any:
    """A scalar as YAML gives it (``3``, ``true``), as the text Prodigy reads."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, int | float) else value


def _write_file(raw: dict[str, Any], loc: Loc, out: Translation) -> dict[str, Any]:
    made = dict(raw)
    for key in ("path", "content"):
        if key in made:
            made[key] = rewrite(_text(made[key]), out, shell=False)
    return made


def _test(raw: Any, loc: Loc, step: dict[str, Any], out: Translation) -> None:
    """Prodigy's old ``test: {command, on_failure}``: a shell step with its handler."""
    if not isinstance(raw, dict):
        step["run"] = raw
        return
    step["run"] = rewrite(raw.get("command"), out, shell=True)
    handler = raw.get("on_failure")
    if isinstance(handler, dict):
        handler = {"max_attempts": 3, **handler}
        made = _on_failure(handler, (*loc, "on_failure"), out)
        if made is not None:
            step["on_failure"] = made


def _handler_steps(raw: dict[str, Any], loc: Loc, out: Translation) -> list[dict[str, Any]]:
    """The steps a handler mapping (``shell``, ``claude`` or ``commands``) names."""
    steps: list[dict[str, Any]] = []
    for kind in ("shell", "claude"):
        if kind in raw:
            steps += _step({kind: raw[kind]}, loc, out)
    if "commands" in raw:
        steps += translate_steps(raw["commands"], (*loc, "commands"), None, out)
    for key in ("commit_required", "timeout"):
        if key in raw:
            for made in steps:
                made[key] = raw[key]
    return steps


def _on_failure(raw: Any, loc: Loc, out: Translation) -> dict[str, Any] | None:
    """Prodigy's ``on_failure``: a handler that succeeds lets the step's sequence go on.

    ``true``: the failure is ignored; a list: its steps run, and the item goes
    on when they succeed; a mapping: its handler runs, then the failed
    command again (``max_attempts``, default 1), and ``fail_workflow: true``
    makes the step fail whatever the handler did.
    """
    if isinstance(raw, bool):
        return {"recover": True} if raw else None
    if isinstance(raw, list):
        return {"steps": translate_steps(raw, loc, None, out), "recover": True}
    if not isinstance(raw, dict):
        return raw  # type: ignore[no-any-return]  # the schema says what is wrong
    out.rest(
        raw,
        loc,
        "on_failure",
        {"shell", "claude", "commands", "max_attempts", "max_retries", "fail_workflow"}
        | {"commit_required", "timeout"},
    )
    steps = _handler_steps(raw, loc, out)
    fail = raw.get("fail_workflow", False)
    reruns = raw.get("max_attempts", raw.get("max_retries", 1)) if steps else 0
    return {
        "steps": steps,
        "rerun": reruns,
        "recover": not fail if isinstance(fail, bool) else fail,
    }


_RETRY_ON = {
    "network": ["api_error"],
    "server_error": ["api_error"],
    "timeout": ["timeout", "hung"],
    "rate_limit": ["rate_limited"],
}


def _step_retry(raw: Any, loc: Loc, out: Translation) -> Any:
    """Prodigy's step ``retry:`` (attempts, backoff, delays, jitter, retry_on)."""
    if not isinstance(raw, dict):
        return raw
    handled = {"attempts", "backoff", "initial_delay", "max_delay", "jitter", "jitter_factor"}
    out.rest(raw, loc, "step.retry", handled | {"retry_on"})
    made: dict[str, Any] = {
        "max_attempts": raw.get("attempts", 3),
        "initial": raw.get("initial_delay", 1),
        "max": raw.get("max_delay", 30),
        "jitter": raw.get("jitter", False),
    }
    if "jitter_factor" in raw or made["jitter"] is True:
        made["jitter_factor"] = raw.get("jitter_factor", 0.3)  # Prodigy's default
    made.update(backoff(raw.get("backoff", "exponential"), (*loc, "backoff"), out))
    types: list[str] = []
    for index, kind in enumerate(raw.get("retry_on") or []):
        if isinstance(kind, str) and kind in _RETRY_ON:
            types += _RETRY_ON[kind]
        else:
            out.warn(
                (*loc, "retry_on", index),
                f"retry_on {kind!r} is not one of network, timeout, server_error, "
                "rate_limit: not applied (every other kind of failure is not retried)",
            )
    made["retry_on"] = sorted(set(types)) if types else list(ERROR_TYPES)
    return made


def backoff(raw: Any, loc: Loc, out: Translation) -> dict[str, Any]:
    """``fixed``, ``{linear: {increment}}``, ``{exponential: {base|multiplier, initial}}``, ..."""
    if isinstance(raw, str):
        return {"backoff": raw}
    if not isinstance(raw, dict) or len(raw) != 1:
        return {"backoff": raw}
    ((kind, params),) = raw.items()
    params = params if isinstance(params, dict) else {}
    made: dict[str, Any] = {"backoff": kind}
    if kind == "exponential":
        if "base" in params or "multiplier" in params:
            factor: Any = params.get("base", params.get("multiplier"))
            whole = isinstance(factor, int) and not isinstance(factor, bool)
            made["multiplier"] = float(factor) if whole else factor
        if "initial" in params:
            made["initial"] = params["initial"]
    elif kind == "fixed" and "delay" in params:
        made["initial"] = params["delay"]
    elif kind == "linear":
        step = params.get("increment", params.get("initial"))
        if step is not None:
            made["initial"] = step
        if "initial" in params and "increment" in params and params["initial"] != step:
            out.warn(loc, "linear backoff waits increment x n here (its initial is not added)")
    elif kind == "fibonacci" and "initial" in params:
        made["initial"] = params["initial"]
    elif kind == "custom":
        out.warn(loc, "custom delays are not supported: exponential backoff is used instead")
        made["backoff"] = "exponential"
    return made


def _validate(raw: Any, loc: Loc, out: Translation) -> Any:
    """``validate:`` (a command or agent, result_file, threshold, on_incomplete)."""
    if isinstance(raw, list):
        return {"steps": translate_steps(raw, loc, None, out)}
    if not isinstance(raw, dict):
        return raw
    handled = {"shell", "claude", "commands", "command"}
    out.rest(
        raw, loc, "validate", handled | {"result_file", "threshold", "timeout", "on_incomplete"}
    )
    if "command" in raw and "shell" not in raw:
        raw = {**raw, "shell": raw["command"]}
    made: dict[str, Any] = {"steps": _handler_steps(raw, loc, out)}
    for key in ("result_file", "threshold", "timeout"):
        if key in raw:
            made[key] = raw[key]
    incomplete = raw.get("on_incomplete")
    if isinstance(incomplete, list):
        made["on_incomplete"] = {
            "steps": translate_steps(incomplete, (*loc, "on_incomplete"), None, out)
        }
    elif isinstance(incomplete, dict):
        here = (*loc, "on_incomplete")
        out.rest(
            incomplete,
            here,
            "on_incomplete",
            {"shell", "claude", "commands", "max_attempts", "fail_workflow", "commit_required"},
        )
        repair: dict[str, Any] = {"steps": _handler_steps(incomplete, here, out)}
        tries = incomplete.get("max_attempts", 2)
        if isinstance(tries, int) and not isinstance(tries, bool):
            tries = min(tries + 1, 100)  # Prodigy counts the repairs; the engine, rounds
        repair["max_attempts"] = tries
        if "fail_workflow" in incomplete:
            repair["fail"] = incomplete["fail_workflow"]
        made["on_incomplete"] = repair
    return made
