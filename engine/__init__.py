"""The engine: workflows, scheduling, executors, and the run home.

The durable core lives below it: :mod:`ledger` (the append-only log) and
:mod:`projections` (folds over it).
"""

from __future__ import annotations

import functools

from ledger.errors import EngineError

__all__ = ["EngineError", "engine_version"]


@functools.cache
def engine_version() -> str:
    """The installed package's version (read on first use: the lookup costs ~30 ms)."""
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415 - costly

    try:
        return version("engine")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0.0.0"
