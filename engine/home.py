"""The engine's home directory and how a ``RUN`` argument finds a run.

Layout: ``<home>/runs/<run-id>/ledger.ndjson`` (plus the run's lock, logs and
files); with ``map.isolation: worktree``, the run's git worktrees under
``<home>/worktrees/<run-id>/`` (``run`` for the run's own, ``<item>-<attempt>``
for each attempt's). Home is ``--home``, else ``$ENGINE_HOME``, else ``./.engine``.
``RUN`` is a run id, ``latest``, or a path to a run directory or ledger file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import msgspec

from engine.errors import BadRunId, RunNotFound
from ledger.codec import LEDGER_NAME
from ledger.lock import RunLock
from projections.replay import Projections

__all__ = [
    "DEFAULT_HOME",
    "BadRunId",
    "RunNotFound",
    "RunRef",
    "check_run_id",
    "effective_status",
    "home_path",
    "list_runs",
    "patterns_ledger",
    "resolve_run",
    "worktrees_dir",
]

DEFAULT_HOME = ".engine"

RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""A run id: one safe path component, found again by every command that takes ``RUN``."""
KEYWORDS = frozenset({"latest"})
"""Words that a ``RUN`` argument reads as something else than a run id."""


@dataclass(frozen=True, slots=True)
class RunRef:
    """Where one run lives."""

    run_id: str
    run_dir: Path
    ledger: Path

    @property
    def exists(self) -> bool:
        return self.ledger.is_file()


def check_run_id(run_id: str) -> str:
    """``run_id`` if it is a safe run id, else :class:`BadRunId` saying what is allowed.

    A run id names a directory under ``<home>/runs``: 1 to 128 of ``A-Z a-z
    0-9 . _ -``, starting with a letter or digit (so never ``.``, ``..``, a
    hidden name or an option), and not a keyword (``latest``).
    """
    if RUN_ID.fullmatch(run_id) and run_id not in KEYWORDS:
        return run_id
    shown = run_id if len(run_id) <= 60 else run_id[:57] + "..."
    why = (
        f"{run_id!r} is a keyword of RUN arguments"
        if run_id in KEYWORDS
        else f"{shown!r} is not a run id"
    )
    raise BadRunId(
        f"--run-id: {why}".replace("\n", "\\n"),
        run_id=run_id,
        hint="use 1 to 128 of A-Z a-z 0-9 . _ -, starting with a letter or digit",
    )


def home_path(home: str | os.PathLike[str] | None = None) -> Path:
    """The home directory: the argument, ``$ENGINE_HOME``, or ``./.engine``."""
    if home is not None:
        return Path(home)
    return Path(os.environ.get("ENGINE_HOME") or DEFAULT_HOME)


def patterns_ledger(home: Path) -> Path:
    """The home's ledger of acknowledged failure patterns."""
    return home / "patterns" / "ledger.ndjson"


def worktrees_dir(home: Path, run_id: str) -> Path:
    """Where the git worktrees of a run live: ``<home>/worktrees/<run-id>`` (absolute)."""
    return (home / "worktrees" / run_id).resolve()


def _first_ts(ledger: Path) -> str:
    """The first record's ``ts`` (when the run began); '' when unreadable."""
    try:
        with open(ledger, "rb") as f:
            line = f.readline(1 << 20)
        ts = msgspec.json.decode(line, type=dict[str, object]).get("ts", "")
    except (OSError, msgspec.DecodeError):
        return ""
    return ts if isinstance(ts, str) else ""


def list_runs(home: Path) -> list[RunRef]:
    """Every run under ``home``, oldest first (by its first record's time)."""
    runs_dir = home / "runs"
    if not runs_dir.is_dir():
        return []
    refs = [
        RunRef(d.name, d, d / LEDGER_NAME)
        for d in runs_dir.iterdir()
        if d.is_dir() and (d / LEDGER_NAME).is_file()
    ]
    refs.sort(key=lambda r: (_first_ts(r.ledger), r.run_id))
    return refs


def resolve_run(ref: str, home: Path, *, allow_ledger_file: bool = True) -> RunRef:
    """Find the run that ``ref`` names, or raise :class:`RunNotFound`."""
    if ref == "latest":
        runs = list_runs(home)
        if not runs:
            raise RunNotFound(
                f"no runs under {home / 'runs'}",
                ref=ref,
                hint="start one with `engine run WORKFLOW`, or pass --home",
            )
        return runs[-1]
    run_dir = home / "runs" / ref
    if os.sep not in ref and not ref.startswith(".") and (run_dir / LEDGER_NAME).is_file():
        return RunRef(ref, run_dir, run_dir / LEDGER_NAME)  # a run id first, then a path
    path = Path(ref)
    if os.sep in ref or ref.startswith(".") or path.exists():
        if path.is_dir():
            ledger = path / LEDGER_NAME
            if not ledger.is_file():
                raise RunNotFound(
                    f"{path}: not a run directory (no {LEDGER_NAME})",
                    ref=ref,
                    hint="pass a run id, `latest`, or a run directory",
                )
            return RunRef(path.resolve().name, path, ledger)
        if path.is_file() and allow_ledger_file:
            return RunRef(path.resolve().parent.name, path.parent, path)
        if path.exists() or os.sep in ref:
            raise RunNotFound(f"{ref}: no such run directory or ledger file", ref=ref)
    if not (run_dir / LEDGER_NAME).is_file():
        raise RunNotFound(
            f"no run {ref!r} under {home / 'runs'}",
            ref=ref,
            hint=f"see the run ids in {home / 'runs'}, or pass --home or a path",
        )
    return RunRef(ref, run_dir, run_dir / LEDGER_NAME)


def effective_status(projections: Projections, run_dir: Path) -> str:
    """The run's status: ``interrupted`` for a running run nobody holds, ``paused`` for
    one its engine holds paused (``engine pause``: it starts nothing until unpaused)."""
    status = projections.run.status
    if status in ("running", "created"):
        if RunLock(run_dir).probe() is None:
            return "interrupted"
        if projections.run.paused:
            return "paused"
    return status
