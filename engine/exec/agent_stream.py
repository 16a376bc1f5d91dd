"""A running agent's stream of events, read as it comes (``agent.output: claude-stream-json``).

Claude Code's ``--output-format stream-json --verbose`` prints one JSON event a
line while it works: ``system`` (its start), an ``assistant`` message per turn
(its ``tool_use`` blocks name the tools it calls), ``user`` (the tools'
answers), and a ``result`` last (what the call cost). :class:`AgentStream` is
fed the bytes of the agent's stdout as they arrive, whatever executor reads
them, and keeps what they tell so far as an
:class:`~ledger.payloads_steps.AgentActivity`: the events, the assistant
turns, the last tool used and the cost of the calls that finished, summed over
the attempt's agent calls. The answer itself is read at the end, from the
whole output (:mod:`engine.exec.agent_output`).

Lines are bounded: a partial line is kept up to :data:`MAX_LINE` bytes; a
longer one is dropped whole (not counted), and reading goes on at the next
line. A line that is not a JSON object is not an event.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from ledger.payloads_steps import AgentActivity

__all__ = ["MAX_LINE", "AgentStream", "spent_usd"]

MAX_LINE = 1 << 20
"""The longest line kept while it is incomplete (1 MiB); a longer one is dropped."""

MAX_TOOL = 200
"""The longest tool name kept (characters)."""


def _last_tool(message: Any) -> str | None:
    """The name of the last ``tool_use`` block of an assistant message, if any."""
    if not isinstance(message, dict):
        return None
    content = message.get("content")
    if not isinstance(content, list):
        return None
    found = None
    for block in content:
        if isinstance(block, dict) and block.get("type") == "tool_use":
            name = block.get("name")
            if isinstance(name, str) and name.strip():
                found = name.strip()[:MAX_TOOL]
    return found


MAX_CALL_COST_USD = 1e9
"""More than any one agent call costs: a larger cost is not believed (nor can sums of
such costs overflow)."""


def spent_usd(cost: Any) -> float:
    """A cost as an agent reports it, in dollars: a number from 0 to
    :data:`MAX_CALL_COST_USD`, else 0 (nothing spent; an infinite, NaN, negative,
    unbelievable or non-numeric cost is not recorded)."""
    if not isinstance(cost, int | float) or isinstance(cost, bool):
        return 0.0
    try:
        value = float(cost)  # an int too large for a float overflows
    except OverflowError:
        return 0.0
    return value if math.isfinite(value) and 0 <= value <= MAX_CALL_COST_USD else 0.0


class AgentStream:
    """What an attempt's agent calls printed so far, read incrementally.

    ``redact``: values (secrets) masked in what is kept (the tool's name).
    ``feed`` returns how many events the bytes completed; ``changed`` is true
    once the activity differs from what :meth:`taken` last handed out.
    """

    def __init__(self, redact: Sequence[str] = ()) -> None:
        self.events = 0
        self.turns = 0
        self.tool: str | None = None
        self.cost_usd = 0.0
        self.changed = False
        self._redact = tuple(s for s in redact if s)
        self._partial = bytearray()
        self._dropping = False
        """The current line grew past :data:`MAX_LINE`: skipped up to its newline."""

    def feed(self, data: bytes) -> int:
        """Read the bytes of stdout that just arrived; the events they completed."""
        before = self.events
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            if self._dropping:
                self._dropping = False
            elif self._partial:
                self._partial += data[start:end]
                self._line(bytes(self._partial))
                self._partial.clear()
            else:
                self._line(data[start:end])
            start = end + 1
        rest = len(data) - start
        if rest and not self._dropping:
            if len(self._partial) + rest > MAX_LINE:
                self._partial.clear()
                self._dropping = True
            else:
                self._partial += data[start:]
        return self.events - before

    def end(self) -> int:
        """The agent call's output ended: its last line, if unterminated, is read."""
        line, dropping = bytes(self._partial), self._dropping
        self._partial.clear()
        self._dropping = False
        if dropping or not line.strip():
            return 0
        before = self.events
        self._line(line)
        return self.events - before

    def _line(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            event = json.loads(line)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        self.events += 1
        self.changed = True
        kind = event.get("type")
        if kind == "assistant":
            self.turns += 1
            tool = _last_tool(event.get("message"))
            if tool is not None:
                self.tool = self._masked(tool)
        elif kind == "result":
            cost = spent_usd(event.get("total_cost_usd"))
            if cost:
                self.cost_usd = round(self.cost_usd + cost, 10)

    def _masked(self, text: str) -> str:
        for secret in self._redact:
            text = text.replace(secret, "***")
        return text

    @property
    def activity(self) -> AgentActivity:
        """What the agent did so far."""
        return AgentActivity(
            events=self.events, turns=self.turns, tool=self.tool, cost_usd=self.cost_usd
        )

    def taken(self) -> AgentActivity:
        """The activity, now handed out (``changed`` is false until the next event)."""
        self.changed = False
        return self.activity
