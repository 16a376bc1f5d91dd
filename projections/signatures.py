"""Failure signatures: failures grouped by their normalised signature."""

from __future__ import annotations

import msgspec

from ledger.events import ItemFailed, Record
from projections.base import Projection, handles

__all__ = ["SignatureStat", "SignaturesProjection", "SignaturesView"]


class SignatureStat(msgspec.Struct, kw_only=True, gc=False):
    signature: str
    error_type: str
    count: int
    items: int
    """Distinct items that failed with this signature."""
    first_seen: str
    last_seen: str
    example: str


class SignaturesView(msgspec.Struct, kw_only=True):
    signatures: list[SignatureStat]


class SignaturesProjection(Projection):
    def __init__(self) -> None:
        self.stats: dict[str, SignatureStat] = {}
        self._items: dict[str, set[str]] = {}

    @handles(ItemFailed)
    def _failed(self, record: Record, e: ItemFailed) -> None:
        stat = self.stats.get(e.signature)
        if stat is None:
            self.stats[e.signature] = SignatureStat(
                signature=e.signature,
                error_type=e.error_type,
                count=1,
                items=1,
                first_seen=record.ts,
                last_seen=record.ts,
                example=e.message,
            )
            self._items[e.signature] = {e.item}
            return
        stat.count += 1
        stat.last_seen = record.ts
        items = self._items[e.signature]
        if e.item not in items:
            items.add(e.item)
            stat.items = len(items)

    def to_json(self) -> SignaturesView:
        ordered = sorted(self.stats.values(), key=lambda s: (-s.count, s.signature))
        return SignaturesView(signatures=ordered)
