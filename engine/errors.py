"""Every error the engine raises on purpose, each with its data and its exit code.

The base, :class:`ledger.errors.EngineError`, and the ledger's own errors
live in ``ledger`` (the lowest layer, which cannot import upward). Each class
here names the CLI's exit code for its kind (2 bad input, 1 a failed or
unreadable run, 3 locked) and keeps what it is about as attributes (run id,
path, items), so a caller never parses a message. The CLI maps exit codes to
its error classes in one place (``cli/app.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ledger.errors import EngineError

if TYPE_CHECKING:
    from engine.workflow.load import Problem

__all__ = [
    "BadRunId",
    "IncompleteMap",
    "InputRefused",
    "IsolationError",
    "ItemsError",
    "NotConfirmed",
    "NotRunning",
    "NothingSelected",
    "ProfileUnknown",
    "QueryError",
    "ResumeRefused",
    "RunNotFound",
    "StoreMissing",
    "WorkflowError",
]


class WorkflowError(EngineError):
    """A workflow file is invalid; carries every problem found (each ``FILE:LINE: ...``)."""

    exit_code = 2
    located = True

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    def __str__(self) -> str:
        return self.message


class InputRefused(EngineError):
    """A file or an output is not something the engine reads: too large, or not a file."""

    exit_code = 2


class ItemsError(EngineError):
    """The map's items cannot be loaded, selected or identified."""

    exit_code = 2


class BadRunId(EngineError):
    """A run id that is not one safe path component."""

    exit_code = 2

    def __init__(self, message: str, *, run_id: str, hint: str | None = None) -> None:
        self.run_id = run_id
        super().__init__(message, hint=hint)


class RunNotFound(EngineError):
    """A ``RUN`` argument names no run."""

    exit_code = 2

    def __init__(self, message: str, *, ref: str, hint: str | None = None) -> None:
        self.ref = ref
        super().__init__(message, hint=hint)


class QueryError(EngineError):
    """Bad SQL, an unknown query name, or nothing to query."""

    exit_code = 2


class IsolationError(EngineError):
    """``map.isolation: worktree`` cannot work here: the workspace is not in a git
    repository, it has no commit, or the run's branch or repository is gone."""

    exit_code = 2

    def __init__(self, message: str, *, path: str, hint: str | None = None) -> None:
        self.path = path
        super().__init__(message, hint=hint)


class ResumeRefused(EngineError):
    """The run cannot be resumed as asked (completed, or its workflow changed)."""

    exit_code = 2

    def __init__(self, message: str, *, run_id: str, hint: str | None = None) -> None:
        self.run_id = run_id
        super().__init__(message, hint=hint)


class ProfileUnknown(EngineError):
    """``--profile NAME`` names no profile of the workflow's ``profiles``."""

    exit_code = 2

    def __init__(self, message: str, *, profile: str, known: Sequence[str]) -> None:
        self.profile = profile
        self.known = list(known)
        super().__init__(message)


class NotRunning(EngineError):
    """A control request (pause, cancel) for a run no engine is running."""

    exit_code = 2

    def __init__(self, message: str, *, run_id: str, status: str, hint: str | None = None) -> None:
        self.run_id = run_id
        self.status = status
        super().__init__(message, hint=hint)


class NothingSelected(EngineError):
    """A DLQ command named items that are not in the dead-letter queue."""

    exit_code = 2

    def __init__(self, message: str, *, items: Sequence[str], hint: str | None = None) -> None:
        self.items = list(items)
        super().__init__(message, hint=hint)


class NotConfirmed(EngineError):
    """The live engine did not record an answer to a control request in time."""

    exit_code = 1

    def __init__(
        self, message: str, *, run_id: str, waited: float, hint: str | None = None
    ) -> None:
        self.run_id = run_id
        self.waited = waited
        super().__init__(message, hint=hint)


class StoreMissing(EngineError):
    """A value the ledger references is missing from the content store."""

    exit_code = 1

    def __init__(self, message: str, *, ref: str, path: str, hint: str | None = None) -> None:
        self.ref = ref
        self.path = path
        super().__init__(message, hint=hint)


class IncompleteMap(EngineError):
    """The map ended with items neither done nor dead: the run cannot be completed."""

    exit_code = 1

    def __init__(self, unfinished: Mapping[str, list[str]]) -> None:
        self.unfinished = dict(unfinished)
        shown = "; ".join(
            f"{len(items)} {status} ({', '.join(items[:3])}{', ...' if len(items) > 3 else ''})"
            for status, items in self.unfinished.items()
        )
        super().__init__(
            f"the map ended with items still unfinished: {shown}",
            hint="this is an engine bug; resume the run to finish them",
        )
