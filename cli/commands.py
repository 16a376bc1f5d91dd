"""Which module defines each command of ``engine``, and its line in ``engine --help``.

The group imports a command's module only when the command is used (see
:class:`cli.app.EngineGroup`), so ``engine --help`` and ``engine status``
start without the modules of ``engine run`` (the workflow spec, the
executors), of ``engine query`` (DuckDB) or of ``tail -f`` (watchfiles).
``engine --help`` lists the commands from this table without importing them;
``tests/test_cli_imports.py`` fails when a line here differs from the
command's own short help.
"""

from __future__ import annotations

__all__ = ["COMMANDS"]

COMMANDS: dict[str, tuple[str, str]] = {
    "audit": ("cli.ledger_cmds", "Check and report on a run's audit trail."),
    "cancel": (
        "cli.control_cmds",
        "Stop a run: no new attempts, running ones terminated, `run.aborted`.",
    ),
    "dlq": ("cli.dlq_cmds", "The dead-letter queue: items that failed for good."),
    "init": ("cli.run_cmds", "Write a commented starter workflow that runs as written."),
    "logs": ("cli.logs_cmds", "Print what an item's attempt wrote to stdout (or stderr)."),
    "mock-agent": (
        "cli.run_cmds",
        "A scripted stand-in for an AI agent (see `engine mock-agent --help`).",
    ),
    "patterns": ("cli.query_cmds", "Recurring failures and their remediation."),
    "pause": (
        "cli.control_cmds",
        "Stop starting attempts and steps in a running run (running ones finish).",
    ),
    "query": (
        "cli.query_cmds",
        "Ask a run's ledger (or every run's, with --all) a named question or SQL.",
    ),
    "replay": ("cli.ledger_cmds", "Rebuild a run's state by replaying its ledger."),
    "resume": ("cli.run_cmds", "Continue a run from its ledger."),
    "run": ("cli.run_cmds", "Run a workflow: setup, the map over its items in parallel, reduce."),
    "runs": ("cli.status_cmds", "List the runs under the home directory, oldest first."),
    "schema": (
        "cli.ledger_cmds",
        "Print or write the JSON Schemas of every event type and the projections.",
    ),
    "stats": (
        "cli.query_cmds",
        "Wall time, items/s, attempt duration percentiles, parallel efficiency, retry cost.",
    ),
    "status": (
        "cli.status_cmds",
        "Show a run's status and item counts (RUN defaults to `latest`).",
    ),
    "tail": ("cli.ledger_cmds", "Print a run's newest ledger records; with -f, follow new ones."),
    "unpause": ("cli.control_cmds", "Let a paused run start attempts and steps again."),
    "validate": (
        "cli.run_cmds",
        "Check a workflow file; print every problem as FILE:LINE: field: what (fix).",
    ),
    "worktree": ("cli.worktree_cmds", "The git worktrees of a run with map.isolation: worktree."),
}
"""Command name: (the module that defines it, its short help)."""
