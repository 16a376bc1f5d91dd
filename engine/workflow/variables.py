"""The template variables, declared once: which exist in which phase, and what each holds.

Validation (``engine validate``: an unknown ``${name}`` where it is used),
the contexts the engine builds for each phase, and the table in
``docs/workflow.md`` (a test compares them) all come from :data:`VARIABLES`.
A capture (``capture_output: NAME``) adds ``NAME`` for the steps after it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "PHASES",
    "VARIABLES",
    "Phase",
    "Variable",
    "docs_table",
    "item_context",
    "known_roots",
    "last_step",
    "run_context",
]

Phase = Literal["setup", "map.command", "map.id", "map", "reduce"]
PHASES: tuple[Phase, ...] = ("setup", "map.command", "map.id", "map", "reduce")
"""Where templates are rendered: setup, ``map.command``, ``map.id``, an item's steps, reduce."""

_STEPS: frozenset[Phase] = frozenset({"setup", "map", "reduce"})
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


VARIABLES: tuple[Variable, ...] = (
    Variable(
        "item",
        frozenset({"map", "map.id"}),
        "`${item}`, `${item.a.b}`",
        "map",
        "the item, or a field of it (non-strings as JSON)",
    ),
    Variable("item_id", frozenset({"map"}), "`${item_id}`", "map", "the item's identity"),
    Variable(
        "item_index",
        frozenset({"map", "map.id"}),
        "`${item_index}`",
        "map",
        "the item's position (0, 1, ...)",
    ),
    Variable("item_total", frozenset({"map"}), "`${item_total}`", "map", "the number of items"),
    Variable("attempt", frozenset({"map"}), "`${attempt}`", "map", "1, 2, ..."),
    Variable("env", _EVERYWHERE, "`${env.X}`", "everywhere", "from `env` and `--var`"),
    Variable(
        "last",
        _STEPS | {"map.command"},
        "`${last.output}`, `${last.exit_code}`",
        "after a step in the same item or phase",
        "the previous step's stdout and exit code",
    ),
    Variable(
        "shell",
        _STEPS | {"map.command"},
        "`${shell.output}`",
        "after a step in the same item or phase",
        "the same as `${last.output}`",
    ),
    Variable(
        "map",
        frozenset({"reduce"}),
        "`${map.total}`, `${map.successful}`, `${map.failed}`, `${map.success_rate}`, "
        "`${map.results}`, `${map.results_file}`",
        "reduce",
        "aggregates; the results as JSON (the file's path when over 64 KiB), and "
        "`results.json` in the run directory",
    ),
    Variable(
        "run",
        frozenset({"setup", "map.command", "map", "reduce"}),
        "`${run.id}`",
        "everywhere but `map.id`",
        "the run id",
    ),
)


def known_roots(phase: Phase, captures: set[str] | frozenset[str] = frozenset()) -> set[str]:
    """The variable roots a template of ``phase`` may use (captures only where steps run)."""
    roots = {v.root for v in VARIABLES if phase in v.phases}
    if phase in _STEPS or phase == "map.command":
        roots |= captures
    return roots


def run_context(run_id: str, env: Mapping[str, str]) -> dict[str, Any]:
    """The variables of every phase: ``env`` and ``run``."""
    return {"env": env, "run": {"id": run_id}}


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


def last_step(context: dict[str, Any], output: str, exit_code: int | None) -> None:
    """``${last.*}`` (and ``${shell.output}``) after a step, for the steps that follow it."""
    context["last"] = context["shell"] = {"output": output, "exit_code": exit_code}


def docs_table() -> str:
    """The variables table of ``docs/workflow.md``."""
    rows = [f"| {v.shown} | {v.where} | {v.value} |" for v in VARIABLES]
    rows.insert(-1, "| `${NAME}` | after a `capture_output: NAME` step | the captured output |")
    return "\n".join(["| variable | where | value |", "|---|---|---|", *rows]) + "\n"
