"""Pure folds over ledger records, and ``replay()``.

The ledger is the only source of truth; everything here is derived from it
and can be rebuilt at any time by replaying it.
"""

from __future__ import annotations

from projections.base import Projection, handles
from projections.dlq import DLQEntry, DLQProjection, Failure
from projections.items import (
    ITEM_STATUSES,
    ItemCounts,
    ItemsProjection,
    ItemState,
    ItemStatus,
)
from projections.replay import Projections, ProjectionsView, replay
from projections.run import RUN_STATUSES, RunProjection, RunStatus
from projections.signatures import SignaturesProjection, SignatureStat
from projections.stats import StatsProjection
from projections.timeline import TimelineProjection
from projections.workers import AttemptLiveness, WorkersProjection

__all__ = [
    "ITEM_STATUSES",
    "RUN_STATUSES",
    "AttemptLiveness",
    "DLQEntry",
    "DLQProjection",
    "Failure",
    "ItemCounts",
    "ItemState",
    "ItemStatus",
    "ItemsProjection",
    "Projection",
    "Projections",
    "ProjectionsView",
    "RunProjection",
    "RunStatus",
    "SignatureStat",
    "SignaturesProjection",
    "StatsProjection",
    "TimelineProjection",
    "WorkersProjection",
    "handles",
    "replay",
]
