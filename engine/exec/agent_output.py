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
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engine.exec.agent_stream import spent_usd
from engine.exec.program import StepResult
from engine.map.classify import BUILTIN_RULES
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

_USAGE_LIMIT = re.compile(
    next(pattern for pattern, kind in BUILTIN_RULES if kind == "rate_limited"), re.IGNORECASE
)
"""An error result that says a usage limit (a rate limit) is ``rate_limited``, as the
built-in rules say of a failure's output."""


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


TOKEN_KINDS = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
)
"""The token counts a ``usage`` object reports, as :class:`AgentUsage` names them."""


MAX_COUNT = (1 << 63) - 1
"""The largest token or turn count recorded (a larger one is read as 0)."""


def _count(value: Any) -> int:
    """A count as the agent reports it: a whole number >= 0, else 0 (nothing)."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        return 0
    return value if 0 <= value <= MAX_COUNT else 0


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _tokens(found: Any) -> dict[str, int]:
    """The four token counts of a ``usage`` object (0 each where absent or not a count)."""
    tokens: dict[str, Any] = found if isinstance(found, dict) else {}
    return {kind: _count(tokens.get(kind)) for kind in TOKEN_KINDS}


def _envelope(data: dict[str, Any], seen: _Events) -> Envelope:
    result = data.get("result")
    return Envelope(
        result=result if isinstance(result, str) else "" if result is None else json.dumps(result),
        is_error=data.get("is_error") is True,
        subtype=str(data.get("subtype") or "success"),
        usage=AgentUsage(
            calls=1,
            cost_usd=spent_usd(data.get("total_cost_usd")),
            **_tokens(data.get("usage")),
            turns=_count(data.get("num_turns")) or seen.turns,
            session_id=_text(data.get("session_id")) or seen.session_id,
            model=_text(data.get("model")) or seen.model,
        ),
    )


@dataclass
class _Events:
    """What the events before a result said: turns, session, model, tokens by message."""

    events: int = 0
    turns: int = 0
    session_id: str | None = None
    model: str | None = None
    tokens: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    """Each assistant message's token counts, by its id (Claude repeats a message's usage
    on each of its content blocks' events: counted once)."""

    def read(self, data: dict[str, Any]) -> None:
        kind = data.get("type")
        if kind not in ("system", "assistant"):
            return
        self.events += 1
        self.session_id = _text(data.get("session_id")) or self.session_id
        self.model = _text(data.get("model")) or self.model
        if kind != "assistant":
            return
        self.turns += 1
        message = data.get("message")
        if isinstance(message, dict):
            self.model = _text(message.get("model")) or self.model
            if isinstance(message.get("usage"), dict):
                key = _text(message.get("id")) or f"#{self.turns}"
                self.tokens[key] = _tokens(message["usage"])

    @property
    def usage(self) -> AgentUsage | None:
        """What a call spent as far as its events tell (no result: no cost); None
        without an event."""
        if not self.events:
            return None
        return AgentUsage(
            calls=1,
            **{kind: sum(t[kind] for t in self.tokens.values()) for kind in TOKEN_KINDS},
            turns=self.turns,
            session_id=self.session_id,
            model=self.model,
        )


def _read(stdout: bytes) -> tuple[Envelope | None, _Events]:
    """The last ``type: result`` object of what the agent printed (one object, or one a
    line), and what the events before it said."""
    text = stdout.decode("utf-8", "replace")
    found: Envelope | None = None
    seen = _Events()
    for line in text.strip().splitlines() or [text]:
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if not isinstance(data, dict):
            continue
        if data.get("type") == "result":
            found = _envelope(data, seen)
        else:
            seen.read(data)
    if found is None and text.strip().startswith("{"):
        try:
            whole = json.loads(text)
        except ValueError:
            return None, seen
        if isinstance(whole, dict) and whole.get("type") == "result":
            found = _envelope(whole, seen)
    return found, seen


def read_envelope(stdout: bytes) -> Envelope | None:
    """The last ``type: result`` object of what the agent printed (one object, or one a
    line); None when there is none."""
    return _read(stdout)[0]


def read_run(
    result: StepResult, stdout: bytes, *, stream: bool = False
) -> tuple[dict[str, Any], AgentUsage | None]:
    """How a ``claude:`` step's run is to be recorded: the fields of its
    :class:`~engine.exec.program.StepResult` to replace, and what it spent.

    ``stream``: the agent printed stream-json; a run with no result (timed out, killed,
    crashed) then spent what its events say (its session, model, turns and tokens; no
    cost, which only a result reports). Otherwise a run without a result spent nothing
    known (None).
    """
    envelope, seen = _read(stdout)
    if envelope is None:
        spent = seen.usage if stream else None
        if result.ok:
            return {
                "error": "the agent printed no Claude result (agent.output expects one)",
                "error_type": "validation_failed",
            }, spent
        return {}, spent
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
