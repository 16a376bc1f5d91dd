"""The Dask executor: each attempt one task on a Dask cluster, the ledger kept here.

``executor`` (:class:`DaskExecutor`) connects to a scheduler or starts a local
cluster (``cluster``), submits one task per attempt and turns what comes back
into the same outcomes the local executor gives; ``worker`` is the task: it
claims its attempt on the scheduler, drives a local attempt on the worker and
publishes its heartbeats. ``distributed`` is imported only here, only when a
run asks for this executor (:func:`require_distributed`): ``engine --help`` and
local runs never pay for it.
"""

from __future__ import annotations

import importlib.util

from ledger.errors import EngineError

__all__ = ["DaskMissing", "require_distributed"]


class DaskMissing(EngineError):
    """The dask executor was asked for, and ``distributed`` is not installed."""

    exit_code = 2


def require_distributed() -> None:
    """Refuse (one line, exit 2) when ``distributed`` cannot be imported."""
    if importlib.util.find_spec("distributed") is None:
        raise DaskMissing(
            "the dask executor needs the dask extra: pip install 'engine[dask]'",
            hint="or run with --executor local",
        )
