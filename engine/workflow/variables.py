"""The template variables, declared once: which exist in which phase, and what each holds.

Validation (``engine validate``: an unknown ``${name}`` where it is used),
the contexts the engine builds for each phase, and the table in
``docs/workflow.md`` (a test compares them) all come from :data:`VARIABLES`.
A capture (``capture_output: NAME``) adds ``NAME`` for the steps after it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "PHASES",
    "REPAIRING",
    "VARIABLES",
    "EnvironmentValues",
    "Phase",
    "Variable",
    "check_variable",
    "docs_table",
    "item_context",
    "known_roots",
    "last_step",
    "run_context",
    "step_roots",
]

Phase = Literal["setup", "map.command", "map.id", "map", "on_conflict", "reduce", "merge"]
PHASES: tuple[Phase, ...] = (
    "setup",
    "map.command",
    "map.id",
    "map",
    "on_conflict",
    "reduce",
    "merge",
)
"""Where templates are rendered: setup, ``map.command``, ``map.id``, an item's steps, the
map's ``on_conflict`` steps, reduce, and the ``merge`` steps after it."""

_LAST = frozenset({"output", "stderr", "exit_code"})
_AGENT = frozenset({"output", "exit_code"})
_STEPS: frozenset[Phase] = frozenset({"setup", "map", "on_conflict", "reduce", "merge"})
_ITEM: frozenset[Phase] = frozenset({"map", "on_conflict"})
_EVERYWHERE: frozenset[Phase] = frozenset(PHASES)


@dataclass(frozen=True)
class Variable:
    """One variable root (``item`` covers ``${item}`` and ``${item.a.b}``)."""

    root: str
    phases: frozenset[Phase]
    shown: str
    """How ``docs/workflow.md`` writes it."""
    where: str
    """Where it exists, in the docs' words."""
    value: str
    """What it holds, in the docs' words."""
    fields: frozenset[str] | None = None
    """Its fields (``${run.id}``); empty: it has none; None: any (an item, ``env``)."""


VARIABLES: tuple[Variable, ...] = (
    Variable(
        "item",
        frozenset({"map", "map.id", "on_conflict"}),
        "`${item}`, `${item.a.b}`",
        "map",
        "the item, or a field of it (non-strings as JSON)",
    ),
    Variable("item_id", _ITEM, "`${item_id}`", "map", "the item's identity", frozenset()),
    Variable(
        "item_index",
        frozenset({"map", "map.id"}),
        "`${item_index}`",
        "map",
        "the item's position (0, 1, ...)",
        frozenset(),
    ),
    Variable(
        "item_total",
        frozenset({"map"}),
        "`${item_total}`",
        "map",
        "the number of items",
        frozenset(),
    ),
    Variable("attempt", _ITEM, "`${attempt}`", "map", "1, 2, ...", frozenset()),
    Variable(
        "env",
        _EVERYWHERE,
        "`${env.X}`",
        "everywhere",
        "from `env_files`, `env`, the profile, `secrets` and `--var`, else the engine's "
        "own environment ([environment](#environment))",
    ),
    Variable(
        "last",
        _STEPS,
        "`${last.output}`, `${last.stderr}`, `${last.exit_code}`",
        "after an earlier step of the same item; in `on_failure` steps",
        "the previous step's stdout, stderr (its last 64 KiB) and exit code",
        _LAST,
    ),
    Variable(
        "shell",
        _STEPS,
        "`${shell.output}`, `${shell.stderr}`, `${shell.exit_code}`",
        "after an earlier `run` (`shell`) step of the same item; in its `on_failure` steps",
        "the same, of the last `run` step",
        _LAST,
    ),
    Variable(
        "claude",
        _STEPS,
        "`${claude.output}`, `${claude.exit_code}`",
        "after an earlier `claude` step of the same item; in its `on_failure` steps",
        "the agent's stdout and exit code, of the last `claude` step",
        _AGENT,
    ),
    Variable(
        "map",
        frozenset({"reduce", "merge"}),
        "`${map.total}`, `${map.successful}`, `${map.failed}`, `${map.success_rate}`, "
        "`${map.success_percent}`, `${map.failure_percent}`, `${map.results}`, "
        "`${map.results_file}`, "
        "`${map.agent_results}`",
        "reduce, merge",
        "aggregates (the rate as 0.75, the percents as 75.00); the results as JSON (the "
        "file's path when over 64 KiB), and `results.json` in the run directory; every "
        "item's outcome (status, output, commits, files changed, duration, error) as "
        "Prodigy's `${map.results}` has it (`agent-results.json`)",
        frozenset(
            {
                "total",
                "successful",
                "failed",
                "success_rate",
                "success_percent",
                "failure_percent",
                "results",
                "results_file",
                "agent_results",
            }
        ),
    ),
    Variable(
        "merge",
        frozenset({"on_conflict", "merge"}),
        "`${merge.repository}`, `${merge.worktree}`, `${merge.source_branch}`, "
        "`${merge.target_branch}`, `${merge.commits}`, `${merge.files}`",
        "`map.on_conflict`, `merge`",
        "the workspace's repository, the run's worktree, the branch to merge and the "
        "one it goes into, its number of commits; the conflicting files (`on_conflict`)",
        frozenset({"repository", "worktree", "source_branch", "target_branch", "commits", "files"}),
    ),
    Variable(
        "validation",
        _STEPS,
        "`${validation.completion}`, `${validation.missing}`, `${validation.gaps}`, "
        "`${validation.status}`, `${validation.reason}`, `${validation.round}`, "
        "`${validation.threshold}`",
        "`validate.on_incomplete` steps",
        "the last validation's result: its percentage, what it found missing and its gaps "
        "(as JSON), its status; why it could not be read; its round (1, 2, ...) and the "
        "percentage needed",
        frozenset({"completion", "missing", "gaps", "status", "reason", "round", "threshold"}),
    ),
    Variable(
        "run",
        frozenset({"setup", "map.command", "map", "on_conflict", "reduce", "merge"}),
        "`${run.id}`",
        "everywhere but `map.id`",
        "the run id",
        frozenset({"id"}),
    ),
)


AFTER_STEP = frozenset({"last", "shell", "claude"})
"""An earlier step's result: in an item after its first step, and in ``on_failure`` steps
(a setup or reduce step runs alone, so only its handlers have one). ``last`` is any step's,
``shell`` a ``run`` step's, ``claude`` a ``claude`` step's (:func:`step_roots`)."""
REPAIRING = frozenset({"validation"})
"""The last validation's result: only in a ``validate.on_incomplete`` step."""

_AFTER_WHERE = {
    "last": "only after an earlier step of the same item, and in on_failure steps",
    "shell": "only after an earlier run (shell) step of the same item, and in its on_failure steps",
    "claude": "only after an earlier claude step of the same item, and in its on_failure steps",
}

After = bool | frozenset[str] | set[str]
"""Which of :data:`AFTER_STEP` an earlier step of the same sequence has set: all of them
(True), none (False), or these."""


def step_roots(kind: str) -> frozenset[str]:
    """The variables a step of ``kind`` (``shell``, ``argv``, ``claude``, ...) sets for the next."""
    if kind in ("shell", "claude"):
        return frozenset({"last", kind})
    return frozenset({"last"})


def known_roots(
    phase: Phase,
    captures: set[str] | frozenset[str] = frozenset(),
    *,
    after_step: After = True,
    repairing: bool = False,
) -> set[str]:
    """The variable roots a template of ``phase`` may use (captures only where steps run).

    ``after_step``: what the steps of the same sequence that ran before set (see :data:`After`);
    ``repairing``: whether it is a ``validate.on_incomplete`` step (see :data:`REPAIRING`).
    """
    roots = {v.root for v in VARIABLES if phase in v.phases}
    if after_step is not True:
        roots -= AFTER_STEP - (after_step or frozenset())
    if not repairing:
        roots -= REPAIRING
    if phase in _STEPS or phase == "map.command":
        roots |= captures
    return roots


_FOREIGN_FIELDS = {
    "stderr": "${ROOT} keeps no stderr: the previous step's is ${last.stderr};",
    "stdout": "did you mean ${ROOT.output}?",
    "exit_status": "did you mean ${ROOT.exit_code}?",
    "returncode": "did you mean ${ROOT.exit_code}?",
    "status": "did you mean ${ROOT.exit_code}?",
}
"""Fields other tools' templates have, and what to write instead."""


def _close(word: str, choices: Iterable[str]) -> str | None:
    found = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return found[0] if found else None


def check_variable(
    name: str,
    phase: Phase,
    captures: set[str] | frozenset[str] = frozenset(),
    env: Iterable[str] | None = None,
    *,
    after_step: After = True,
    repairing: bool = False,
) -> tuple[str, bool] | None:
    """Why ``${name}`` cannot be used in ``phase``, and whether that is only a warning; or None.

    ``env``: the names ``env:`` sets (None: not known, not checked); a name
    it lacks is a warning, since ``engine run --var`` can give it.
    ``after_step``, ``repairing``: as for :func:`known_roots`.
    """
    root, _, rest = name.partition(".")
    field = rest.split(".")[0]
    known = known_roots(phase, captures, after_step=after_step, repairing=repairing)
    variable = next((v for v in VARIABLES if v.root == root), None)
    if root not in known:
        where = ""
        if variable is not None and root not in captures:
            told = variable.where.replace("`", "")
            told = told if told.startswith(("after", "everywhere")) else f"only in {told}"
            if root in AFTER_STEP and phase in variable.phases:
                told = _AFTER_WHERE[root]
            where = f"; ${{{root}}} is known {told}"
        close = _close(root, known)
        mean = f"did you mean ${{{close}{'.' + rest if rest else ''}}}? " if close else ""
        return (
            f"unknown variable ${{{name}}} here ({mean}known: {', '.join(sorted(known))}{where})",
            False,
        )
    if root in captures or variable is None or not rest:
        return None
    if variable.fields is None:
        if root == "env" and env is not None and field not in set(env):
            close = _close(field, env)
            mean = f"did you mean ${{env.{close}}}? Or " if close else ""
            return (
                f"${{{name}}}: {field} is not set in env ({mean}add it to env, or give it with "
                f"engine run --var {field}=VALUE, or export it; without it the command fails)",
                True,
            )
        return None
    if not variable.fields:
        return (f"${{{name}}}: ${{{root}}} is a value, it has no fields (use ${{{root}}})", False)
    if field in variable.fields and "." not in rest:
        return None
    if field in variable.fields:
        return (f"${{{name}}}: ${{{root}.{field}}} has no fields (use ${{{root}.{field}}})", False)
    close = _close(field, variable.fields)
    hint = _FOREIGN_FIELDS.get(field, "").replace("ROOT", root)
    if not hint:
        hint = f"did you mean ${{{root}.{close}}}?" if close else ""
    fields = ", ".join(sorted(variable.fields))
    return (
        f"unknown variable ${{{name}}} ({hint + ' ' if hint else ''}${{{root}}} has {fields})",
        False,
    )


class EnvironmentValues(dict[str, str]):
    """``${env.X}``: the run's variables (``env``, its files, the profile, secrets,
    ``--var``), and for a name none of them sets, the engine's own environment. As a
    whole (``${env}``) it is only the run's own variables."""

    def __init__(self, own: Mapping[str, str], environ: Mapping[str, str]) -> None:
        super().__init__(own)
        self.environ = environ

    def __contains__(self, name: object) -> bool:
        return dict.__contains__(self, name) or name in self.environ

    def __missing__(self, name: str) -> str:
        return self.environ[name]


def run_context(
    run_id: str, env: Mapping[str, str], environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The variables of every phase: ``env`` (falling back on ``environ``) and ``run``."""
    return {"env": EnvironmentValues(env, environ or {}), "run": {"id": run_id}}


def item_context(
    base: Mapping[str, Any], *, item: Any, item_id: str, index: int, total: int, attempt: int
) -> dict[str, Any]:
    """An item's variables over the run's (``base``: the run's context and its captures)."""
    return {
        **base,
        "item": item,
        "item_id": item_id,
        "item_index": index,
        "item_total": total,
        "attempt": attempt,
    }


def last_step(
    context: dict[str, Any],
    output: str,
    exit_code: int | None,
    *,
    stderr: str = "",
    kind: str = "",
) -> None:
    """``${last.*}`` after a step, for the steps that follow it; ``${shell.*}`` after a
    ``run`` step (``kind`` ``shell``), ``${claude.*}`` after a ``claude`` step (no
    ``kind``: ``${last.*}`` only, as after a validation step)."""
    context["last"] = {"output": output, "stderr": stderr, "exit_code": exit_code}
    if kind == "shell":
        context["shell"] = context["last"]
    elif kind == "claude":
        context["claude"] = {"output": output, "exit_code": exit_code}


def docs_table() -> str:
    """The variables table of ``docs/workflow.md``."""
    rows = [f"| {v.shown} | {v.where} | {v.value} |" for v in VARIABLES]
    rows.insert(-1, "| `${NAME}` | after a `capture_output: NAME` step | the captured output |")
    return "\n".join(["| variable | where | value |", "|---|---|---|", *rows]) + "\n"
