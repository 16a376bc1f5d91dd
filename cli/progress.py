"""The live progress display of ``engine run`` (rich), and the final summary."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from projections.replay import Projections

__all__ = ["Progress", "summary_table"]


class Progress:
    """Redraws at most 8 times a second from the projections."""

    def __init__(self, console: Console, *, enabled: bool) -> None:
        self.console = console
        self.enabled = enabled
        self.live: Live | None = None
        self.started = time.monotonic()
        self.last = 0.0
        self.first_done: tuple[float, int] | None = None

    def __enter__(self) -> Progress:
        if self.enabled:
            self.live = Live(console=self.console, refresh_per_second=8, transient=True)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)

    def update(self, p: Projections) -> None:
        if self.live is None:
            return
        now = time.monotonic()
        if now - self.last < 0.125:
            return
        self.last = now
        self.live.update(self.render(p))

    def render(self, p: Projections) -> Group:
        c = p.items.counts
        total = len(p.items.items)
        done = c["succeeded"] + c["skipped"] + c["dead"] + c["failed"]
        elapsed = time.monotonic() - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        remaining = total - done
        eta = f"{remaining / rate:,.0f}s" if rate > 0 and remaining else "-"
        head = Text.assemble(
            (f"{done:,}/{total:,} ", "bold"),
            (f"done {c['succeeded'] + c['skipped']:,}  ", "green"),
            (f"failed {c['failed']:,}  ", "yellow"),
            (f"dead {c['dead']:,}  ", "red"),
            (f"running {c['running']:,}  ", "cyan"),
            f"pending {c['pending']:,}  ",
            f"{rate:,.1f} items/s  ETA {eta}",
        )
        if p.circuit.state != "closed":
            head.append(f"  circuit {p.circuit.state}", "magenta")
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
        if rows:
            parts.append(Text("newest failures:", "dim"))
            parts.extend(Text(r, "dim") for r in rows)
        return Group(*parts)


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
        f"{wall:.1f}s",
    )
    return table
