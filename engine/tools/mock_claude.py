"""The mock agent's Claude Code side: ``--output-format json`` and ``stream-json``.

``engine mock-agent --output-format json`` prints one result envelope, as
``claude -p --output-format json`` does; ``--output-format stream-json``
prints an ``init`` line, one ``assistant`` line per turn and the same
envelope last, one JSON object a line, flushed, as ``claude -p
--output-format stream-json --verbose`` does. The figures (cost, tokens,
turns, session, model) are the behaviour's, exactly: :data:`BEHAVIOURS`
documents the keys, :data:`CHECKS` checks them, :func:`answer` prints.
"""

from __future__ import annotations

import datetime
import json
import math
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

__all__ = [
    "BEHAVIOURS",
    "CHECKS",
    "FORMATS",
    "TOKEN_KINDS",
    "USAGE_LIMIT_STYLES",
    "answer",
    "init_line",
    "result_text",
    "session_for",
    "spread",
    "usage_limit_message",
]

FORMATS = ("text", "json", "stream-json")
"""The values of ``--output-format`` (text: the mock's own plain output)."""

USAGE_LIMIT_STYLES = ("epoch", "resets", "retry_after")
"""The forms ``usage_limit`` says its reset in (``usage_limit_style``)."""

SUBTYPES = ("success", "error_max_turns", "error_max_budget_usd", "error_during_execution")
"""The result subtypes Claude Code prints."""

TOKEN_KINDS = {
    "input": "input_tokens",
    "output": "output_tokens",
    "cache_read": "cache_read_input_tokens",
    "cache_creation": "cache_creation_input_tokens",
}
"""The ``tokens`` keys, and the ``usage`` field each one is printed as."""

MAX_TURNS = 10000
"""The most turns a behaviour may script."""

DEFAULT_MODEL = "claude-mock-1"

TOOLS = ["Bash", "Edit", "Glob", "Grep", "Read", "Write"]
"""The tools the ``init`` line lists."""

BEHAVIOURS: dict[str, str] = {
    "cost": "USD, a number >= 0: the total_cost_usd of the json/stream-json result",
    "tokens": "{input: N, output: N, cache_read: N, cache_creation: N} (any of them,"
    " whole numbers >= 0): the result's usage (default 0 each)",
    "turns": f"N, 1 to {MAX_TURNS}: num_turns; stream-json prints one assistant line per turn"
    " (the tokens spread over them, summing exactly)",
    "turn_delay": "SECONDS, 0 to 86400: stream-json waits this long between turns (default 0)",
    "session": "TEXT: the session_id (default the resumed session, else an id made of the"
    " item and attempt)",
    "model": f"TEXT: the model (default {DEFAULT_MODEL})",
    "is_error": "true (or false): is_error of the result (default true with fail or"
    " usage_limit); exit 1 when true (or `exit`)",
    "subtype": f"{' | '.join(SUBTYPES)}: the result's subtype (default success)",
    "usage_limit": "SECONDS, 0 to 86400: answer Claude's 'Claude AI usage limit reached|EPOCH'"
    " (EPOCH: now + SECONDS, rounded up) and exit 1",
    "usage_limit_style": f"{' | '.join(USAGE_LIMIT_STYLES)}: how usage_limit says its reset:"
    " epoch (the default, as above); resets: 'Claude usage limit reached. Your limit will"
    " reset at H:MM:SSpm (UTC).'; retry_after: an HTTP 429 error with 'retry-after: SECONDS'"
    " (on stderr in text format)",
    "fenced": "true (or false): give a `json` value in a ```json fenced block",
}
"""The behaviour keys of Claude's output formats, with what each does (for the help)."""


def _whole(value: Any, low: int, high: float = math.inf) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _seconds(value: Any) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    return 0 <= value <= 86400


def _cost(value: Any) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    return math.isfinite(value) and value >= 0


def _tokens(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    return all(key in TOKEN_KINDS and _whole(count, 0) for key, count in value.items())


def _name(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""


def _bool(value: Any) -> bool:
    return isinstance(value, bool)


CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "cost": (_cost, "a number of US dollars >= 0"),
    "tokens": (
        _tokens,
        "a mapping of input, output, cache_read, cache_creation to whole numbers >= 0",
    ),
    "turns": (lambda v: _whole(v, 1, MAX_TURNS), f"a whole number from 1 to {MAX_TURNS}"),
    "turn_delay": (_seconds, "a number of seconds from 0 to 86400"),
    "session": (_name, "a non-empty text"),
    "model": (_name, "a non-empty text"),
    "is_error": (_bool, "true or false"),
    "subtype": (lambda v: v in SUBTYPES, f"one of {', '.join(SUBTYPES)}"),
    "usage_limit": (_seconds, "a number of seconds from 0 to 86400"),
    "usage_limit_style": (
        lambda v: v in USAGE_LIMIT_STYLES,
        f"one of {', '.join(USAGE_LIMIT_STYLES)}",
    ),
    "fenced": (_bool, "true or false"),
}
"""Every key of :data:`BEHAVIOURS`: what fits its value, and what that is in words."""


def session_for(item: str, attempt: int) -> str:
    """The stable session id of ``item`` at ``attempt`` (a UUID, as Claude's are)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"mock-{item}-{attempt}"))


def usage_limit_message(seconds: float, now: float | None = None, style: str = "epoch") -> str:
    """A usage-limit message in ``style``, its reset ``seconds`` from ``now`` (rounded up to
    a whole second)."""
    reset = math.ceil((time.time() if now is None else now) + seconds)
    if style == "resets":
        wall = datetime.datetime.fromtimestamp(reset, datetime.UTC)
        hour = wall.hour % 12 or 12
        at = f"{hour}:{wall:%M:%S}{'am' if wall.hour < 12 else 'pm'}"
        return f"Claude usage limit reached. Your limit will reset at {at} (UTC)."
    if style == "retry_after":
        wait = math.ceil(seconds)
        return f"API Error: 429 Too Many Requests (rate_limit_error)\nretry-after: {wait}"
    return f"Claude AI usage limit reached|{reset}"


def result_text(behavior: dict[str, Any], item: str, attempt: int) -> str:
    """The text a behaviour answers: what `ok` prints, a `json` value, the failure, the limit."""
    if "usage_limit" in behavior:
        style = str(behavior.get("usage_limit_style", "epoch"))
        return usage_limit_message(float(behavior["usage_limit"]), style=style)
    if "fail" in behavior:
        return str(behavior["fail"])
    if "json" in behavior:
        text = json.dumps(behavior["json"])
        return f"```json\n{text}\n```" if behavior.get("fenced") else text
    text = str(behavior.get("ok", "done"))
    return text.replace("{item}", item).replace("{attempt}", str(attempt))


def spread(total: int, turns: int) -> list[int]:
    """``total`` split over ``turns`` whole parts summing exactly to it (the first ones larger)."""
    base, extra = divmod(total, turns)
    return [base + (1 if n < extra else 0) for n in range(turns)]


def _usage(counts: dict[str, int]) -> dict[str, int]:
    return {field: counts.get(kind, 0) for kind, field in TOKEN_KINDS.items()}


def _say(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def init_line(behavior: dict[str, Any], session: str, cwd: str) -> None:
    """Print stream-json's first line, the ``system``/``init`` event."""
    _say(
        {
            "type": "system",
            "subtype": "init",
            "cwd": cwd,
            "session_id": session,
            "tools": TOOLS,
            "model": str(behavior.get("model", DEFAULT_MODEL)),
            "permissionMode": "default",
        }
    )


def _turns(behavior: dict[str, Any], session: str, text: str) -> None:
    """Print stream-json's ``assistant`` lines: tool uses, then the answer, tokens spread."""
    turns = int(behavior.get("turns", 1))
    tokens = behavior.get("tokens") or {}
    parts = {kind: spread(int(tokens.get(kind, 0)), turns) for kind in TOKEN_KINDS}
    delay = float(behavior.get("turn_delay", 0))
    for n in range(turns):
        if n and delay:
            time.sleep(delay)
        last = n == turns - 1
        block: dict[str, Any] = (
            {"type": "text", "text": text}
            if last
            else {
                "type": "tool_use",
                "id": f"toolu_mock_{n + 1}",
                "name": "Bash",
                "input": {"command": f"echo turn {n + 1}"},
            }
        )
        message = {
            "id": f"msg_mock_{n + 1}",
            "type": "message",
            "role": "assistant",
            "model": str(behavior.get("model", DEFAULT_MODEL)),
            "content": [block],
            "usage": _usage({kind: parts[kind][n] for kind in TOKEN_KINDS}),
        }
        _say({"type": "assistant", "session_id": session, "message": message})


def answer(
    behavior: dict[str, Any],
    *,
    output_format: str,
    text: str,
    session: str,
    started: float,
) -> int:
    """Print the answer ``text`` in a Claude format (json or stream-json); the exit code."""
    is_error = bool(behavior.get("is_error", "fail" in behavior or "usage_limit" in behavior))
    if output_format == "stream-json":
        _turns(behavior, session, text)
    elapsed = int((time.monotonic() - started) * 1000)
    _say(
        {
            "type": "result",
            "subtype": str(behavior.get("subtype", "success")),
            "is_error": is_error,
            "duration_ms": elapsed,
            "duration_api_ms": elapsed,
            "num_turns": int(behavior.get("turns", 1)),
            "result": text,
            "session_id": session,
            "total_cost_usd": float(behavior.get("cost", 0)),
            "usage": _usage(behavior.get("tokens") or {}),
            "model": str(behavior.get("model", DEFAULT_MODEL)),
        }
    )
    return int(behavior.get("exit", 1 if is_error else 0))
