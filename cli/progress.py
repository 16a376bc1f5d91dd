"""The progress of ``engine run`` / ``resume`` on stderr, and the final summary.

On a terminal, a live line redrawn in place (rich). Anywhere else (a file, a
pipe, a CI log), a plain line every few seconds, as GNU parallel's ``--eta``
does::

    engine: 12/50 done · 1 failed · 8 running · 2 retrying · 2.4 items/s · ETA 16s · 5.0s elapsed

Both lines count alike (:func:`finished`): "done" is every finished item
(succeeded, skipped, dead-lettered, failed for good), "failed" those of them
without success; the live line also splits done into ok and failed, and says
how many of the failed are dead-lettered. Once the agents spent anything,
both add the spend so far and, once an item finished, the whole run's at that
rate (spent / finished items * items); the live line lists the busiest running
agents (turns, last tool, spend); both say a usage limit's wait and a spent
budget on lines of their own (:mod:`engine.views.agents`).

``ENGINE_PROGRESS_INTERVAL`` sets the seconds between plain lines (default
5); ``--no-progress`` silences both. While the run is paused (``engine
pause``) both say ``paused`` and the ETA clock stops: the rate and the ETA
count only the time the run could dispatch. Writing progress never stops a
run: a display whose stream is gone (EPIPE) just turns itself off.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, TextIO, TypeVar

import yaml
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from cli.app import BadInput
from cli.render import human_duration
from engine.views.agents import (
    agent_line,
    budget_line,
    budget_view,
    busiest,
    spend_parts,
    wait_line,
    wait_view,
)
from engine.workflow.reading import load_yaml
from projections.replay import Projections

__all__ = [
    "DEFAULT_INTERVAL",
    "INTERVAL_ENV",
    "Progress",
    "StdoutConsole",
    "progress_interval",
    "summary_table",
]

T = TypeVar("T")

INTERVAL_ENV = "ENGINE_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 5.0
MAX_INTERVAL = 86400.0
"""``ENGINE_PROGRESS_INTERVAL`` must be under a day."""
LIVE_TICK = 1.0
"""Seconds between redraws of the live line when nothing happens (its ETA counts down)."""


def progress_interval(environ: dict[str, str] | None = None) -> float:
    """Seconds between plain progress lines: ``ENGINE_PROGRESS_INTERVAL``, else 5."""
    value = (os.environ if environ is None else environ).get(INTERVAL_ENV, "").strip()
    if not value:
        return DEFAULT_INTERVAL
    fix = "set it to e.g. 5 or 0.5, or unset it for 5"
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if math.isnan(seconds):
        raise BadInput(f"{INTERVAL_ENV}={value[:40]!r}: not a number of seconds ({fix})")
    if seconds <= 0:
        raise BadInput(f"{INTERVAL_ENV}={value[:40]!r}: must be more than 0 seconds ({fix})")
    if seconds >= MAX_INTERVAL:
        raise BadInput(
            f"{INTERVAL_ENV}={value[:40]!r}: over the cap of {MAX_INTERVAL:g} seconds "
            f"(a day; {fix})"
        )
    return seconds


def finished(c: Mapping[str, int]) -> tuple[int, int]:
    """(done, failed) of the items' counts, as both lines say them: done is every
    finished item (succeeded, skipped, dead-lettered or failed for good); failed, those
    of them without success (dead-lettered or failed for good)."""
    failed = c["dead"] + c["failed"]
    return c["succeeded"] + c["skipped"] + failed, failed


@dataclass
class Counts:
    """Where a run's items stand, as both displays show it (:func:`finished`)."""

    total: int
    done: int
    """Finished: succeeded, skipped, dead or failed."""
    ok: int
    """Finished with success: succeeded or skipped."""
    failed: int
    """Finished without success: dead-lettered, or failed for good."""
    running: int
    retrying: int
    """Pending, waiting for a retry's backoff."""
    pending: int
    dead: int
    paused: bool
    circuit: str
    listed: bool
    """The map's items are all enqueued."""
    waiting: bool = False
    """The circuit is open until a usage limit's reset: nothing starts before it."""

    @property
    def held(self) -> bool:
        """Nothing is dispatched for now (paused, or waiting for a reset): the ETA clock stops."""
        return self.paused or self.waiting


class EtaClock:
    """Rate and ETA over the time this engine could dispatch: paused spans left out,
    items done before it started (a resume) not counted."""

    def __init__(self, now: float) -> None:
        self.started = now
        self.paused_since: float | None = None
        self.paused_total = 0.0
        self.base: int | None = None

    def observe(self, done: int, paused: bool, now: float) -> None:
        if self.base is None:
            self.base = done
        if paused and self.paused_since is None:
            self.paused_since = now
        elif not paused and self.paused_since is not None:
            self.paused_total += now - self.paused_since
            self.paused_since = None

    def active(self, now: float) -> float:
        paused = self.paused_total + (now - self.paused_since if self.paused_since else 0.0)
        return max(now - self.started - paused, 0.0)

    def rate(self, c: Counts, now: float) -> float:
        active = self.active(now)
        finished = c.done - (self.base or 0)
        return finished / active if active > 0 and finished > 0 else 0.0

    def eta(self, c: Counts, now: float) -> str:
        if c.paused:
            return "paused"
        if c.waiting:
            return "ETA after the reset"
        rate = self.rate(c, now)
        remaining = c.total - c.done
        if not c.listed or rate <= 0 or remaining <= 0:
            return "ETA -"
        return f"ETA {human_duration(max(remaining / rate, 1.0))}"


class Progress:
    """The live line (``mode="live"``), plain lines (``"plain"``) or nothing (``"off"``).

    :meth:`update` is the run's ``on_change`` (the event loop's thread, after each
    append): it notes the projections and redraws the live line at most 8 times a
    second. :meth:`run` drives a run with the ticker that writes the plain lines.
    """

    def __init__(
        self,
        console: Console,
        *,
        mode: str,
        interval: float = DEFAULT_INTERVAL,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.console = console
        self.mode = mode
        self.interval = interval
        self.stream = stream
        self.clock = clock
        self.live: Live | None = None
        self.p: Projections | None = None
        self.eta = EtaClock(clock())
        self.last = 0.0
        self._retrying: tuple[float, int] = (-1e9, 0)
        """Until when the count of items waiting for a retry holds, and that count."""
        self._waiting: str | None = None

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def __enter__(self) -> Progress:
        if self.mode == "live":
            self.live = Live(console=self.console, refresh_per_second=8, transient=True)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            with contextlib.suppress(OSError):
                self.live.__exit__(*exc)
            self.live = None

    async def run(self, work: Coroutine[Any, Any, T]) -> T:
        """Await ``work`` while the ticker writes (plain) or refreshes (live) the progress."""
        ticker = asyncio.ensure_future(self._tick()) if self.enabled else None
        try:
            return await work
        finally:
            if ticker is not None:
                ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ticker

    async def _tick(self) -> None:
        period = self.interval if self.mode == "plain" else min(self.interval, LIVE_TICK)
        while self.enabled:
            await asyncio.sleep(period)
            if self.p is None:
                continue
            if self.mode == "plain":
                self._write(self.plain_line(self.p))
            elif self.live is not None:
                self._redraw(self.p)

    def update(self, p: Projections) -> None:
        self.p = p
        if not self.enabled:
            return
        now = self.clock()
        done, _ = finished(p.items.counts)
        held = p.run.paused or _waiting(p)
        self.eta.observe(done, held, now)  # O(1): this runs after every append
        if self.live is not None and now - self.last >= 0.125:
            self._redraw(p)

    def _redraw(self, p: Projections) -> None:
        assert self.live is not None
        self.last = self.clock()
        try:
            self.live.update(self.render(p))
        except OSError:
            self.mode = "off"  # the terminal is gone; the run goes on

    def warn(self, message: str) -> None:
        """A message on stderr (a warning, a failure as ``map.error_collection`` tells it):
        above the live line while it shows (written past it, the line would swallow it),
        else as it is, whatever the mode."""
        if self.live is not None:
            try:
                self.console.print(Text(message), soft_wrap=True)
                return
            except OSError:
                self.mode = "off"  # the terminal is gone; the run goes on
        stream = self.stream if self.stream is not None else sys.stderr
        with contextlib.suppress(OSError, ValueError):
            stream.write(message + "\n")
            stream.flush()

    def _write(self, line: str) -> None:
        stream = self.stream if self.stream is not None else sys.stderr
        try:
            stream.write(line + "\n")
            stream.flush()
        except (OSError, ValueError):
            self.mode = "off"  # the log is gone (EPIPE, closed); the run goes on

    def counts(self, p: Projections, now: float) -> Counts:
        c = p.items.counts
        done, failed = finished(c)
        return Counts(
            total=len(p.items.items),
            done=done,
            ok=done - failed,
            failed=failed,
            running=c["running"],
            retrying=self._retries(p, now) if c["pending"] else 0,
            pending=c["pending"],
            dead=c["dead"],
            paused=p.run.paused,
            circuit=p.circuit.state,
            listed=p.run.map_enqueued or bool(p.items.items),
            waiting=_waiting(p),
        )

    def _retries(self, p: Projections, now: float) -> int:
        """Items waiting for a retry: a scan of the items, kept for a second (longer when
        the scan is slow: at most a twentieth of the time goes to it)."""
        until, count = self._retrying
        if now >= until:
            began = time.perf_counter()
            states = list(p.items.items.values())
            count = sum(1 for s in states if s.status == "pending" and s.retry_at)
            cost = time.perf_counter() - began
            self._retrying = (now + max(1.0, 20 * cost), count)
        return count

    def plain_line(self, p: Projections) -> str:
        """One line of progress for a log: done, failed, running, retrying, rate, ETA."""
        now = self.clock()
        c = self.counts(p, now)
        self.eta.observe(c.done, c.held, now)
        elapsed = f"{human_duration(now - self.eta.started)} elapsed"
        if not c.listed:
            state = "paused" if c.paused else f"waiting for {self._awaited(p)}"
            return f"engine: {state} · {elapsed}"
        parts = [
            f"{c.done:,}/{c.total:,} done",
            f"{c.failed:,} failed",
            f"{c.running:,} running",
            f"{c.retrying:,} retrying",
            f"{self.eta.rate(c, now):,.1f} items/s",
            self.eta.eta(c, now),
            *spend_parts(p, c.done, c.total),
        ]
        if c.circuit != "closed":
            parts.append(f"circuit {c.circuit}")
        parts.append(elapsed)
        line = "engine: " + " · ".join(parts)
        return "\n".join([line, *(f"engine: {s}" for s in limits_lines(p))])

    def _awaited(self, p: Projections) -> str:
        """What a run whose items are not listed yet waits for, from its workflow."""
        if self._waiting is None:
            self._waiting = awaited(p.run.created.workflow if p.run.created else "")
        return self._waiting

    def render(self, p: Projections) -> Group:
        """The live line, and the newest failures under it."""
        now = self.clock()
        c = self.counts(p, now)
        self.eta.observe(c.done, c.held, now)
        eta = self.eta.eta(c, now)
        head = Text.assemble(
            (f"{c.done:,}/{c.total:,} done  ", "bold"),
            (f"ok {c.ok:,}  ", "green"),
            (f"failed {c.failed:,} ", "yellow"),
            (f"(dead {c.dead:,})  ", "red"),
            (f"running {c.running:,}  ", "cyan"),
            f"retrying {c.retrying:,}  ",
            f"pending {c.pending - c.retrying:,}  ",
            f"{self.eta.rate(c, now):,.1f} items/s  ",
            (eta, "bold magenta") if c.paused else eta,
        )
        for part in spend_parts(p, c.done, c.total):
            head.append(f"  {part}", "yellow")
        if c.circuit != "closed":
            head.append(f"  circuit {c.circuit}", "magenta")
        rows = []
        for item, records in list(p.dlq.history.items())[-5:]:
            last = records[-1].data
            width = max(40, self.console.width)
            text = (
                f"  {item[:28]:<28} {getattr(last, 'error_type', '')[:18]:<18} "
                f"{getattr(last, 'message', '')}"
            )
            rows.append(text[: width - 1])
        parts: list[Any] = [head]
        parts.extend(Text(f"  {line}", "magenta") for line in limits_lines(p))
        parts.extend(Text(f"  agent {agent_line(r)}", "cyan") for r in busiest(p))
        if rows:
            parts.append(Text("newest failures:", "dim"))
            parts.extend(Text(r, "dim") for r in rows)
        return Group(*parts)


def _waiting(p: Projections) -> bool:
    return p.circuit.state == "open" and p.circuit.until is not None


def limits_lines(p: Projections) -> list[str]:
    """What holds the run back, if anything: a usage limit's reset it waits for, its
    budget spent."""
    lines = []
    wait = wait_view(p)
    if wait is not None:
        lines.append(wait_line(wait))
    budget = budget_view(p)
    if budget is not None and budget.exhausted:
        lines.append(budget_line(budget, p.run.run_id or "RUN"))
    return lines


def awaited(workflow: str) -> str:
    """What a run waits for before its items are listed, from its workflow's text:
    its setup steps, the map's ``command``, or reading its ``input``."""
    try:
        spec = load_yaml(workflow) if workflow else None  # parsed as it was at the start
    except yaml.YAMLError:
        spec = None
    if not isinstance(spec, dict):
        return "the items"
    found = spec.get("map")
    source: dict[str, Any] = found if isinstance(found, dict) else {}
    lists = (
        "map.command to list the items"
        if source.get("command")
        else "the items of map.input"
        if source.get("input")
        else "the items"
    )
    return f"the setup steps, then {lists}" if spec.get("setup") else lists


def summary_table(p: Projections, *, status: str, wall: float) -> Table:
    c = p.items.counts
    table = Table(title=f"run {p.run.run_id}: {status}", show_header=True, header_style="bold")
    for name in (
        "items",
        "succeeded",
        "skipped",
        "failed",
        "dead",
        "duplicate",
        "attempts",
        "wall",
    ):
        table.add_column(name, justify="right")
    table.add_row(
        f"{len(p.items.items):,}",
        f"{c['succeeded']:,}",
        f"{c['skipped']:,}",
        f"{c['failed']:,}",
        f"{c['dead']:,}",
        f"{p.items.duplicates:,}",
        f"{p.items.dispatched:,}",
        human_duration(wall),
    )
    return table


class StdoutConsole(Console):
    """rich's console on stdout, whose closed pipe is the CLI's to answer.

    rich's own answer is exit 1 whatever the command's outcome; raising
    BrokenPipeError lets ``quiet_on_closed_stdout`` end with the right code.
    """

    def __init__(self) -> None:
        super().__init__(stderr=False)

    def on_broken_pipe(self) -> None:
        raise BrokenPipeError
