"""The checks of a workflow's templates and expressions, on the document as written.

They read the parsed YAML, not the validated spec, so that they run even
when the schema refuses something elsewhere: every problem of a file is
reported in one pass. A value of the wrong type is left to the schema.

* Every ``${...}`` of every templated field (``run``, ``shell``, ``argv``,
  ``claude``, ``write_file.path`` and ``content``, ``validate.result_file``, a step's ``env`` and
  ``artifacts``, ``map.command``, ``map.id``, ``cache.key``), in a step's
  ``validate`` steps too, is a variable known in its phase
  (:mod:`engine.workflow.variables`), with "did you mean" otherwise.
* Shell code is scanned for placements that cannot carry a value as data
  (:mod:`engine.workflow.template`) and for ``${...}`` that no shell reads.
* ``filter``, ``sort_by``, ``distinct`` and ``json_path`` compile, as the run compiles them.
* A field that is not a template (``cwd``, ``map.input``, ``cache.inputs``)
  holding ``${...}`` is refused: nothing would substitute it.
* A ``write_file.path`` that leaves the workspace as written (absolute, or a
  ``..`` above the workflow's directory) is refused.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.errors import ItemsError
from engine.items.selection import (
    check_value,
    compile_filter,
    compile_json_path,
    parse_distinct,
    parse_sort,
)
from engine.workflow.problems import Finding, Loc
from engine.workflow.shellcode import command_strings
from engine.workflow.template import argv_problems, shell_problems, template_variables
from engine.workflow.variables import Phase, check_variable, step_roots

__all__ = ["ItemUse", "TemplateChecks", "check_document", "outside_workspace", "steps_of"]

DEFAULT_AGENT = "claude -p"
_TEMPLATE_LIKE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_\-]+)*[|:][^}]*\}?")
"""``${x|default:y}``, ``${cmd:...}``: meant as a template, but not one of the engine's."""


@dataclass(frozen=True)
class ItemUse:
    """A ``${item.FIELD...}`` in a template, checked against the items when they can be read."""

    loc: Loc
    name: str
    every_item: bool
    """Every item must have it (``map.id``: one item without it stops the run)."""


def steps_of(raw: Any, loc: Loc) -> list[tuple[Loc, dict[str, Any]]]:
    """A steps field as written (a list, ``{commands: [...]}`` or, for ``on_failure``,
    ``{steps: [...]}``): its mappings and places."""
    if isinstance(raw, dict) and "commands" in raw:
        raw, loc = raw["commands"], (*loc, "commands")
    elif isinstance(raw, dict) and "steps" in raw:
        raw, loc = raw["steps"], (*loc, "steps")
    if not isinstance(raw, list):
        return []
    return [((*loc, i), step) for i, step in enumerate(raw) if isinstance(step, dict)]


def agent_words(data: dict[str, Any]) -> list[str]:
    """``agent.command`` as words (the default when it is not given or not text)."""
    agent = data.get("agent")
    command = agent.get("command", DEFAULT_AGENT) if isinstance(agent, dict) else DEFAULT_AGENT
    try:
        return shlex.split(command) if isinstance(command, str) else shlex.split(DEFAULT_AGENT)
    except ValueError:
        return []


def _env_names(data: dict[str, Any]) -> list[str] | None:
    """The names the workflow sets: ``env``, ``secrets``, its profiles (None: not known,
    as when ``env_files`` set some)."""
    if data.get("env_files"):
        return None
    names: list[str] = []
    profiles = data.get("profiles")
    for section in (
        data.get("env"),
        data.get("secrets"),
        *(profiles.values() if isinstance(profiles, dict) else ()),
    ):
        if isinstance(section, dict | list):
            names += [k for k in section if isinstance(k, str)]
    return names


@dataclass
class TemplateChecks:
    """The walk over a document's templates: what it found, and the uses of item fields."""

    data: dict[str, Any]
    check_env: bool = False
    """Whether an ``${env.X}`` that ``env:`` does not set is a warning (``engine validate``)."""
    findings: list[Finding] = field(default_factory=list)
    item_uses: list[ItemUse] = field(default_factory=list)
    captures: set[str] = field(default_factory=set)
    after: frozenset[str] = frozenset()
    """What the steps of the same sequence that ran before the one being checked set
    (``last``, ``shell``, ``claude``: :func:`~engine.workflow.variables.step_roots`)."""
    repairing: bool = False
    """The step being checked is a ``validate.on_incomplete`` step (``${validation}`` exists)."""

    def __post_init__(self) -> None:
        self.env_names = _env_names(self.data) if self.check_env else None
        self.agent = agent_words(self.data)

    def add(self, loc: Loc, messages: list[str]) -> None:
        self.findings.extend(Finding(loc, m) for m in messages)

    def names(self, loc: Loc, text: Any, phase: Phase, *, shell: bool) -> None:
        """The variables of one template; its ``${...}`` that are no template, when no shell."""
        if not isinstance(text, str):
            return
        for name in template_variables(text):
            why = check_variable(
                name,
                phase,
                self.captures,
                self.env_names,
                after_step=self.after,
                repairing=self.repairing,
            )
            if why is not None:
                self.findings.append(Finding(loc, why[0], warning=why[1]))
            elif name.startswith("item.") and phase in ("map", "map.id"):
                self.item_uses.append(ItemUse(loc, name, every_item=phase == "map.id"))
        if not shell:
            for m in _TEMPLATE_LIKE.finditer(text):
                self.findings.append(Finding(loc, _not_substituted(m.group(0))))

    def not_template(self, loc: Loc, text: Any, what: str) -> None:
        if isinstance(text, str) and "${" in text:
            self.findings.append(
                Finding(loc, f"{what} is not a template: nothing substitutes ${{...}} here")
            )

    def step(self, here: Loc, step: dict[str, Any], phase: Phase) -> None:
        for key in ("run", "shell"):
            text = step.get(key)
            if isinstance(text, str):
                self.add((*here, key), shell_problems(text))
                self.names((*here, key), text, phase, shell=True)
        argv = step.get("argv")
        if isinstance(argv, list) and all(isinstance(a, str) for a in argv):
            self.add((*here, "argv"), argv_problems(argv))
            code = {index for index, _, _ in command_strings(argv)}
            for index, arg in enumerate(argv):
                self.names((*here, "argv"), arg, phase, shell=index in code)
        prompt = step.get("claude")
        if isinstance(prompt, str):
            words = [*self.agent, prompt]
            self.add((*here, "claude"), argv_problems(words, literal=len(self.agent)))
            is_code = any(index == len(self.agent) for index, _, _ in command_strings(words))
            self.names((*here, "claude"), prompt, phase, shell=is_code)
        env = step.get("env")
        if isinstance(env, dict):
            for key, value in env.items():
                self.names((*here, "env", key), value, phase, shell=False)
        artifacts = step.get("artifacts")
        if isinstance(artifacts, list):
            for index, pattern in enumerate(artifacts):
                self.names((*here, "artifacts", index), pattern, phase, shell=False)
        self.write_file((*here, "write_file"), step.get("write_file"), step.get("cwd"), phase)
        self.not_template((*here, "cwd"), step.get("cwd"), "cwd")
        self.handlers(step.get("on_failure"), (*here, "on_failure"), phase, _sets(step))
        self.validation(step.get("validate"), (*here, "validate"), phase, _sets(step))
        self.capture(here, step)

    def capture(self, here: Loc, step: dict[str, Any]) -> None:
        """``capture_output`` adds its name; a ``capture_format`` without it reads nothing."""
        capture = step.get("capture_output")
        if isinstance(capture, str):
            self.captures.add(capture)
        elif capture is None and step.get("capture_format") not in (None, "text", "string"):
            self.findings.append(
                Finding(
                    (*here, "capture_format"),
                    "capture_format has no effect without capture_output (add "
                    "capture_output: NAME to keep the step's output as ${NAME})",
                    warning=True,
                )
            )

    def handlers(self, raw: Any, loc: Loc, phase: Phase, failed: frozenset[str]) -> None:
        """``on_failure`` steps: they see the failed step (``failed``: what it sets) as
        ``last``; what they capture is lost; their own ``retry`` and ``on_failure`` unused."""
        captures, after = set(self.captures), self.after
        for here, step in steps_of(raw, loc):
            self.after = after | failed
            for key in ("retry", "on_failure"):
                if step.get(key) not in (None, [], {}):
                    self.findings.append(
                        Finding(
                            (*here, key),
                            f"{key} has no effect in an on_failure step (handlers are not "
                            "retried and have no handlers): give it to the step that fails",
                            warning=True,
                        )
                    )
            self.step(here, step, phase)
        self.captures, self.after = captures, after

    def write_file(self, loc: Loc, spec: Any, cwd: Any, phase: Phase) -> None:
        """``write_file``: its path and content are templates (text, no shell: content may
        hold a script's own ``${VAR:-x}``); a literal path may not leave the workspace."""
        if not isinstance(spec, dict):
            return
        self.names((*loc, "path"), spec.get("path"), phase, shell=False)
        self.names((*loc, "content"), spec.get("content"), phase, shell=True)
        mapped = self.data.get("map")
        isolated = isinstance(mapped, dict) and mapped.get("isolation") == "worktree"
        why = outside_workspace(spec.get("path"), cwd, isolated=isolated)
        if why is not None:
            self.findings.append(Finding((*loc, "path"), why))

    def validation(self, raw: Any, loc: Loc, phase: Phase, validated: frozenset[str]) -> None:
        """``validate``: its steps see the validated step (``validated``: what it sets) as
        ``last``, its ``on_incomplete`` steps ``${validation.*}`` too; what they capture is
        lost."""
        if not isinstance(raw, dict):
            return
        saved = set(self.captures), self.after, self.repairing
        self.after = self.after | validated
        self.names((*loc, "result_file"), raw.get("result_file"), phase, shell=False)
        incomplete = raw.get("on_incomplete")
        for repairing, here_loc, steps in (
            (False, (*loc, "steps"), raw.get("steps")),
            (True, (*loc, "on_incomplete", "steps"), _get(incomplete, "steps")),
        ):
            self.repairing = repairing
            for here, step in steps_of(steps, here_loc):
                self.step(here, step, phase)
                for key in ("on_failure", "validate", "retry", "capture_output", "output"):
                    if step.get(key) not in (None, [], {}):
                        self.findings.append(Finding((*here, key), _UNUSED_HERE, warning=True))
        self.captures, self.after, self.repairing = saved

    def steps(self, raw: Any, loc: Loc, phase: Phase) -> None:
        """A phase's steps: in an item each step after the first sees what the ones
        before it set (:func:`~engine.workflow.variables.step_roots`); a setup or reduce
        step runs alone."""
        self.after = frozenset()
        for here, step in steps_of(raw, loc):
            self.step(here, step, phase)
            self.after = self.after | _sets(step) if phase == "map" else frozenset()
        self.after = frozenset()

    def run(self) -> None:
        data = self.data
        self.steps(data.get("setup"), ("setup",), "setup")
        spec = data.get("map")
        if isinstance(spec, dict):
            command = spec.get("command")
            if isinstance(command, str):
                self.add(("map", "command"), shell_problems(command))
                self.names(("map", "command"), command, "map.command", shell=True)
            self.names(("map", "id"), spec.get("id"), "map.id", shell=False)
            source = spec.get("input")
            if spec.get("input_missing") == "command" and isinstance(source, str):
                # run as map.command is when no such file exists: a shell command
                self.add(("map", "input"), shell_problems(source))
                self.names(("map", "input"), source, "map.command", shell=True)
            else:
                self.not_template(("map", "input"), source, "map.input")
            setup_captures = set(self.captures)  # an item's captures are its own
            self.steps(spec.get("agent_template"), ("map", "agent_template"), "map")
            self.captures = setup_captures
            self.steps(spec.get("on_conflict"), ("map", "on_conflict"), "on_conflict")
            self.captures = setup_captures
        cache = data.get("cache")
        if isinstance(cache, dict):
            for key in ("key", "inputs"):
                values = cache.get(key)
                for index, text in enumerate(values if isinstance(values, list) else []):
                    if key == "key":
                        self.names(("cache", key, index), text, "map", shell=False)
                    else:
                        self.not_template(("cache", key, index), text, "cache.inputs")
        self.steps(data.get("reduce"), ("reduce",), "reduce")
        self.steps(data.get("merge"), ("merge",), "merge")


_UNUSED_HERE = (
    "not used in a validate or on_incomplete step (these run as plain commands; "
    "put it on a step of the sequence instead)"
)


def _get(raw: Any, key: str) -> Any:
    return raw.get(key) if isinstance(raw, dict) else None


def outside_workspace(path: Any, cwd: Any = None, *, isolated: bool = False) -> str | None:
    """Why a ``write_file`` path as written leaves the workspace (absolute, or a ``..`` that
    climbs above the workflow's directory from the step's ``cwd``), or None. ``isolated``:
    the workspace is the worktree, whose top may be above the workflow's directory (a
    ``..`` is judged when the step runs)."""
    if not isinstance(path, str):
        return None
    if path.startswith("/"):
        return (
            "an absolute path leaves the workspace: write_file writes only inside it "
            "(give a path relative to the step's working directory)"
        )
    if isolated:
        return None
    depth = 0
    start = [p for p in cwd.split("/") if p not in ("", ".")] if isinstance(cwd, str) else []
    for part in [*start, *path.split("/")]:
        if part == "..":
            depth -= 1
            if depth < 0:
                return (
                    "'..' leads out of the workspace: write_file writes only inside it "
                    "(give a path under the step's working directory)"
                )
        elif part not in ("", "."):
            depth += 1
    return None


def _sets(step: dict[str, Any]) -> frozenset[str]:
    """What a step as written sets for the steps after it (``last``, and ``shell`` or
    ``claude`` by its kind)."""
    if isinstance(step.get("claude"), str):
        return step_roots("claude")
    if isinstance(step.get("run"), str) or isinstance(step.get("shell"), str):
        return step_roots("shell")
    return step_roots("argv")


def _not_substituted(written: str) -> str:
    shown = written if len(written) <= 60 else written[:57] + "..."
    m = re.match(r"\$\{([A-Za-z0-9_.\-]+)", written)
    name = m.group(1) if m else "name"
    return (
        f"{shown} is not a variable: it would be passed as it is (the engine's variables "
        f"are ${{name}} or ${{name.field}}, without defaults or filters: use ${{{name}}})"
    )


def _map_expressions(spec: dict[str, Any]) -> list[Finding]:
    """The map's expressions compiled, and its inline items checked, as when a run loads them."""
    findings: list[Finding] = []
    checks: list[tuple[str, Callable[[str], object]]] = [
        ("json_path", compile_json_path),
        ("filter", compile_filter),
        ("sort_by", parse_sort),
        ("distinct", parse_distinct),
    ]
    for key, compile_it in checks:
        text = spec.get(key)
        if not isinstance(text, str):
            continue
        try:
            compile_it(text)
        except ItemsError as exc:
            findings.append(Finding(("map", key), str(exc).removeprefix(f"map.{key}: ")))
    items = spec.get("items")
    for index, value in enumerate(items if isinstance(items, list) else []):
        why = check_value(value)
        if why is not None:
            findings.append(Finding(("map", "items", index), why))
            break
    return findings


def _unread_agent(data: dict[str, Any]) -> list[Finding]:
    """Settings that decide by what the agent reports, in a workflow whose agent's output
    is not read (``agent.output: text``): warned of, as they can never act."""
    agent = data.get("agent")
    output = agent.get("output", "text") if isinstance(agent, dict) else "text"
    if output != "text":
        return []
    why = (
        "has no effect: agent.output is text, so the agent's cost and session are never "
        "read (set agent.output: claude-json or claude-stream-json)"
    )
    found = []
    budget = data.get("budget")
    for key in ("max_cost_usd", "max_item_cost_usd"):
        if isinstance(budget, dict) and budget.get(key) is not None:
            found.append(Finding(("budget", key), why, warning=True))
    spec = data.get("map")
    retry = spec.get("retry") if isinstance(spec, dict) else None
    if isinstance(retry, dict) and retry.get("resume_session") is True:
        found.append(Finding(("map", "retry", "resume_session"), why, warning=True))
    return found


def check_document(data: dict[str, Any], *, check_env: bool = False) -> TemplateChecks:
    """Every template and expression of a parsed workflow, whatever the schema says of it."""
    checks = TemplateChecks(data, check_env)
    checks.run()
    spec = data.get("map")
    if isinstance(spec, dict):
        checks.findings.extend(_map_expressions(spec))
    checks.findings.extend(_unread_agent(data))
    return checks
