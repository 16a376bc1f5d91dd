"""The click group, shared options, and how errors become exit codes.

Exit codes (the CLI contract): 0 ok; 1 the run finished with failures (or a
ledger is corrupt); 2 bad input; 3 run locked; 4 stopped by its budget, resumable;
130 interrupted, resumable.
Errors are one line on stderr: what, where, how to fix. ``--debug`` shows
the traceback before that line; the exit code stays the same.

The global options (``--home``, ``--debug``) are accepted after any
subcommand too, and standard output closed early by its reader (``| head``)
ends the command quietly with exit 0, as Unix tools do (:func:`quiet_on_closed_stdout`).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import msgspec

from cli.commands import COMMANDS
from engine import engine_version
from engine.home import RunRef, home_path, resolve_run
from ledger.errors import EngineError

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_LOCKED",
    "Context",
    "EngineCommand",
    "EngineGroup",
    "cli",
    "echo_json",
    "quiet_on_closed_stdout",
    "stdout_closed",
]

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_LOCKED = 3
EXIT_INTERRUPTED = 130


class CliError(click.ClickException):
    """An error shown as one line; each subclass is one exit code of the contract."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, *, located: bool = False) -> None:
        super().__init__(message)
        self.located = located

    def show(self, file: Any = None) -> None:
        message = self.format_message()
        click.echo(message if self.located else f"engine: error: {message}", err=True)


class Failed(CliError):
    """Exit 1: the run finished with failures, or a ledger or file cannot be used."""

    exit_code = EXIT_FAILED


class BadInput(CliError):
    """Exit 2: bad input (a workflow, an argument, a run id, a query)."""

    exit_code = EXIT_BAD_INPUT


class Locked(CliError):
    """Exit 3: another engine holds the run."""

    exit_code = EXIT_LOCKED


_BY_EXIT_CODE: dict[int, type[CliError]] = {
    cls.exit_code: cls for cls in (Failed, BadInput, Locked)
}


def cli_error(exc: EngineError) -> CliError:
    """The CLI's error for an engine error: the class of its kind's exit code."""
    return _BY_EXIT_CODE.get(exc.exit_code, Failed)(str(exc), located=exc.located)


_json = msgspec.json.Encoder()


def echo_json(value: object) -> None:
    """Print a value as one line of JSON on stdout."""
    sys.stdout.buffer.write(_json.encode(value) + b"\n")
    sys.stdout.flush()


@dataclass
class Context:
    """What every command gets: the home directory and the debug flag."""

    home: Path
    debug: bool
    parsed: bool = False
    """The subcommand's arguments are parsed: ``debug`` is final."""

    def run(self, ref: str, *, allow_ledger_file: bool = True) -> RunRef:
        return resolve_run(ref, self.home, allow_ledger_file=allow_ledger_file)


def stdout_closed(code: int = 0) -> None:
    """Standard output's reader is gone (``| head``): what is left to print goes
    nowhere, so the interpreter's flush at exit does not complain; exit ``code``
    (0, or the outcome of a run that had ended before its summary was cut)."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    raise SystemExit(code)


@contextlib.contextmanager
def quiet_on_closed_stdout(code: int = 0) -> Iterator[None]:
    """A write to a closed pipe (EPIPE) ends the command quietly with exit ``code``."""
    try:
        yield
    except BrokenPipeError:
        stdout_closed(code)


def _set_home(ctx: click.Context, _param: click.Parameter, value: Path | None) -> None:
    obj = ctx.find_object(Context)
    if value is not None and obj is not None:
        obj.home = home_path(value)


def _set_debug(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    obj = ctx.find_object(Context)
    if value and obj is not None:
        obj.debug = True


def _global_options() -> list[click.Parameter]:
    """``--home`` and ``--debug`` once more on a subcommand (hidden: the group's help has them)."""
    return [
        click.Option(
            ["--home"],
            type=click.Path(file_okay=False, path_type=Path),
            expose_value=False,
            hidden=True,
            callback=_set_home,
        ),
        click.Option(
            ["--debug"], is_flag=True, expose_value=False, hidden=True, callback=_set_debug
        ),
    ]


class EngineCommand(click.Command):
    """A subcommand that also takes the global options after its name."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.extend(_global_options())

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        rest = super().parse_args(ctx, args)
        obj = ctx.find_object(Context)
        if obj is not None:
            obj.parsed = True
        return rest


class EngineSubGroup(click.Group):
    """A group under ``engine`` (``dlq``, ``audit``...): the global options again, and
    its commands and groups of the same kinds."""

    command_class = EngineCommand
    group_class = type

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.extend(_global_options())


class EngineGroup(click.Group):
    """Turns domain errors into one-line messages and documented exit codes.

    Its commands are loaded on use: a command's module (named in
    :data:`cli.commands.COMMANDS`) is imported when the command is looked up,
    and its ``@cli.command`` registers it; the group's ``--help`` lists the
    commands from the table, importing none of them.
    """

    command_class = EngineCommand
    group_class = EngineSubGroup

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            importlib.import_module(COMMANDS[cmd_name][0])
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """click's list of commands, with the short help of those not loaded from the table."""
        names = [
            n
            for n in self.list_commands(ctx)
            if n not in self.commands or not self.commands[n].hidden
        ]
        if not names:
            return
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = [(name, self._short_help(name, limit)) for name in names]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def _short_help(self, name: str, limit: int) -> str:
        loaded = self.commands.get(name)
        if loaded is not None:
            return loaded.get_short_help_str(limit)
        return click.Command(name, help=COMMANDS[name][1]).get_short_help_str(limit)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        with quiet_on_closed_stdout():  # `engine --help | head -1`
            return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            with quiet_on_closed_stdout():
                return super().invoke(ctx)
        except EngineError as exc:
            _traceback_if_debug(ctx)
            raise cli_error(exc) from None
        except KeyboardInterrupt:
            click.echo("engine: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except click.UsageError as exc:
            # One line, like every other error: what is wrong, and where to look.
            where = exc.ctx.command_path if exc.ctx is not None else "engine"
            raise BadInput(f"{exc.format_message()} (see: {where} --help)") from None
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except OSError as exc:
            _traceback_if_debug(ctx)
            where = f"{exc.filename}: " if exc.filename else ""
            raise Failed(
                f"{where}{exc.strerror or exc} (check the path and its permissions)"
            ) from None
        except Exception as exc:
            _traceback_if_debug(ctx)
            raise Failed(
                f"internal error: {type(exc).__name__}: {exc} (rerun with --debug and report it)"
            ) from None


def _traceback_if_debug(ctx: click.Context) -> None:
    """With ``--debug`` (before or after the subcommand), the traceback on stderr first.

    The flag is click's, as parsed; only an error raised while the subcommand's
    arguments were still being parsed (a ``--home`` callback, before a later
    ``--debug`` was reached) looks at the command line, up to a ``--``.
    """
    obj = ctx.find_object(Context)
    if obj is None:
        return
    if obj.debug or (not obj.parsed and "--debug" in _options_part(sys.argv[1:])):
        traceback.print_exc(file=sys.stderr)


def _options_part(argv: list[str]) -> list[str]:
    """The arguments before a ``--`` (after it, every one is an argument, not an option)."""
    return argv[: argv.index("--")] if "--" in argv else argv


@click.group(cls=EngineGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Engine home directory [default: $ENGINE_HOME or ./.engine].",
)
@click.option(
    "--debug",
    is_flag=True,
    help="Show the traceback before an error's line (the exit code stays the same).",
)
@click.version_option(engine_version(), prog_name="engine")
@click.pass_context
def cli(ctx: click.Context, home: Path | None, debug: bool) -> None:
    """A durable, event-sourced job engine.

    Every command, heartbeat and outcome of a run is appended to a
    hash-chained, fsynced ledger; everything else is rebuilt from it.
    --home and --debug may also follow the subcommand.
    """
    ctx.obj = Context(home=home_path(home), debug=debug)
