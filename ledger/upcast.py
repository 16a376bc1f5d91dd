"""Upcasting: a record of an older format version, read as the current one.

A change to the ledger format that the schema-evolution rules do not allow
(a field renamed, a field's meaning changed) bumps
:data:`~ledger.events.FORMAT_VERSION`, and ships with an *upcaster* for every
event type it changes: a function registered here, under the event type and
the version it upgrades from, that rewrites a record's envelope (the line's
JSON object, ``data`` included) from that version to the next::

    @upcaster("item.failed", 0)
    def _item_failed_error_type(envelope: Envelope) -> Envelope:
        data = envelope["data"]
        data["error_type"] = data.pop("error")
        return envelope

Event types the change leaves as they were get the identity step
(:func:`unchanged`): a type with no step from a record's version is refused.

The reader decodes a record of an older version generically, applies the
chain of upcasters from its version to the current one (each step looked up
under the type the previous one left, so a step may rename the type), and
then decodes the result with the one typed decoder, as any current record.
A record whose chain has a missing link, or of a version newer than the
reader's, is refused as corruption, with the reason verification always
gave it: it does not start with the current envelope.

Version 1 is the first format ever written, so nothing is registered yet.

The hash chain is never computed over the upcast form: it covers the bytes
as written, whatever their version (``docs/ledger-format.md``). Upcasters
leave ``seq``, ``ts``, ``run`` and ``hash`` alone; the step's driver sets
``v``. Records of the current version never come here: their typed decode is
the reader's fast path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from ledger._lines import DECODE_ERRORS
from ledger.events import FORMAT_VERSION, Record, record_decoder

__all__ = [
    "UPCASTERS",
    "Envelope",
    "Upcaster",
    "decode_older",
    "decode_upcast",
    "older_envelope",
    "unchanged",
    "upcast",
    "upcaster",
]

Envelope = dict[str, Any]
"""A record's JSON object: ``v``, ``seq``, ``ts``, ``type``, ``run``, ``data``, ``hash``."""

Upcaster = Callable[[Envelope], Envelope]
"""Rewrites an envelope of version N (of one event type) to version N + 1."""

UPCASTERS: dict[tuple[str, int], Upcaster] = {}
"""Every upcaster by (event type, the version it upgrades from)."""

_decode_generic = msgspec.json.Decoder(dict[str, Any]).decode
_encode = msgspec.json.Encoder().encode


def upcaster(event_type: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Register the decorated function as the upcaster of ``event_type`` from ``from_version``."""
    if not 0 <= from_version < FORMAT_VERSION:
        raise ValueError(f"no format version {from_version} older than {FORMAT_VERSION}")

    def register(step: Upcaster) -> Upcaster:
        key = (event_type, from_version)
        if key in UPCASTERS:
            raise ValueError(f"an upcaster of {event_type} from version {from_version} exists")
        UPCASTERS[key] = step
        return step

    return register


def unchanged(from_version: int, *event_types: str) -> None:
    """Register the identity step from ``from_version`` for event types the change left alone.

    A record of a type with no step from its version is refused, so a format
    change names every type it keeps as it was.
    """
    for event_type in event_types:
        upcaster(event_type, from_version)(_same)


def _same(envelope: Envelope) -> Envelope:
    return envelope


def upcast(envelope: Envelope) -> Envelope | None:
    """The envelope at :data:`FORMAT_VERSION`, through the chain of upcasters.

    None when the envelope is not of an older version, or when a link of its
    chain is missing.
    """
    version = envelope.get("v")
    if type(version) is not int or not 0 <= version < FORMAT_VERSION:
        return None  # not a version (a bool is no version either), or not an older one
    while version < FORMAT_VERSION:
        event_type = envelope.get("type")
        step = UPCASTERS.get((event_type, version)) if isinstance(event_type, str) else None
        if step is None:
            return None
        envelope = step(envelope)
        version += 1
        envelope["v"] = version
    return envelope


def older_envelope(line: bytes) -> Envelope | None:
    """The upcast envelope of ``line`` (a record without its newline) of an older version.

    None unless the line is a JSON object of an older version whose chain
    of upcasters is complete; what the upcast envelope holds is not checked
    yet (:func:`decode_upcast` does).
    """
    try:
        envelope = _decode_generic(line)
    except DECODE_ERRORS:
        return None
    return upcast(envelope)


def decode_upcast(envelope: Envelope) -> Record:
    """The typed record of an upcast envelope, by the one typed decoder.

    Raises what decoding an invalid record raises (``DECODE_ERRORS``).
    """
    return record_decoder.decode(_encode(envelope))


def decode_older(line: bytes) -> Record | None:
    """The record of a line of an older version, upcast; None when it cannot be read."""
    envelope = older_envelope(line)
    if envelope is None:
        return None
    try:
        return decode_upcast(envelope)
    except DECODE_ERRORS:
        return None
