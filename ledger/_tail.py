"""Torn tail or corruption: what follows the last valid record of a ledger.

The dividing rule is what a crash can leave behind, and nothing else: a last
line cut short (no newline, and not a complete hash suffix over the wrong
bytes), possibly followed by zeros, or zeros reaching the end of the file.
Those are torn tails (:class:`TornTail`). Anything else, above all a complete
line that is not the valid next record, is corruption
(:class:`~ledger.errors.LedgerCorrupt`, naming the seq and byte offset).
``docs/ledger-format.md`` lists the cases.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from hashlib import sha256

from ledger._lines import DECODE_ERRORS, MAX_LINE, Lines
from ledger.codec import SEQ_PREFIX, parse_seq, split_line
from ledger.errors import LedgerCorrupt
from ledger.events import record_decoder
from ledger.upcast import decode_upcast, older_envelope

__all__ = ["TornTail", "diagnose", "judge_suffix"]


@dataclass(frozen=True, slots=True)
class TornTail:
    """An incomplete or malformed suffix after the last valid record."""

    offset: int
    """Byte offset of the first byte after the last valid record."""
    length: int
    """Bytes from ``offset`` to the end of the file."""
    seq: int
    """The seq the first torn record would have had."""
    reason: str


def judge_suffix(
    path: str,
    chunk_size: int,
    offset: int,
    seq: int,
    prev: bytes,
    *,
    bad: bytes | None,
    source: Lines,
) -> TornTail | None:
    """Judge what follows the last valid record: nothing, a torn tail, or corruption.

    ``bad`` is the first invalid complete line (without its newline), if
    the pass stopped at one; otherwise ``source`` says whether the file
    ends with an unterminated line (``rest``) or a line longer than any
    record (``overlong``). A crash can leave a last line cut short or
    zero-filled blocks; it cannot complete a line it did not write, nor
    write a full hash suffix over the wrong bytes. Raises LedgerCorrupt.
    """
    if bad is not None:
        if bad.strip(b"\x00"):
            raise LedgerCorrupt(path, seq=seq, offset=offset, reason=diagnose(bad, seq, prev))
        return _zero_tail(path, chunk_size, offset, seq, prev, _ZERO_LINE)
    if source.overlong:
        return _zero_tail(path, chunk_size, offset, seq, prev, "a line longer than any record")
    rest = source.rest
    if not rest:
        return None
    return _unterminated(path, offset, seq, prev, rest, len(rest))


def _unterminated(
    path: str, offset: int, seq: int, prev: bytes, tail: bytes, length: int
) -> TornTail:
    """Judge a last line without a newline (``tail``; ``length`` bytes to the end)."""
    cut = tail.rstrip(b"\x00")
    if not cut:
        return TornTail(offset, length, seq, "zero-filled tail")
    reason = ""
    if b"\x00" in cut:  # no record holds a zero byte: not a line cut short
        reason = "zero bytes followed by other bytes (a torn write leaves only zeros after it)"
    elif split_line(cut) is not None:  # a whole record but for its newline
        reason = diagnose(cut, seq, prev)
        if reason == _VALID:
            return TornTail(offset, length, seq, "last record without its newline")
    elif split_line(cut[:-1]) is not None:  # a whole record, its newline replaced
        reason = diagnose(cut[:-1], seq, prev)
        if reason == _VALID:
            reason = "the record's newline was replaced"
    if reason:
        raise LedgerCorrupt(path, seq=seq, offset=offset, reason=reason)
    return TornTail(offset, length, seq, "incomplete last line (no newline)")


def _zero_tail(
    path: str, chunk_size: int, offset: int, seq: int, prev: bytes, reason: str
) -> TornTail:
    """Judge the suffix at ``offset`` when it does not start with a record.

    It is torn when it is zeros (and newlines) to the end of the file, or
    one unterminated line of a record's length at most followed by zeros;
    anything else is corruption (``reason`` says what is wrong).
    """
    length = 0
    newline = other = False
    cut = 0  # bytes up to the last non-zero one
    with open(path, "rb") as g:
        g.seek(offset)
        while chunk := g.read(chunk_size):
            newline = newline or b"\n" in chunk
            if chunk.translate(None, b"\x00\n"):
                other = True
                cut = length + len(chunk.rstrip(b"\x00"))
            length += len(chunk)
        if other and not newline and cut <= MAX_LINE:
            g.seek(offset)
            return _unterminated(path, offset, seq, prev, g.read(cut), length)
    if other:
        found = _next_record(path, chunk_size, offset)
        if found is not None:
            reason += f"; a valid record follows at byte offset {found}"
        elif reason == _ZERO_LINE:
            reason += " followed by other bytes (a torn write leaves only zeros after it)"
        raise LedgerCorrupt(path, seq=seq, offset=offset, reason=reason)
    return TornTail(offset, length, seq, "zero-filled tail")


def _next_record(path: str, chunk_size: int, offset: int) -> int | None:
    """The byte offset of the first well-formed record after ``offset`` (slow path)."""
    pos = offset
    with open(path, "rb") as g:
        g.seek(offset)
        for lines in Lines(g, chunk_size, None, skip_overlong=True):
            for line in lines:
                if line is not None and pos > offset and split_line(line) is not None:
                    with contextlib.suppress(*DECODE_ERRORS):
                        record_decoder.decode(line)
                        return pos
                pos += (len(line) if line is not None else 0) + 1
    return None


_VALID = "valid record"
_ZERO_LINE = "a zero-filled line"


def diagnose(line: bytes, seq: int, prev: bytes) -> str:
    """Say why ``line`` is not the valid record ``seq`` (the slow path)."""
    parts = split_line(line)
    if parts is None:
        if not line.strip(b"\x00 \t\r"):
            return "blank or zero-filled line"
        return "line does not end with the hash suffix"
    body, digest = parts
    older = None if body.startswith(SEQ_PREFIX) else older_envelope(line)
    found = parse_seq(body) if older is None else older.get("seq")
    if type(found) is not int:  # neither this version's envelope nor an older one's upcast
        return "record does not start with the v1 envelope"
    if found != seq:
        kind = "a record is missing" if found > seq else "records are out of order"
        return f"expected seq {seq}, found seq {found} ({kind})"
    if sha256(prev + body).hexdigest().encode() != digest:
        return "hash mismatch (the record or its predecessor was changed)"
    try:
        if older is None:
            record_decoder.decode(line)
        else:
            decode_upcast(older)
    except DECODE_ERRORS as exc:
        return f"record does not decode: {exc}"
    return _VALID
