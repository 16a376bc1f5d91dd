"""The error types an attempt's failure is classified as, apart from the spec's models.

The read side (``engine status``, ``engine dlq``) needs the names only: it
imports them from here, without pydantic; :mod:`engine.workflow.spec` re-exports
them for the workflow's fields.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["ERROR_TYPES", "RETRIED_BY_DEFAULT", "TRANSIENT_ERROR_TYPES", "ErrorType"]

ErrorType = Literal[
    "timeout",
    "hung",
    "rate_limited",
    "api_error",
    "resource_exhausted",
    "worker_lost",
    "interrupted",
    "command_failed",
    "validation_failed",
    "merge_conflict",
    "unknown",
]
ERROR_TYPES: tuple[str, ...] = ErrorType.__args__  # type: ignore[attr-defined]
TRANSIENT_ERROR_TYPES: tuple[ErrorType, ...] = (
    "timeout",
    "hung",
    "rate_limited",
    "api_error",
    "resource_exhausted",
    "worker_lost",
    "interrupted",
)
"""Error types that are passing trouble: retried by default."""
RETRIED_BY_DEFAULT: tuple[ErrorType, ...] = (*TRANSIENT_ERROR_TYPES, "merge_conflict")
"""Error types ``retry.retry_on`` lists by default: the transient ones, and a merge
conflict (the retry forks from the run branch's newer head, which usually resolves it)."""
