"""An attempt's stdout and stderr logs under the run directory, and their tails."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections import deque
from typing import Any

from engine.exec.program import OutputRedactor
from engine.store.logs import LOGS_DIR, partial_name
from ledger.atomic import FILE_MODE
from ledger.events import LogRef

__all__ = ["TAIL_BYTES", "TAIL_LINES", "Log"]

TAIL_LINES = 100
TAIL_BYTES = 64 * 1024


class Log:
    """One stream's log file: written as it comes, made durable at the end.

    Paths are plain strings: an attempt builds two of these, and most never
    see a byte (no output, no file). Secrets are masked before anything is
    written (``redactor``), the tail included.

    A write that fails (a full disk) is never raised to the pipe's reader
    callback, which would fail again at every chunk: the log stops there,
    keeps draining into its in-memory tail only, drops its file at the end,
    and ``error`` makes the attempt fail (``resource_exhausted``).
    """

    def __init__(self, directory: str, name: str, redactor: OutputRedactor | None = None) -> None:
        self.directory = directory
        self.name = name
        self.fd = -1  # opened at the first byte: no output, no file
        self.size = 0
        self.tail: deque[bytes] = deque()
        self.tail_size = 0
        self.digest: Any = None
        self.redactor = redactor
        self.error: OSError | None = None
        """The first failed write, open or sync; the file is abandoned after it."""

    @property
    def path(self) -> str:
        return f"{self.directory}/{self.name}"

    @property
    def tmp(self) -> str:
        """Where the log is written until it is final (:mod:`engine.store.logs`)."""
        return f"{self.directory}/{partial_name(self.name)}"

    def write(self, data: bytes) -> None:
        if self.redactor is not None:
            data = self.redactor.feed(data)
        self._write(data)

    def flush(self) -> None:
        """Write what was kept back (the stream has ended)."""
        if self.redactor is not None:
            self._write(self.redactor.end())

    def note(self, text: str) -> None:
        """A line of the engine's own in the tail only (the file is not what was printed)."""
        data = text.encode()
        self.tail.append(data)
        self.tail_size += len(data)

    def _write(self, data: bytes) -> None:
        if not data:
            return
        if self.error is None:
            try:
                if self.fd < 0:
                    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
                    self.fd = os.open(self.tmp, flags, FILE_MODE)
                    self.digest = hashlib.sha256()
                view = memoryview(data)
                while view:
                    view = view[os.write(self.fd, view) :]
            except OSError as exc:
                self.error = exc
            else:
                self.size += len(data)
                self.digest.update(data)
        self.tail.append(data)
        self.tail_size += len(data)
        while self.tail_size > TAIL_BYTES and len(self.tail) > 1:
            self.tail_size -= len(self.tail.popleft())

    def read_from(self, offset: int) -> bytes:
        if self.fd < 0 or offset >= self.size or self.error is not None:
            return b""
        with open(self.tmp, "rb") as f:
            f.seek(offset)
            return f.read()

    def tail_text(self, lines: int = TAIL_LINES) -> str:
        if not self.tail:
            return ""
        text = b"".join(self.tail).decode("utf-8", "replace")
        return "\n".join(text.splitlines()[-lines:])

    def finish(self) -> LogRef | None:
        """Make the log durable under its name; an empty log leaves no file.

        A log whose write or sync failed leaves no file either (what it
        holds is not what the command printed) and no reference.
        """
        self.flush()
        if self.fd < 0:
            return None
        fd, self.fd = self.fd, -2  # finished: nothing more is written
        try:
            if self.error is None:
                os.fsync(fd)
        except OSError as exc:
            self.error = exc
        finally:
            os.close(fd)
        try:
            if self.error is None:
                os.replace(self.tmp, self.path)
        except OSError as exc:
            self.error = exc
        if self.error is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.tmp)
            return None
        return LogRef(
            path=f"{LOGS_DIR}/{self.name}",
            sha256="sha256:" + self.digest.hexdigest(),
            size=self.size,
        )
