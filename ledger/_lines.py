"""Complete lines of a ledger file, chunk by chunk, in bounded memory."""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

import msgspec

from ledger.codec import MAX_RECORD_BYTES

__all__ = ["DECODE_ERRORS", "MAX_LINE", "Lines"]

DECODE_ERRORS = (msgspec.DecodeError, UnicodeDecodeError)
"""What decoding a line that is not a valid record raises."""

MAX_LINE = MAX_RECORD_BYTES
"""No valid line is longer; a longer one is invalid at once."""


class Lines:
    """Complete lines, chunk by chunk, with memory bounded by a chunk and one record.

    After iterating, ``rest`` holds an incomplete last line (no newline), and
    ``overlong`` says iteration stopped at a line longer than any record can
    be (the caller treats it as invalid). With ``skip_overlong`` such a line
    is yielded as ``None`` instead, and reading goes on after it.
    """

    def __init__(
        self, f: BinaryIO, chunk_size: int, limit: int | None, *, skip_overlong: bool = False
    ) -> None:
        self.f = f
        self.chunk_size = chunk_size
        self.remaining = -1 if limit is None else limit
        self.skip_overlong = skip_overlong
        self.rest = b""
        self.overlong = False

    def __iter__(self) -> Iterator[list[bytes | None]]:
        parts: list[bytes] = []
        pending = 0
        skipping = False
        while self.remaining:
            size = self.chunk_size if self.remaining < 0 else min(self.chunk_size, self.remaining)
            chunk = self.f.read(size)
            if self.remaining > 0:
                self.remaining -= len(chunk)
            if not chunk:
                break
            cut = chunk.rfind(b"\n") + 1
            if cut == 0:
                if skipping:
                    continue
                parts.append(chunk)
                pending += len(chunk)
                if pending > MAX_LINE:
                    if not self.skip_overlong:
                        self.overlong = True
                        self.rest = b"".join(parts)
                        return
                    skipping = True
                    parts, pending = [], 0
                continue
            head = chunk[:cut]
            out: list[bytes | None] = []
            if skipping:
                first_nl = head.find(b"\n")
                out.append(None)
                head = head[first_nl + 1 :]
                skipping = False
            elif parts:
                head = b"".join(parts) + head
            lines = head.split(b"\n")
            lines.pop()
            out.extend(lines)
            tail = chunk[cut:]
            parts, pending = ([tail], len(tail)) if tail else ([], 0)
            yield out
        if skipping:
            yield [None]
            parts = []
        self.rest = b"".join(parts)
