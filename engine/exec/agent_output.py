"""What a Claude Code agent answers, read: its result, its error, what it spent.

With ``agent.output: claude-json`` the agent prints one result envelope
(``claude -p --output-format json``); with ``claude-stream-json`` one event a
line, the envelope last (``--output-format stream-json --verbose``). A
``claude:`` step's run is then read here, whatever executor ran it: the
envelope's ``result`` becomes what the step printed (its captures, its
``${claude.output}``, the item's result), ``is_error`` or an error
``subtype`` fails the step (even with exit code 0), and its cost, tokens,
turns, session and model are added to the attempt's :class:`AgentUsage`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engine.exec.program import StepResult
from ledger.payloads_steps import AgentUsage

__all__ = [
    "OUTPUT_FLAGS",
    "Envelope",
    "agent_command",
    "read_envelope",
    "read_run",
    "replaced",
    "used",
]

OUTPUT_FLAGS: dict[str, tuple[str, ...]] = {
    "text": (),
    "claude-json": ("--output-format", "json"),
    "claude-stream-json": ("--output-format", "stream-json", "--verbose"),
}
"""What the agent's command line gets for each ``agent.output``."""

ERROR_SUBTYPES = {
    "error_max_turns": "resource_exhausted",
    "error_max_budget_usd": "resource_exhausted",
    "error_during_execution": "api_error",
}
"""Claude's error subtypes, as the engine's error types."""

_USAGE_LIMIT = re.compile(r"usage limit reached|rate.?limit|\b429\b", re.IGNORECASE)


def agent_command(words: Sequence[str], output: str) -> list[str]:
    """The agent's command line with the flags its output format needs (unless given)."""
    if "--output-format" in words:
        return list(words)
    return [*words, *OUTPUT_FLAGS[output]]


@dataclass(frozen=True)
class Envelope:
    """Claude Code's result, as its ``type: result`` object says."""

    result: str
    is_error: bool
    subtype: str
    usage: AgentUsage


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _envelope(data: dict[str, Any], turns: int, model: str | None) -> Envelope:
    found = data.get("usage")
    tokens: dict[str, Any] = found if isinstance(found, dict) else {}
    cost = data.get("total_cost_usd")
    result = data.get("result")
    return Envelope(
        result=result if isinstance(result, str) else "" if result is None else json.dumps(result),
        is_error=data.get("is_error") is True,
        subtype=str(data.get("subtype") or "success"),
        usage=AgentUsage(
            calls=1,
            cost_usd=float(cost) if isinstance(cost, int | float) and cost >= 0 else 0.0,
            input_tokens=_count(tokens.get("input_tokens")),
            output_tokens=_count(tokens.get("output_tokens")),
            cache_read_input_tokens=_count(tokens.get("cache_read_input_tokens")),
            cache_creation_input_tokens=_count(tokens.get("cache_creation_input_tokens")),
            turns=_count(data.get("num_turns")) or turns,
            session_id=data.get("session_id") if isinstance(data.get("session_id"), str) else None,
            model=data.get("model") if isinstance(data.get("model"), str) else model,
        ),
    )


def read_envelope(stdout: bytes) -> Envelope | None:
    """The last ``type: result`` object of what the agent printed (one object, or one a
    line); None when there is none."""
    text = stdout.decode("utf-8", "replace")
    found: Envelope | None = None
    turns, model = 0, None
    for line in text.strip().splitlines() or [text]:
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if not isinstance(data, dict):
            continue
        kind = data.get("type")
        if kind == "assistant":
            turns += 1
            message = data.get("message")
            if isinstance(message, dict) and isinstance(message.get("model"), str):
                model = message["model"]
        elif kind == "system" and isinstance(data.get("model"), str):
            model = data["model"]
        elif kind == "result":
            found = _envelope(data, turns, model)
    if found is None and text.strip().startswith("{"):
        try:
            whole = json.loads(text)
        except ValueError:
            return None
        if isinstance(whole, dict) and whole.get("type") == "result":
            found = _envelope(whole, turns, model)
    return found


def read_run(result: StepResult, stdout: bytes) -> tuple[dict[str, Any], AgentUsage | None]:
    """How a ``claude:`` step's run is to be recorded: the fields of its
    :class:`~engine.exec.program.StepResult` to replace, and what it spent."""
    envelope = read_envelope(stdout)
    if envelope is None:
        if result.ok:
            return {
                "error": "the agent printed no Claude result (agent.output expects one)",
                "error_type": "validation_failed",
            }, None
        return {}, None
    fields: dict[str, Any] = {"stdout": envelope.result.encode()}
    if envelope.is_error or envelope.subtype.startswith("error"):
        kind = ERROR_SUBTYPES.get(envelope.subtype, "api_error")
        if _USAGE_LIMIT.search(envelope.result):
            kind = "rate_limited"
        fields["error"] = f"the agent failed ({envelope.subtype}): {envelope.result[:300]}"
        fields["error_type"] = kind
    return fields, envelope.usage


def used(total: AgentUsage | None, more: AgentUsage | None) -> AgentUsage | None:
    """Two usages summed (the session and model the later one's)."""
    if more is None:
        return total
    if total is None:
        return more
    return AgentUsage(
        calls=total.calls + more.calls,
        cost_usd=round(total.cost_usd + more.cost_usd, 10),
        input_tokens=total.input_tokens + more.input_tokens,
        output_tokens=total.output_tokens + more.output_tokens,
        cache_read_input_tokens=total.cache_read_input_tokens + more.cache_read_input_tokens,
        cache_creation_input_tokens=total.cache_creation_input_tokens
        + more.cache_creation_input_tokens,
        turns=total.turns + more.turns,
        session_id=more.session_id or total.session_id,
        model=more.model or total.model,
    )


def replaced(result: StepResult, fields: dict[str, Any]) -> StepResult:
    """``result`` with the fields :func:`read_run` says."""
    return dataclasses.replace(result, **fields) if fields else result
