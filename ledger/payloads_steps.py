"""What an outcome event says of its steps beyond the outcome: the failures that did not
end the sequence, and what the agent's steps spent; and what a heartbeat says of a running
agent.

Kept apart from :mod:`ledger.payloads` (which uses it in ``item.succeeded``,
``item.failed``, ``step.succeeded`` and ``step.failed``) by size alone.
"""

from __future__ import annotations

import msgspec

__all__ = ["AgentActivity", "AgentUsage", "StepRecovery"]


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


class AgentUsage(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What an attempt's (or a step's) agent calls reported, summed over its ``claude:``
    steps (handlers and retries included): cost, tokens, turns, and the last session."""

    calls: int = 0
    """Agent calls that reported (each one run of a ``claude:`` step)."""
    cost_usd: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    turns: int = 0
    session_id: str | None = None
    """The last call's session (what ``--resume`` would continue)."""
    model: str | None = None


class AgentActivity(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A running attempt's agent as its stream of events tells it so far
    (``agent.output: claude-stream-json``), summed over the attempt's agent calls."""

    events: int = 0
    """Events (lines) the agent printed."""
    turns: int = 0
    """Its assistant turns."""
    tool: str | None = None
    """The last tool it used."""
    cost_usd: float = 0.0
    """Its spend so far: the cost its finished calls reported (a call reports its cost
    only in its result)."""
