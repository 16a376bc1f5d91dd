"""The engine: workflows, scheduling, executors, and the run home.

The durable core lives below it: :mod:`ledger` (the append-only log) and
:mod:`projections` (folds over it).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from ledger.errors import EngineError

__all__ = ["EngineError", "__version__"]

try:
    __version__ = version("engine")
except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    __version__ = "0.0.0"
