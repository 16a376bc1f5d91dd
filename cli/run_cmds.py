"""Commands that run workflows: run, resume, validate, init, mock-agent."""

from __future__ import annotations

import asyncio
import math
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from cli.app import Context, cli, echo_json, quiet_on_closed_stdout
from cli.progress import (
    DEFAULT_INTERVAL,
    Progress,
    StdoutConsole,
    progress_interval,
    summary_table,
)
from cli.run_options import EXECUTOR, NO_CACHE, REFRESH_CACHE, check_workers
from cli.worktree_cmds import branch_next, branch_summary
from engine.errors import WorkflowError
from engine.home import RunRef, check_run_id
from engine.run import RunOptions, RunResult, execute_run, resume_run
from engine.run.driver import EXIT_BUDGET
from engine.tools.mock_agent import help_text as mock_agent_help
from engine.tools.mock_agent import main as mock_agent_main
from engine.views.status import status_view
from engine.views.worktrees import isolation_status
from engine.workflow.environment import validate_environment
from engine.workflow.load import load_workflow, validate_workflow
from engine.workflow.spec import check_env_name
from engine.workflow.starters import TEMPLATES, write_template
from ledger.errors import EngineError

__all__ = [
    "drive",
    "init_cmd",
    "mock_agent_cmd",
    "resume_cmd",
    "run_cmd",
    "validate_cmd",
]


def _variables(pairs: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        try:
            check_env_name(key)
        except ValueError:
            sep = ""
        if not sep:
            raise click.BadParameter(
                f"{pair[:60]!r} is not K=V with K a variable name", param_hint="--var"
            )
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise click.BadParameter(
                f"{key}: the value is not UTF-8 text", param_hint="--var"
            ) from None
        out[key] = value
    return out


JOBS = click.option(
    "-j",
    "--jobs",
    type=click.IntRange(min=1, max=100_000),
    help="Attempts at once (overrides max_parallel).",
)
AS_JSON = click.option("--json", "as_json", is_flag=True, help="Print the final status as JSON.")
NO_PROGRESS = click.option(
    "--no-progress",
    is_flag=True,
    help="No progress on stderr: neither the live line (a terminal) nor the plain line "
    "written every ENGINE_PROGRESS_INTERVAL seconds (default 5) elsewhere.",
)
"""Options shared by the commands that run attempts (run, resume, dlq retry)."""


@cli.command("run")
@click.argument("workflow", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--run-id",
    help="The run's id: 1-128 of A-Z a-z 0-9 . _ -, first a letter or digit, not `latest` "
    "[default: NAME-DATE-TIME-XXXX].",
)
@JOBS
@click.option(
    "--var",
    "variables",
    multiple=True,
    metavar="K=V",
    help="Set env.K for the run, over env_files, env and the profile (repeatable).",
)
@click.option(
    "--profile",
    metavar="NAME",
    help="Lay the workflow's profile NAME (profiles:) over env; recorded, and kept on resume.",
)
@EXECUTOR
@NO_CACHE
@REFRESH_CACHE
@click.option(
    "--allow-missing",
    is_flag=True,
    help="Start even when a step's program is not found on PATH (those steps will fail).",
)
@AS_JSON
@NO_PROGRESS
@click.pass_obj
def run_cmd(
    obj: Context,
    workflow: Path,
    run_id: str | None,
    jobs: int | None,
    variables: tuple[str, ...],
    profile: str | None,
    executor_name: str | None,
    workers: int | None,
    no_cache: bool,
    refresh_cache: bool,
    allow_missing: bool,
    as_json: bool,
    no_progress: bool,
) -> None:
    """Run a workflow: setup, the map over its items in parallel, reduce.

    Before a new run is created, the workflow is checked as `engine validate`
    checks it, and the machine for what the run needs: the map's input file,
    and each step's program on PATH (see --allow-missing); a refusal leaves
    no run behind. Exit 0 when every item succeeded; 1 when the run finished
    with failed or dead-lettered items or failed; 2 on bad input (also an
    unknown --profile); 3 when the run is locked; 4 when stopped by its
    budget, and 130 when interrupted (both resumable).
    """
    check_workers(executor_name, workers)
    if run_id is not None:
        check_run_id(run_id)  # before anything is read or created
    given = _variables(variables)
    loaded = load_workflow(workflow, profile=profile, variables=given)
    options = RunOptions(
        run_id=run_id,
        max_parallel=jobs,
        variables=given,
        profile=profile,
        executor_name=executor_name,
        workers=workers,
        no_cache=no_cache,
        refresh_cache=refresh_cache,
        allow_missing=allow_missing,
    )
    drive(obj, lambda o: execute_run(loaded, obj.home, o), options, as_json, no_progress)


def drive(
    obj: Context,
    start: Callable[[RunOptions], Coroutine[Any, Any, RunResult]],
    options: RunOptions,
    as_json: bool,
    no_progress: bool,
) -> None:
    """Run (or resume) with progress on stderr, print the outcome, exit with its code."""
    errors = Console(stderr=True)
    mode = "off" if no_progress else "live" if errors.is_terminal else "plain"
    # Only the plain line reads ENGINE_PROGRESS_INTERVAL: nothing else refuses a bad one.
    interval = progress_interval() if mode == "plain" else DEFAULT_INTERVAL
    progress = Progress(errors, mode=mode, interval=interval)
    started = time.monotonic()
    options.argv = ["engine", *sys.argv[1:]]
    options.on_change = progress.update
    options.warn = progress.warn
    options.adopt_orphans = True  # this process is the engine: its orphans are the run's
    with progress:
        result = asyncio.run(progress.run(start(options)))
    wall = time.monotonic() - started
    with quiet_on_closed_stdout(result.exit_code):  # `engine run wf.yml | head` keeps its code
        _print_outcome(result, wall, as_json)
    sys.exit(result.exit_code)


def _print_outcome(result: RunResult, wall: float, as_json: bool) -> None:
    console = StdoutConsole()
    p = result.projections
    if as_json:
        ref = RunRef(result.run_id, result.run_dir, result.run_dir / "ledger.ndjson")
        echo_json(status_view(ref, p))
    else:
        for text in result.output:
            click.echo(text)
        console.print(summary_table(p, status=result.status, wall=wall))
        if result.reason and result.status != "completed":
            click.echo(f"reason: {result.reason}")
        click.echo(f"run directory: {result.run_dir}")
        isolation = isolation_status(p)
        if isolation is not None:
            click.echo(branch_summary(isolation))
        click.echo("next:")
        if result.status in ("interrupted", "aborted"):
            more = " --budget USD" if result.exit_code == EXIT_BUDGET else ""  # raise it, go on
            click.echo(f"  engine resume {result.run_id}{more}        # go on where it stopped")
        if isolation is not None:
            for line in branch_next(isolation, result.run_id):
                click.echo(line)
        if p.dlq.dead:
            click.echo(f"  engine dlq list {result.run_id}        # what failed for good, and why")
        click.echo(f"  engine status {result.run_id}")
        if p.signatures.stats:
            click.echo(f'  engine query {result.run_id} "failures by signature"')
    sys.stdout.flush()


def _budget(_ctx: click.Context, _param: click.Parameter, usd: float | None) -> float | None:
    if usd is not None and not (math.isfinite(usd) and usd > 0):
        raise click.BadParameter(f"{usd} is not an amount in USD over 0", param_hint="--budget")
    return usd


@cli.command("resume")
@click.argument("run")
@click.option("--include-dlq", is_flag=True, help="Run the dead-lettered items again too (last).")
@JOBS
@click.option(
    "--budget",
    type=float,
    callback=_budget,
    metavar="USD",
    help="The run's budget from now on, what was spent included (recorded).",
)
@click.option(
    "--allow-changed",
    is_flag=True,
    help="Go on with a workflow file that changed since the run started (recorded).",
)
@EXECUTOR
@NO_CACHE
@REFRESH_CACHE
@AS_JSON
@NO_PROGRESS
@click.pass_obj
def resume_cmd(
    obj: Context,
    run: str,
    include_dlq: bool,
    jobs: int | None,
    budget: float | None,
    allow_changed: bool,
    executor_name: str | None,
    workers: int | None,
    no_cache: bool,
    refresh_cache: bool,
    as_json: bool,
    no_progress: bool,
) -> None:
    """Continue a run from its ledger.

    Runs what is pending, what a stopped engine left without an outcome
    (that attempt counts, as `interrupted`; its leftover processes are
    stopped first), and what waits for a retry; with --include-dlq, the
    dead-lettered items last. Setup steps that succeeded are not run again.
    The run keeps its variables (--var, env_files as read at its start, its
    profile); a secret's value, never recorded, comes from the environment
    variable of its name, else from the workflow file. Exit codes as for
    `engine run`; 2 when the run is completed or its
    workflow file changed (see --allow-changed); 3 when another engine holds
    the run; 4 again at once for a run stopped by its budget, unless --budget.
    """
    check_workers(executor_name, workers)
    ref = obj.run(run, allow_ledger_file=False)
    options = RunOptions(
        executor_name=executor_name,
        workers=workers,
        max_parallel=jobs,
        include_dlq=include_dlq,
        budget=budget,
        allow_changed=allow_changed,
        no_cache=no_cache,
        refresh_cache=refresh_cache,
    )
    drive(obj, lambda o: resume_run(ref.run_dir, o), options, as_json, no_progress)


@cli.command("validate")
@click.argument("workflow", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON object: ok, errors and warnings (each file, line, field, message, hint).",
)
@click.option(
    "--profile",
    metavar="NAME",
    help="Check that the workflow has the profile NAME (exit 2 if not).",
)
def validate_cmd(workflow: Path, as_json: bool, profile: str | None) -> None:
    """Check a workflow file; print every problem as FILE:LINE: field: what (fix).

    Everything `engine run` would refuse is found in one pass: types,
    durations, names, unknown keys (with "did you mean", also for other
    tools' spellings), every ${...} against the variables of its phase,
    injection-unsafe placements, filter, json_path, sort_by, regular
    expressions (RE2), inline items; a missing map.input file; and, when the
    items can be read without running a command, each ${item.FIELD} against
    them. Warnings (printed, exit 0): a field some items lack, an env name
    not set, a step's program not on PATH here (`engine run` refuses to start
    without it unless --allow-missing), an env_files file not found (a run
    skips it); a line of an env_files file that is not KEY=VALUE is an error.
    The file must be a regular file within ENGINE_MAX_WORKFLOW_BYTES (1 MiB).
    With --profile, the profile must be one of the workflow's. Exit 0 when it
    is valid, 2 when it is not.
    """
    try:
        spec, problems = validate_workflow(workflow, profile=profile)
        if spec is not None:
            problems = [*problems, *validate_environment(workflow, spec, profile=profile)]
    except WorkflowError as exc:
        spec, problems = None, exc.problems
    except EngineError as exc:
        if not as_json:
            raise
        error = {"file": str(workflow), "line": None, "field": None}
        echo_json(
            {
                "ok": False,
                "errors": [{**error, "message": exc.message, "hint": exc.hint}],
                "warnings": [],
            }
        )
        sys.exit(exc.exit_code)
    errors = [p for p in problems if p.severity == "error"]
    if as_json:
        echo_json(
            {
                "ok": not errors,
                "file": str(workflow),
                "workflow": spec.name if spec is not None else None,
                "errors": [p.to_json() for p in errors],
                "warnings": [p.to_json() for p in problems if p.severity == "warning"],
            }
        )
        sys.exit(2 if errors else 0)
    if errors or spec is None:
        raise WorkflowError(problems)
    for problem in problems:
        click.echo(str(problem), err=True)
    steps = len(spec.setup) + len(spec.reduce) + (len(spec.map.agent_template) if spec.map else 0)
    warned = f", {len(problems)} warning{'s' if len(problems) != 1 else ''}" if problems else ""
    click.echo(f"ok {workflow}: workflow {spec.name!r}, {steps} steps{warned}")


@cli.command("init")
@click.argument("directory", default=".", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--template",
    type=click.Choice(sorted(TEMPLATES)),
    default="map-reduce",
    show_default=True,
    help="Which starter workflow to write.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the files written as JSON.")
def init_cmd(directory: Path, template: str, as_json: bool) -> None:
    """Write a commented starter workflow that runs as written."""
    written = write_template(template, directory)
    if as_json:
        echo_json({"written": [str(path) for path in written]})
        return
    for path in written:
        click.echo(f"wrote {path}")
    click.echo(f"next: engine validate {written[0]} && engine run {written[0]}")


class _MockAgentCommand(click.Command):
    """The mock agent parses its own arguments (every one, so not an EngineCommand):
    its help is its parser's."""

    def get_help(self, ctx: click.Context) -> str:
        return mock_agent_help()


@cli.command(
    "mock-agent",
    cls=_MockAgentCommand,  # a plain command: --home and --debug are the mock agent's too
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.pass_context
def mock_agent_cmd(ctx: click.Context) -> None:
    """A scripted stand-in for an AI agent (see `engine mock-agent --help`)."""
    sys.exit(mock_agent_main(list(ctx.args)))
