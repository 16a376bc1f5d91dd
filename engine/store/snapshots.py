"""When the engine checkpoints its projections (:mod:`projections.snapshots`).

Every :data:`EVERY` records, or every :data:`INTERVAL` seconds once some
records came, and when the run ends; a snapshot only saves readers time, so
one that cannot be written is skipped, never an error.
"""

from __future__ import annotations

import time
from pathlib import Path

from projections.replay import Projections
from projections.snapshots import STATES, write_snapshot

__all__ = ["EVERY", "INTERVAL", "Checkpoints"]

EVERY = 100_000
"""Records folded between two snapshots, at most."""
INTERVAL = 60.0
"""Seconds between two snapshots, at most, once :data:`MIN_RECORDS` came."""
MIN_RECORDS = 1_000


class Checkpoints:
    """Snapshots of one engine's projections, as records come."""

    def __init__(self, ledger: Path) -> None:
        self.ledger = ledger
        self.seq = -1
        self.at = time.monotonic()

    def after_append(self, p: Projections, *, final: bool = False) -> None:
        """Snapshot ``p`` if enough records or time passed since the last (``final``: now)."""
        if p.last is None or p.seq == self.seq:
            return
        new = p.seq - self.seq
        now = time.monotonic()
        if final or new >= EVERY or (new >= MIN_RECORDS and now - self.at >= INTERVAL):
            kept = [x for x in (*p.all(), *p.extra) if type(x) in STATES]
            try:
                write_snapshot(self.ledger, kept, p.last)
            except OSError:
                return  # derived data: the next one may succeed
            self.seq, self.at = p.seq, now
