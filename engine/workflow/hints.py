"""The spellings other tools use for what a workflow here calls otherwise.

An unknown key is an error; when it is a key that users bring from another
tool (Prodigy's ``agent_timeout_secs``, GitHub Actions' ``working-directory``,
a ``capture:``), its hint names the field to write instead. Those spellings
are never read as ours: only the hint knows them.
"""

from __future__ import annotations

__all__ = ["FOREIGN_KEYS", "foreign_hint"]

_ANY = "*"
"""Wherever the key is."""

FOREIGN_KEYS: dict[str, dict[str, tuple[str, str]]] = {
    "agent_timeout_secs": {
        _ANY: ("map.timeout", "a duration for all of an item's steps, e.g. 10m")
    },
    "timeout_config": {_ANY: ("map.timeout", "a duration, e.g. 10m; a step has its own timeout")},
    "timeout_secs": {_ANY: ("timeout", "a duration, e.g. 600 or 10m")},
    "timeout_seconds": {_ANY: ("timeout", "a duration, e.g. 600 or 10m")},
    "working_dir": {_ANY: ("cwd", "a step's working directory, relative to the workflow file")},
    "working_directory": {_ANY: ("cwd", "a step's working directory")},
    "working-directory": {_ANY: ("cwd", "a step's working directory")},
    "workdir": {_ANY: ("cwd", "a step's working directory")},
    "capture": {_ANY: ("capture_output", "the name of the variable that keeps the stdout")},
    "capture_streams": {_ANY: ("capture_output", "it keeps stdout; redirect stderr with 2>&1")},
    "command": {"Step": ("run", "a shell command; argv for a program and its arguments")},
    "cmd": {"Step": ("run", "a shell command"), _ANY: ("map.command", "its stdout lists items")},
    "script": {"Step": ("run", "a shell command")},
    "args": {"Step": ("argv", "the program and its arguments, without a shell")},
    "on_error": {_ANY: ("on_failure", "steps run when a step fails")},
    "on_fail": {_ANY: ("on_failure", "steps run when a step fails")},
    "max_concurrency": {_ANY: ("map.max_parallel", "attempts at once")},
    "concurrency": {_ANY: ("map.max_parallel", "attempts at once")},
    "parallelism": {_ANY: ("map.max_parallel", "attempts at once")},
    "parallel": {_ANY: ("map.max_parallel", "attempts at once")},
    "max_retries": {_ANY: ("map.retry.max_attempts", "attempts in all, the first included")},
    "retries": {_ANY: ("map.retry.max_attempts", "attempts in all, the first included")},
    "retry_config": {_ANY: ("map.retry", "max_attempts, backoff, initial, max, jitter")},
    "max_attempts": {"MapSpec": ("retry.max_attempts", "it belongs in map.retry")},
    "backoff": {"MapSpec": ("retry.backoff", "it belongs in map.retry")},
    "error_policy": {_ANY: ("map.on_item_failure", "with map.max_failures, failure_threshold")},
    "continue_on_failure": {_ANY: ("map.on_item_failure", "dlq, fail or ignore")},
    "environment": {_ANY: ("env", "variables for ${env.X} and the commands' environment")},
    "vars": {_ANY: ("env", "or engine run --var K=V")},
    "variables": {_ANY: ("env", "or engine run --var K=V")},
    "input_file": {_ANY: ("map.input", "a JSON or JSON Lines file of items")},
    "jsonpath": {_ANY: ("map.json_path", "e.g. $.files[*]")},
    "sort": {_ANY: ("map.sort_by", "e.g. item.priority DESC")},
    "order_by": {_ANY: ("map.sort_by", "e.g. item.priority DESC")},
    "limit": {_ANY: ("map.max_items", "applied after filter and sort")},
    "skip": {_ANY: ("map.offset", "applied after filter and sort")},
    "outputs": {"Step": ("artifacts", "files kept after success")},
    "steps": {
        "MapSpec": ("agent_template", "the steps of each item"),
        _ANY: ("setup", "or map.agent_template, or reduce"),
    },
    "template": {"MapSpec": ("agent_template", "the steps of each item")},
}
"""Other tools' keys: by the model they are found in (``*``: any), what to write instead."""


def foreign_hint(key: str, model: str | None, allowed: list[str]) -> str | None:
    """The hint for ``key`` found in ``model`` (its class name), or None when it is not known.

    ``allowed``: the keys of that model, so that a suggestion that is one is
    named as a key (``'cwd'``), and any other by its path (``map.timeout``).
    """
    by_model = FOREIGN_KEYS.get(key) or FOREIGN_KEYS.get(key.lower().replace("-", "_"))
    if by_model is None:
        return None
    found = by_model.get(model or "") or by_model.get(_ANY)
    if found is None:
        return None
    ours, note = found
    shown = repr(ours) if ours in allowed else ours
    return f"did you mean {shown}? {note}; other tools' spellings are not read"
