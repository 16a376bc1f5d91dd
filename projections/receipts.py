"""Receipts: for each item that succeeded, what the ledger proves of it.

A receipt names the item, how many attempts it took, its idempotency key, the
ledger seq range from its first dispatch to its success, its result's digest,
the artifacts it wrote (path, sha256, size), and the hash of its
``item.succeeded`` record (the ledger's head when it completed). Every field is
derived from the ledger: the engine writes each receipt as its item succeeds,
and ``engine audit verify`` folds them again to check the files.

An on-demand fold, like the timeline: pass ``keep=False`` to keep only the
receipts made since the last :meth:`ReceiptsProjection.drain` (the engine
writes them and forgets them: memory does not grow with the run).
"""

from __future__ import annotations

import hashlib

import msgspec

from ledger.events import (
    ArtifactWritten,
    ItemDispatched,
    ItemSucceeded,
    Record,
)
from projections.base import Projection, handles

__all__ = ["RECEIPT_VERSION", "Receipt", "ReceiptArtifact", "ReceiptsProjection", "result_digest"]

RECEIPT_VERSION = 1


class ReceiptArtifact(msgspec.Struct, frozen=True, kw_only=True):
    path: str
    """Relative to the workspace (or the attempt's worktree)."""
    sha256: str
    size: int


class Receipt(msgspec.Struct, frozen=True, kw_only=True):
    """What the ledger proves of one item that succeeded."""

    version: int = RECEIPT_VERSION
    run: str
    item: str
    attempts: int
    """Attempts dispatched, the succeeding one included."""
    idempotency_key: str
    first_seq: int
    """The seq of the item's first ``item.dispatched``."""
    last_seq: int
    """The seq of its ``item.succeeded``."""
    result_digest: str
    """``sha256:<hex>`` of its result as canonical JSON (sorted keys), or the
    result's reference in the content store when it was too large to record."""
    artifacts: list[ReceiptArtifact] = []
    """The artifacts its succeeding attempt wrote, by path."""
    head_hash: str
    """The hash of its ``item.succeeded`` record: the ledger's head when it completed."""


def result_digest(e: ItemSucceeded) -> str:
    """The digest of a success's result: its store reference, or its canonical JSON's."""
    if e.result_ref is not None:
        return e.result_ref
    canonical = msgspec.json.encode(e.result, order="sorted")
    return f"sha256:{hashlib.sha256(canonical).hexdigest()}"


class _Pending(msgspec.Struct, gc=False):
    first_seq: int
    attempts: int = 0
    key: str = ""
    artifacts: dict[str, ReceiptArtifact] = {}


class ReceiptsProjection(Projection):
    """Every succeeded item's receipt (``keep``), and the ones made since :meth:`drain`."""

    def __init__(self, *, keep: bool = True) -> None:
        self.keep = keep
        self.receipts: dict[str, Receipt] = {}
        """Item -> its receipt (with ``keep``); an item succeeding again replaces it."""
        self.made: list[Receipt] = []
        """Receipts made since the last :meth:`drain` (without ``keep``)."""
        self._pending: dict[str, _Pending] = {}

    @handles(ItemDispatched)
    def _dispatched(self, record: Record, e: ItemDispatched) -> None:
        pending = self._pending.get(e.item)
        if pending is None:
            self._pending[e.item] = pending = _Pending(first_seq=record.seq, artifacts={})
        pending.attempts += 1
        pending.key = e.idempotency_key
        pending.artifacts = {}  # an attempt's artifacts are its own

    @handles(ArtifactWritten)
    def _artifact(self, record: Record, e: ArtifactWritten) -> None:
        pending = self._pending.get(e.item)
        if pending is not None:
            pending.artifacts[e.path] = ReceiptArtifact(path=e.path, sha256=e.sha256, size=e.size)

    @handles(ItemSucceeded)
    def _succeeded(self, record: Record, e: ItemSucceeded) -> None:
        pending = self._pending.pop(e.item, None)
        if pending is None:
            return
        receipt = Receipt(
            run=record.run,
            item=e.item,
            attempts=pending.attempts,
            idempotency_key=pending.key,
            first_seq=pending.first_seq,
            last_seq=record.seq,
            result_digest=result_digest(e),
            artifacts=sorted(pending.artifacts.values(), key=lambda a: a.path),
            head_hash=record.hash,
        )
        if self.keep:
            self.receipts[e.item] = receipt
        else:
            self.made.append(receipt)

    def drain(self) -> list[Receipt]:
        """The receipts made since the last call (the engine writes them)."""
        made, self.made = self.made, []
        return made

    def to_json(self) -> dict[str, Receipt]:
        return self.receipts
