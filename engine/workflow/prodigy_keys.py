"""Every key of a Prodigy MapReduce workflow, and what the engine does with it.

One table, read by the translator (:mod:`engine.workflow.prodigy`: a key it
does not translate is warned of or refused with the note written here, never
dropped silently) and by ``docs/prodigy.md`` (a test compares its table with
:func:`docs_table`).

Treatments: ``same`` (read as Prodigy reads it), ``renamed`` (the same
meaning under the engine's name), ``warned`` (not supported: a warning says
what the engine does instead, and the run goes on), ``refused`` (its absence
would change the outcome: an error that says so).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["KEYS", "Key", "docs_table", "key_note"]

Treatment = Literal["same", "renamed", "warned", "refused"]


@dataclass(frozen=True)
class Key:
    where: str
    """The mapping it is a key of: ``top``, ``map``, ``step``, ``error_policy``, ..."""
    name: str
    treatment: Treatment
    engine: str
    """What the engine does with it (the engine's field, or what it does instead)."""


def _k(where: str, names: str, treatment: Treatment, engine: str) -> list[Key]:
    return [Key(where, name, treatment, engine) for name in names.split()]


_RETRIES = "map.retry (`retry_on`: every error type, as Prodigy retries every failure)"

KEYS: tuple[Key, ...] = (
    *_k("top", "name", "same", "name"),
    *_k("top", "mode", "same", "`mapreduce` selects this dialect; any other mode is refused"),
    *_k("top", "description", "same", "kept in the file; shown nowhere"),
    *_k("top", "env", "same", "env (`${VAR}` and `$VAR` in commands and prompts)"),
    *_k("top", "secrets", "same", "secrets (from the environment; never recorded)"),
    *_k("top", "env_files", "same", "env_files"),
    *_k("top", "profiles", "same", "profiles, chosen with `--profile NAME`"),
    *_k("top", "setup", "same", "setup (`timeout`: phase_timeout.setup)"),
    *_k("top", "map", "same", "map"),
    *_k("top", "reduce", "same", "reduce"),
    *_k("top", "merge", "same", "merge (`timeout`: phase_timeout.merge)"),
    *_k("top", "error_policy", "same", "map.on_item_failure, max_failures, circuit_breaker, ..."),
    *_k(
        "top",
        "on_item_failure continue_on_failure max_failures failure_threshold error_collection",
        "same",
        "as in error_policy (these override it)",
    ),
    *_k("setup", "commands", "same", "the setup steps"),
    *_k("setup", "timeout", "renamed", "phase_timeout.setup (seconds, or `$VAR`)"),
    *_k("setup", "capture_outputs", "renamed", "capture_output on the step it names"),
    *_k("merge", "commands", "same", "the merge steps"),
    *_k("merge", "timeout", "renamed", "phase_timeout.merge"),
    *_k("reduce", "commands", "same", "the reduce steps"),
    *_k("map", "input", "same", "map.input, run as a command when no such file exists"),
    *_k("map", "json_path filter sort_by distinct max_items offset", "same", "the same key"),
    *_k("map", "max_parallel", "same", "map.max_parallel (default 10; `$VAR` from env)"),
    *_k("map", "agent_template", "same", "map.agent_template"),
    *_k("map", "agent_timeout_secs", "renamed", "map.timeout (all of an item's steps)"),
    *_k("map", "timeout_config", "same", "see timeout_config"),
    *_k(
        "map",
        "timeout_per_agent retry_on_failure",
        "warned",
        "not applied: Prodigy no longer reads these keys (agent_timeout_secs, "
        "error_policy.retry_config)",
    ),
    *_k("timeout_config", "agent_timeout_secs", "renamed", "map.timeout"),
    *_k("timeout_config", "command_timeouts", "renamed", "the timeout of each step of that kind"),
    *_k("timeout_config", "timeout_policy", "same", "PerAgent: map.timeout; PerCommand: per step"),
    *_k(
        "timeout_config",
        "cleanup_grace_period_secs",
        "warned",
        "not applied: a timed-out step gets SIGTERM, then SIGKILL after the engine's grace",
    ),
    *_k(
        "timeout_config",
        "timeout_action",
        "warned",
        "not applied: a timeout fails the attempt, which goes where on_item_failure says",
    ),
    *_k("timeout_config", "enable_monitoring", "warned", "not applied: timeouts are always on"),
    *_k(
        "error_policy",
        "on_item_failure",
        "renamed",
        "dlq: dlq; skip: ignore; stop: fail; "
        "retry: retry_config, then dlq; custom: ignore (as Prodigy, with a warning)",
    ),
    *_k("error_policy", "continue_on_failure", "renamed", "false: map.max_failures 1"),
    *_k("error_policy", "max_failures failure_threshold error_collection", "same", "map.*"),
    *_k("error_policy", "circuit_breaker", "renamed", "circuit_breaker (every error type)"),
    *_k("error_policy", "retry_config", "renamed", _RETRIES),
    *_k("circuit_breaker", "failure_threshold", "renamed", "circuit_breaker.threshold"),
    *_k("circuit_breaker", "timeout", "renamed", "circuit_breaker.cooldown"),
    *_k("circuit_breaker", "success_threshold half_open_requests", "same", "the same key"),
    *_k("retry_config", "max_attempts backoff jitter jitter_factor", "same", "map.retry.*"),
    *_k("retry_config", "max_delay", "renamed", "map.retry.max"),
    *_k("step", "shell", "renamed", "run"),
    *_k("step", "claude", "same", "claude (`claude --print --dangerously-skip-permissions`)"),
    *_k("step", "write_file", "same", "write_file (inside the workspace only)"),
    *_k("step", "test", "renamed", "run, with its on_failure"),
    *_k("step", "name timeout commit_required env", "same", "the same key"),
    *_k("step", "working_dir", "renamed", "cwd"),
    *_k("step", "capture", "renamed", "capture_output"),
    *_k("step", "capture_output", "same", "true: ${shell.output}/${claude.output}; a name"),
    *_k("step", "capture_format", "same", "capture_format"),
    *_k("step", "on_failure", "same", "on_failure (steps, rerun, recover)"),
    *_k("step", "on_success", "renamed", "a step after it whose failure is ignored"),
    *_k("step", "retry max_attempts", "renamed", "retry (in place)"),
    *_k("step", "validate", "same", "validate"),
    *_k(
        "step",
        "capture_streams",
        "warned",
        "stdout is captured; the step's stderr is ${shell.stderr}",
    ),
    *_k("step", "id", "warned", "not used: name a capture with `capture`"),
    *_k(
        "step",
        "auto_commit commit_config",
        "warned",
        "not applied: what an attempt leaves uncommitted is committed by the engine",
    ),
    *_k(
        "step",
        "step_validate skip_validation validation_timeout ignore_validation_failure",
        "warned",
        "not applied: use validate",
    ),
    *_k("step", "context", "warned", "not applied: Prodigy no longer reads it"),
    *_k(
        "step",
        "goal_seek foreach handler analyze",
        "refused",
        "this kind of step is not supported: write it as shell or claude steps",
    ),
    *_k(
        "step",
        "when",
        "refused",
        "conditional steps are not supported: test the condition in a shell step",
    ),
    *_k(
        "step",
        "on_exit_code",
        "refused",
        "not supported: test the exit code in a shell step (`cmd || case $? in ...`)",
    ),
    *_k(
        "step",
        "output_file",
        "refused",
        "not supported: redirect in the command (`cmd > FILE`)",
    ),
    *_k("on_failure", "shell claude commands", "same", "on_failure.steps"),
    *_k("on_failure", "max_attempts max_retries", "renamed", "on_failure.rerun (default 1)"),
    *_k("on_failure", "fail_workflow", "renamed", "on_failure.recover (its opposite)"),
    *_k("on_failure", "commit_required timeout", "same", "the handler step's key"),
    *_k("on_failure", "retry_original", "warned", "not applied: max_attempts re-runs it"),
    *_k(
        "on_failure",
        "handler_failure_fatal",
        "warned",
        "not applied: a handler that fails fails the step (recover needs it to succeed)",
    ),
    *_k("on_failure", "strategy", "warned", "not applied: the handlers run in order, once"),
    *_k("on_failure", "capture continue_on_error", "warned", "not applied in a handler"),
    *_k("on_failure", "on_failure", "warned", "not applied: a handler has no handlers"),
    *_k("validate", "shell claude commands command", "same", "validate.steps"),
    *_k("validate", "result_file threshold timeout on_incomplete", "same", "the same key"),
    *_k("validate", "expected_schema", "warned", "not applied: the result is read as JSON"),
    *_k("on_incomplete", "shell claude commands", "same", "on_incomplete.steps"),
    *_k("on_incomplete", "max_attempts", "same", "repairs at most (default 2)"),
    *_k("on_incomplete", "fail_workflow", "renamed", "on_incomplete.fail"),
    *_k("on_incomplete", "commit_required", "same", "on the repair steps"),
    *_k("on_incomplete", "prompt", "refused", "not supported: give the repair as claude"),
    *_k("step.retry", "attempts", "renamed", "retry.max_attempts"),
    *_k("step.retry", "backoff jitter jitter_factor", "same", "retry.*"),
    *_k("step.retry", "initial_delay", "renamed", "retry.initial"),
    *_k("step.retry", "max_delay", "renamed", "retry.max"),
    *_k("step.retry", "retry_on", "renamed", "retry.retry_on (error types)"),
    *_k(
        "step.retry",
        "retry_budget on_failure",
        "warned",
        "not applied: the attempts and their delays bound the retries",
    ),
)
"""Every key, by the mapping it is found in."""

_BY_PLACE = {(k.where, k.name): k for k in KEYS}


def key_note(where: str, name: str) -> Key | None:
    """The table's entry for key ``name`` of a ``where`` mapping."""
    return _BY_PLACE.get((where, name))


def docs_table() -> str:
    """The keys table of ``docs/prodigy.md``."""
    rows = [f"| `{k.where}` | `{k.name}` | {k.treatment} | {k.engine} |" for k in KEYS]
    header = ["| in | key | treatment | what the engine does |", "|---|---|---|---|"]
    return "\n".join([*header, *rows]) + "\n"
