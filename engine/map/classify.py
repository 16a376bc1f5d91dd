"""Error classification and failure signatures.

An attempt's error type comes from what the engine saw (timeout, hung,
interrupted), then from the workflow's ``classify`` rules and the built-in
rules applied to the end of stderr and stdout, then from the exit code or
signal. The signature is the SHA-256 of the error type and the error text
after normalising what varies between occurrences (numbers, hex ids, paths,
timestamps, quoted values), so one cause groups across items and runs.
"""

from __future__ import annotations

import functools
import hashlib
import re
import signal as _signal
from collections.abc import Sequence
from dataclasses import dataclass

from engine.workflow.patterns import Pattern, compile_pattern
from engine.workflow.spec import ClassifyRule

__all__ = ["BUILTIN_RULES", "Classification", "classify", "error_message", "signature"]

BUILTIN_RULES: tuple[tuple[str, str], ...] = (
    (
        r"rate.?limit|too many requests|\b429\b|quota exceeded|throttl|usage limit|"
        r"(?:limit reached|hit your limit).{0,80}\breset|\bretry-after\b",
        "rate_limited",
    ),
    (
        r"\b50[0234]\b|overloaded|service unavailable|bad gateway|internal server error|"
        r"api error|connection (reset|refused)|ECONNRESET|timed? ?out waiting for (the )?api",
        "api_error",
    ),
    (
        r"out of memory|MemoryError|ENOMEM|cannot allocate memory|no space left on device|"
        r"ENOSPC|disk quota exceeded|too many open files",
        "resource_exhausted",
    ),
    (r"merge conflict|CONFLICT \(content\)|automatic merge failed", "merge_conflict"),
    (r"validation (error|failed)|invalid (input|schema)|schema validation", "validation_failed"),
)
"""Built-in (pattern, error type) rules, tried after the workflow's own."""

_COMPILED = [(compile_pattern(p, ignore_case=True), t) for p, t in BUILTIN_RULES]


@functools.lru_cache(maxsize=256)
def _rule(pattern: str) -> Pattern:
    """A workflow's ``classify`` pattern, by RE2 (linear time; checked at validation)."""
    return compile_pattern(pattern, ignore_case=True)


@dataclass(frozen=True)
class Classification:
    error_type: str
    message: str
    signature: str


def error_message(stderr_tail: str, stdout_tail: str, fallback: str) -> str:
    """The most telling line: the last non-empty stderr line, else stdout's."""
    for text in (stderr_tail, stdout_tail):
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if lines:
            return lines[-1][:500]
    return fallback


_NORMALISE: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:?\d\d)?"), "<ts>"),
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.I), "<id>"),
    (re.compile(r"\b(0x)?[0-9a-f]{7,}\b", re.I), "<hex>"),
    (re.compile(r"(?:[A-Za-z]:)?(?:[~.]?/[\w.\-@+]+)+/?"), "<path>"),
    (re.compile(r"'[^']*'|\"[^\"]*\""), "<str>"),
    (re.compile(r"\d+(\.\d+)?"), "<n>"),
    (re.compile(r"\s+"), " "),
)


def normalise(text: str) -> str:
    for pattern, replacement in _NORMALISE:
        text = pattern.sub(replacement, text)
    return text.strip().lower()


def signature(error_type: str, message: str) -> str:
    """``sha256`` hex of the error type and the normalised message."""
    return hashlib.sha256(f"{error_type}\n{normalise(message)}".encode()).hexdigest()


def classify(
    *,
    exit_code: int | None,
    signal: int | None,
    stderr_tail: str,
    stdout_tail: str,
    timed_out: bool = False,
    hung: bool = False,
    interrupted: bool = False,
    rules: Sequence[ClassifyRule] = (),
) -> Classification:
    """The error type, message and signature of a failed attempt."""
    message = error_message(stderr_tail, stdout_tail, "")
    error_type: str | None = None
    if interrupted:
        error_type, message = "interrupted", "interrupted by the engine stopping"
    elif timed_out:
        error_type, message = "timeout", message or "timed out"
        message = f"timed out: {message}" if message != "timed out" else message
    elif hung:
        error_type, message = "hung", "no output and no heartbeat for too long"
    else:
        haystack = f"{stderr_tail}\n{stdout_tail}"
        for rule in rules:
            if _rule(rule.pattern).search(haystack):
                error_type = rule.as_
                break
        if error_type is None:
            for pattern, kind in _COMPILED:
                if pattern.search(haystack):
                    error_type = kind
                    break
    if error_type is None:
        if signal is not None:
            name = _signal_name(signal)
            error_type = "resource_exhausted" if signal == _signal.SIGKILL else "command_failed"
            message = message or f"killed by {name}"
        elif exit_code is not None:
            error_type = "command_failed"
            message = message or f"exited with code {exit_code}"
        else:
            error_type = "unknown"
            message = message or "failed for an unknown reason"
    if not message:
        message = error_type.replace("_", " ")
    return Classification(error_type, message, signature(error_type, message))


def _signal_name(number: int) -> str:
    try:
        return _signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
