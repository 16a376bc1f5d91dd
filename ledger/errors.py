"""The one error tree of the project.

Every error the engine raises on purpose derives from :class:`EngineError`. It
lives in the lowest layer (``ledger``) so that every package can use it
without importing upward. Each error carries its data as attributes and
renders as one line: what went wrong, where, and how to fix it.
"""

from __future__ import annotations

__all__ = [
    "EngineError",
    "LedgerCorrupt",
    "LedgerError",
    "LedgerLocked",
    "LedgerWriteFailed",
    "RecordInvalid",
    "RecordTooLarge",
]


class EngineError(Exception):
    """Base class of every deliberate error; ``exit_code`` is the CLI's."""

    exit_code: int = 2
    located: bool = False
    """True when every line already starts with where (``FILE:LINE: ...``)."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message)

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


class LedgerError(EngineError):
    """Something is wrong with a ledger file or its writer."""


class LedgerCorrupt(LedgerError):
    """An invalid record is followed by valid ones, or the chain is broken.

    This is never a torn write: something changed the file after it was
    written. Nothing is repaired automatically.
    """

    exit_code = 1

    def __init__(self, path: str, *, seq: int, offset: int, reason: str) -> None:
        self.path = path
        self.seq = seq
        self.offset = offset
        self.reason = reason
        super().__init__(
            f"{path}: corrupt at seq {seq} (byte offset {offset}): {reason}",
            hint="the ledger was modified after it was written; keep a copy and "
            "inspect it with `engine audit verify`",
        )


class LedgerLocked(LedgerError):
    """Another live process holds the run's writer lock."""

    exit_code = 3

    def __init__(self, path: str, *, holder: dict[str, object] | None) -> None:
        self.path = path
        self.holder = holder or {}
        who = _describe_holder(self.holder)
        super().__init__(
            f"{path}: run is locked by {who}",
            hint="wait for it to finish, or stop that process; a dead holder releases "
            "the lock by itself",
        )


class LedgerWriteFailed(LedgerError):
    """A write or fsync failed; the writer is closed for good."""

    exit_code = 1


class RecordInvalid(LedgerError):
    """An event would not read back as itself (e.g. NaN, or a value of the wrong type)."""

    def __init__(self, *, event_type: str, reason: str) -> None:
        self.event_type = event_type
        self.reason = reason
        super().__init__(
            f"{event_type} record would not read back: {reason}",
            hint="this is a bug in whatever built the event; nothing was written",
        )


class RecordTooLarge(LedgerError):
    """An event encodes to more than the record size limit."""

    def __init__(self, *, event_type: str, size: int, limit: int) -> None:
        self.event_type = event_type
        self.size = size
        self.limit = limit
        super().__init__(
            f"{event_type} record is {size} bytes, over the {limit}-byte limit",
            hint="store large payloads as content-addressed files and reference them",
        )


def _describe_holder(holder: dict[str, object]) -> str:
    if not holder:
        return "another process (holder unknown)"
    pid = holder.get("pid", "?")
    host = holder.get("host", "?")
    started = holder.get("started_at")
    command = holder.get("command")
    text = f"pid {pid} on {host}" + (f" since {started}" if started else "")
    if command:
        text += f" ({command})"
    return text
