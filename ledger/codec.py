"""The byte layout of one ledger line, and its hash.

A line is ``body`` followed by the fixed-width suffix
``,"hash":"<64 lowercase hex>"}`` and ``\\n`` (76 bytes). ``body`` is
``{"v":1,"seq":N,"ts":"...","type":"...","run":"...","data":{...}``;
``hash = sha256(prev_hash + body)`` where ``prev_hash`` is the previous
record's hash as 64 ASCII hex characters (64 zeros before seq 0). Checking
the chain needs no JSON parsing.
"""

from __future__ import annotations

from hashlib import sha256

import msgspec

from ledger.events import FORMAT_VERSION, Event

__all__ = [
    "GENESIS_HASH",
    "HASH_END",
    "HASH_PREFIX",
    "LEDGER_NAME",
    "MAX_RECORD_BYTES",
    "SEQ_PREFIX",
    "SUFFIX_LEN",
    "body_template",
    "encode_body",
    "line_hash",
    "parse_seq",
    "split_line",
]

LEDGER_NAME = "ledger.ndjson"
"""The ledger's file name in its run directory."""
MAX_RECORD_BYTES = 256 * 1024
"""The largest line (suffix and newline included) the writer accepts."""

GENESIS_HASH = b"0" * 64
"""``prev_hash`` of the record with seq 0."""

HASH_PREFIX = b',"hash":"'
HASH_END = b'"}'
SUFFIX_LEN = len(HASH_PREFIX) + 64 + len(HASH_END) + 1
"""Bytes from the end of ``body`` to the end of the line, newline included (76)."""

SEQ_PREFIX = b'{"v":%d,"seq":' % FORMAT_VERSION

_encode = msgspec.json.Encoder().encode


def body_template(*, ts: str, run: str) -> bytes:
    """A body with ``seq``, ``type`` and ``data`` left as ``%d``, ``%s``, ``%s``.

    Records staged together share ``ts`` and ``run``; formatting the
    template is cheaper than building each body from scratch.
    """
    ts_json = _encode(ts).replace(b"%", b"%%")
    run_json = _encode(run).replace(b"%", b"%%")
    return SEQ_PREFIX + b'%d,"ts":' + ts_json + b',"type":"%s","run":' + run_json + b',"data":%s'


def encode_body(*, seq: int, ts: str, run: str, event: Event) -> bytes:
    """The bytes of a record before its hash suffix."""
    return body_template(ts=ts, run=run) % (seq, event.TYPE.encode(), _encode(event))


def line_hash(prev_hash: bytes, body: bytes) -> bytes:
    """The record's hash: hex SHA-256 of ``prev_hash + body``, as ASCII bytes."""
    return sha256(prev_hash + body).hexdigest().encode()


def split_line(line: bytes) -> tuple[bytes, bytes] | None:
    """Split a line (without its newline) into ``(body, hash)``.

    None when the fixed-width suffix is not there.
    """
    if len(line) < SUFFIX_LEN - 1 + 2 or line[-2:] != HASH_END:
        return None
    if line[-75:-66] != HASH_PREFIX:
        return None
    return line[:-75], line[-66:-2]


def parse_seq(body: bytes) -> int | None:
    """The ``seq`` of a record body, read without JSON parsing."""
    if not body.startswith(SEQ_PREFIX):
        return None
    start = len(SEQ_PREFIX)
    end = body.find(b",", start)
    digits = body[start:end]
    if end < 0 or not digits.isdigit():
        return None
    return int(digits)
