"""What an outcome event says of the steps of its sequence that did not end it.

Kept apart from :mod:`ledger.payloads` (which uses it in ``item.succeeded``,
``item.failed``, ``step.succeeded`` and ``step.failed``) by size alone.
"""

from __future__ import annotations

import msgspec

__all__ = ["StepRecovery"]


class StepRecovery(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A step that failed without ending its sequence: a retry or a re-run of it
    succeeded, or its ``on_failure`` handlers recovered it."""

    step: int
    """Its index in its sequence (0, 1, ...; 0 for a setup or reduce step), as in
    :class:`~ledger.payloads.ValidationRound`."""
    by: str
    """``retry`` (a retry succeeded), ``rerun`` (a re-run after its handlers succeeded)
    or ``recover`` (its handlers succeeded, and the sequence went on past it)."""
    runs: int
    """Times it ran, retries and re-runs included."""
    error_type: str
    """How its last failure was classified."""
    message: str = ""
    """What its last failure said (at most 500 characters)."""
    exit_code: int | None = None
    signal: int | None = None
