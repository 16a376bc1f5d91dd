"""Prodigy's steps in the engine's terms: commands, handlers, validation.

Part of the Prodigy dialect (:mod:`engine.workflow.prodigy`). Each function
takes a piece of the Prodigy document as written, with its place there, and
returns the engine's form of it; what it cannot translate it says, at the
Prodigy place, through :class:`~engine.workflow.prodigy_common.Translation`
(one warning or error per key, with the note of
:mod:`engine.workflow.prodigy_keys`).
"""

from __future__ import annotations

from typing import Any

from engine.workflow.problems import Loc
from engine.workflow.prodigy_common import (
    AUTOMATION_ENV,
    Translation,
    rewrite,
    scalar_text,
    step_retry,
)
from engine.workflow.spec import ERROR_TYPES

__all__ = ["translate_steps"]


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
        here = (*ploc, index)
        for order, made in enumerate(_step(step, here, out)):
            if nloc is not None and order == 0:
                out.came_from((*nloc, len(steps)), here)
                for inside, written in out.last_renames:
                    out.came_from((*nloc, len(steps), *inside), written)
            elif nloc is not None:
                out.came_from((*nloc, len(steps)), (*here, "on_success"))
            steps.append(made)
    return steps


_REFUSED_KINDS = ("goal_seek", "foreach", "handler", "analyze")


def _step(raw: Any, loc: Loc, out: Translation) -> list[dict[str, Any]]:
    """One Prodigy step: the engine's step, and the one its ``on_success`` adds.

    ``out.last_renames`` is then where in the step each key Prodigy names
    otherwise came from.
    """
    out.renames.append([])
    try:
        return _step_of(raw, loc, out)
    finally:
        out.last_renames = out.renames.pop()


def _step_of(raw: Any, loc: Loc, out: Translation) -> list[dict[str, Any]]:
    if not isinstance(raw, dict):
        return [raw]
    step: dict[str, Any] = {}
    if not set(raw) & {*_KINDS, "write_file"} and set(raw) & set(_REFUSED_KINDS):
        step["run"] = ":"  # refused with its reason: not "a step needs a command" as well
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
        success, here = raw["on_success"], (*loc, "on_success")
        if isinstance(success, str):
            success = _command_of(success)
        after = (
            _handler_steps(success, here, out)
            if isinstance(success, dict) and {"shell", "claude"} <= set(success)
            else _step(success, here, out)
        )
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
        env = {k: rewrite(scalar_text(v), out, shell=False) for k, v in raw["env"].items()}
        step["env"] = {**step.get("env", {}), **env}
    elif "env" in raw:
        step["env"] = raw["env"]
    if "working_dir" in raw:
        step["cwd"] = raw["working_dir"]
        out.renamed(("cwd",), (*loc, "working_dir"))
    if "shell" in raw:
        out.renamed(("run",), (*loc, "shell"))
    if "capture" in raw:
        out.renamed(("capture_output",), (*loc, "capture"))
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
        _renames(out, raw["on_failure"], ("on_failure",), (*loc, "on_failure"), _HANDLER_KEYS)
    if "retry" in raw:
        step["retry"] = step_retry(raw["retry"], (*loc, "retry"), out)
        _renames(out, raw["retry"], ("retry",), (*loc, "retry"), _RETRY_KEYS)
    elif "max_attempts" in raw:
        out.renamed(("retry",), (*loc, "max_attempts"))
        step["retry"] = {
            "max_attempts": raw["max_attempts"],
            "retry_on": list(ERROR_TYPES),
            "initial": 1,
            "jitter": False,
        }
    if "validate" in raw:
        step["validate"] = _validate(raw["validate"], (*loc, "validate"), out)
        written = raw["validate"]
        _renames(out, written, ("validate",), (*loc, "validate"), {"steps": "*"})
        if isinstance(written, dict) and isinstance(written.get("on_incomplete"), dict):
            here = ("validate", "on_incomplete")
            _renames(out, written["on_incomplete"], here, (*loc, *here), _INCOMPLETE_KEYS)


_HANDLER_KEYS = {"recover": "fail_workflow", "rerun": "max_attempts", "steps": "*"}
_RETRY_KEYS = {
    "max_attempts": "attempts",
    "initial": "initial_delay",
    "max": "max_delay",
    "multiplier": "backoff",
}
_INCOMPLETE_KEYS = {"fail": "fail_workflow", "steps": "*"}


def _renames(out: Translation, raw: Any, native: Loc, prodigy: Loc, keys: dict[str, str]) -> None:
    """The engine's keys of a mapping at ``native`` that Prodigy writes otherwise
    (``*``: the mapping itself, where its steps are written)."""
    if not isinstance(raw, dict):
        out.renamed(native, prodigy)
        return
    for ours, theirs in keys.items():
        if theirs == "*":
            out.renamed((*native, ours), prodigy)
        elif theirs in raw:
            out.renamed((*native, ours), (*prodigy, theirs))


def _write_file(raw: dict[str, Any], loc: Loc, out: Translation) -> dict[str, Any]:
    made = dict(raw)
    for key in ("path", "content"):
        if key in made:
            made[key] = rewrite(scalar_text(made[key]), out, shell=False)
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
    if isinstance(raw, str):
        raw = [raw]
    if isinstance(raw, list):
        steps = [_command_of(s) if isinstance(s, str) else s for s in raw]
        return {"steps": translate_steps(steps, loc, None, out), "recover": True}
    if not out.expect(
        raw,
        (dict,),
        loc,
        "a mapping (claude, shell, max_attempts, ...), a list, a command or true/false",
    ):
        return None
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


def _command_of(text: str) -> dict[str, str]:
    """A handler given as text: a slash command is the agent's, anything else the shell's."""
    return {"claude": text} if text.lstrip().startswith("/") else {"shell": text}


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
    elif incomplete is not None:
        out.expect(
            incomplete, (dict, list), (*loc, "on_incomplete"), "a mapping or a list of steps"
        )
    return made
