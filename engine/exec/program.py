"""What an attempt's steps mean, whatever runs them.

Every executor runs the same program: each step becomes an argv and an
environment (:func:`step_command`), its output feeds the next steps' context
(``last``, captures), the last step's output is the item's result, a failed
step runs its ``on_failure`` handlers and ends the sequence
(:class:`engine.exec.sequence.StepSequence`), and what is recorded is
redacted (:class:`OutputRedactor`). Only how a process
is started and watched differs from one executor to another; none of that is
here.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from engine.redact import secret_forms
from engine.workflow.spec import Step
from engine.workflow.template import render_argv, render_shell, render_text, value_text
from ledger.atomic import FILE_MODE, make_private_dir

__all__ = [
    "ARG_LIMIT",
    "CANCELLED",
    "NO_FLAGS",
    "STDERR_LIMIT",
    "VARIABLES_BUDGET",
    "AgentFlags",
    "CaptureError",
    "OutputRedactor",
    "StepResult",
    "Unpassable",
    "ValueFiles",
    "agent_argv",
    "agent_words",
    "capture",
    "check_passable",
    "encoded_size",
    "output_secrets",
    "parse_output",
    "start_failure_note",
    "step_command",
    "step_cwd",
    "step_limit",
]

ARG_LIMIT = 32 * os.sysconf("SC_PAGE_SIZE")
"""Bytes one argument, or one ``NAME=value`` environment entry, can hold
(Linux's MAX_ARG_STRLEN, the terminating NUL included): 128 KiB."""

VARIABLES_BUDGET = 512 * 1024
"""Bytes of a shell command's variables kept in its environment: the kernel
allows about 2 MiB for all arguments and the environment together."""

STDERR_LIMIT = 64 * 1024
"""Bytes of a step's stderr kept for ``${last.stderr}`` and ``${shell.stderr}`` (its end)."""

_HINT = "; read a large item from the file $ENGINE_ITEM_FILE names instead"


def agent_argv(command: str) -> list[str]:
    """The agent command line as argv (``claude -p`` -> ["claude", "-p"])."""
    return shlex.split(command)


# --- what a process can be given ----------------------------------------------------------


class Unpassable(ValueError):
    """A value that cannot reach a process (a NUL byte, a bad name, too long)."""


def encoded_size(text: str, what: str) -> int:
    """Bytes of ``text`` as the process gets it; :class:`Unpassable` if it cannot."""
    if "\0" in text:
        raise Unpassable(f"{what} contains a NUL byte, which no process can be given")
    if text.isascii():
        return len(text)  # known without encoding anything (CPython keeps the flag)
    try:
        return len(os.fsencode(text))
    except UnicodeEncodeError:
        raise Unpassable(f"{what} is not valid text (a lone surrogate)") from None


def check_passable(argv: Sequence[str], env: Mapping[str, str]) -> None:
    """Raise :class:`Unpassable` for what ``exec`` would refuse, saying what and how to fix it."""
    for index, arg in enumerate(argv):
        if arg.isascii() and len(arg) < ARG_LIMIT and "\0" not in arg:
            continue  # the usual case, decided at once
        what = f"argument {index} of the command"
        size = encoded_size(arg, what)
        if size + 1 > ARG_LIMIT:
            raise Unpassable(f"{what} is {size} bytes, over the {ARG_LIMIT} one can hold{_HINT}")
    for key, value in env.items():
        if (
            key.isascii()
            and value.isascii()
            and len(key) + len(value) + 2 <= ARG_LIMIT
            and key
            and "=" not in key
            and "\0" not in key
            and "\0" not in value
        ):
            continue
        if not key or "=" in key or "\0" in key:
            raise Unpassable(f"illegal environment variable name {key!r}")
        what = f"environment variable {key}"
        encoded_size(key, f"the name of {what}")
        size = len(key) + 1 + encoded_size(value, f"the value of {what}")
        if size + 1 > ARG_LIMIT:
            raise Unpassable(f"{what} is {size} bytes, over the {ARG_LIMIT} one can hold{_HINT}")


class ValueFiles:
    """Values too large for the environment, in private files of one attempt.

    Each text is written once, to ``DIRECTORY/PREFIX.NAME``; :meth:`remove`
    deletes them all when the attempt ends.
    """

    _made: ClassVar[set[str]] = set()
    """Directories this process has made (or found) already."""

    def __init__(self, directory: str, prefix: str) -> None:
        self.directory = directory
        self.prefix = prefix
        self._paths: dict[str, str] = {}
        """text -> path"""

    def path(self, name: str, text: str) -> str:
        """A file holding ``text``, written at the first call for it."""
        path = self._paths.get(text)
        if path is None:
            if self.directory not in self._made:
                make_private_dir(Path(self.directory))
                self._made.add(self.directory)
            path = f"{self.directory}/{self.prefix}.{name}"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
            try:
                view = memoryview(os.fsencode(text))
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            self._paths[text] = path
        return path

    def remove(self) -> None:
        for path in self._paths.values():
            with contextlib.suppress(OSError):
                os.unlink(path)
        self._paths.clear()


# --- a step as a command --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AgentFlags:
    """What one ``claude:`` step's run is given beside its prompt."""

    resume: str | None = None
    """The agent session it continues (``--resume SESSION``)."""
    max_budget_usd: float | None = None
    """What it may spend (``--max-budget-usd USD``)."""


NO_FLAGS = AgentFlags()


def agent_words(agent_command: Sequence[str], flags: AgentFlags) -> list[str]:
    """The agent's command line with ``flags``, each unless the command gives it already."""
    words = list(agent_command)
    given = {word.partition("=")[0] for word in words}
    if flags.resume is not None and "--resume" not in given:
        words += ["--resume", flags.resume]
    if flags.max_budget_usd is not None and "--max-budget-usd" not in given:
        words += ["--max-budget-usd", str(round(float(flags.max_budget_usd), 6))]
    return words


def step_command(
    step: Step,
    context: Mapping[str, Any],
    *,
    env: Mapping[str, str],
    agent_command: Sequence[str],
    heartbeat_file: str,
    files: ValueFiles,
    agent_flags: AgentFlags = NO_FLAGS,
) -> tuple[list[str], dict[str, str]]:
    """The argv and environment (over ``env``, the attempt's) that run ``step``.

    A shell step is ``/bin/sh -c`` with its values in environment variables
    (or, too large for it, in files); an argv or agent step gets its values
    as whole arguments (an agent step, its ``agent_flags`` after the agent's
    command). Raises ValueError (a template error, or :class:`Unpassable`) when
    it cannot be run. A ``write_file`` step has none: the
    executor writes its file (:mod:`engine.exec.write_file`).
    """
    if step.write_file is not None:
        raise ValueError("a write_file step is written by the executor, not run as a command")
    env = dict(env)
    env["ENGINE_HEARTBEAT_FILE"] = heartbeat_file
    if "item" in context and (item_file := _item_file(context["item"], files)) is not None:
        env["ENGINE_ITEM_FILE"] = item_file
    for key, value in step.env.items():
        env[key] = render_text(value, context)
    if step.kind != "shell":
        agent = agent_words(agent_command, agent_flags) if step.kind == "claude" else []
        words = [*agent, step.claude or ""] if step.kind == "claude" else [*(step.argv or [])]
        argv, variables = render_argv(words, context, literal=len(agent))
        return argv, {**env, **variables}
    in_children: set[str] = set()
    command, variables = render_shell(step.text, context, in_children=in_children)
    command = _large_values_from_files(command, variables, env, in_children, files)
    env.update(variables)
    return ["/bin/sh", "-c", command], env


def step_cwd(step: Step, cwd: Path) -> str:
    """The step's working directory: its ``cwd`` under the attempt's."""
    return str(cwd / step.cwd) if step.cwd else str(cwd)


def step_limit(step: Step, deadline: float | None, now: float) -> float | None:
    """Seconds the step may run: its own timeout, within what is left of the attempt's."""
    limit = step.timeout
    if deadline is not None:
        remaining = max(0.0, deadline - now)
        limit = remaining if limit is None else min(limit, remaining)
    return limit


def _item_file(item: Any, files: ValueFiles) -> str | None:
    """``ENGINE_ITEM_FILE``: the item's text in a file, when it is too large for an argument."""
    if isinstance(item, str) and len(item) * 4 < ARG_LIMIT:
        return None  # the common case, decided without encoding anything
    text = value_text(item)
    if encoded_size(text, "the item") + 1 < ARG_LIMIT:
        return None
    return files.path("item", text)


def _large_values_from_files(
    command: str,
    variables: dict[str, str],
    env: dict[str, str],
    in_children: set[str],
    files: ValueFiles,
) -> str:
    """Variables too large for the environment reach the shell through files.

    Each such ``NAME`` is left out of the environment; ``NAME_FILE`` names
    a file holding its value, and the command starts by reading it into
    the (unexported) shell variable ``NAME``, so ``${NAME}`` references
    expand to the value as before (in builtins, pipes, redirections: an
    argument of a program cannot hold it anyway). Each value over
    :data:`ARG_LIMIT` goes that way, then the largest others while they
    come to more than :data:`VARIABLES_BUDGET` together. A shell the
    command starts (``bash -c``) would not see such a variable: a value it
    expands that must go through a file fails the attempt (:class:`Unpassable`).
    """
    sizes = {
        name: len(name) + 2 + encoded_size(text, f"${{{name}}}") for name, text in variables.items()
    }
    total = sum(sizes.values())
    prefix = []
    for name in sorted(sizes, key=sizes.__getitem__, reverse=True):
        if sizes[name] <= ARG_LIMIT and total <= VARIABLES_BUDGET:
            break
        if name in in_children:
            raise Unpassable(
                f"a value of {sizes[name]:,} bytes is expanded by a shell the command "
                "starts, whose environment cannot hold it; read it there from a file "
                "(bash -c 'v=$(cat \"$ENGINE_ITEM_FILE\"); …' for the item)"
            )
        total -= sizes[name]
        text = variables.pop(name)
        env[f"{name}_FILE"] = files.path(name, text)
        prefix.append(f'{name}=$(cat "${name}_FILE"; printf x) || exit 125; {name}=${{{name}%x}}; ')
    return "".join(prefix) + command


# --- what happened to a step ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StepResult:
    """What happened to one step: how its process ended, or why none ran."""

    exit_code: int | None = None
    signal: int | None = None
    timed_out: bool = False
    error: str | None = None
    error_type: str | None = None
    stdout: bytes = b""
    """What the step printed (the whole of it: captures and the result read it)."""
    stderr: bytes = b""
    """The end of what the step wrote to stderr (at most :data:`STDERR_LIMIT` bytes),
    redacted as its log is."""

    @classmethod
    def exited(
        cls, returncode: int | None, *, timed_out: bool, stdout: bytes, stderr: bytes = b""
    ) -> StepResult:
        """A process that ran: a negative return code is the signal that ended it."""
        if returncode is not None and returncode < 0:
            return cls(signal=-returncode, timed_out=timed_out, stdout=stdout, stderr=stderr)
        return cls(exit_code=returncode, timed_out=timed_out, stdout=stdout, stderr=stderr)

    @property
    def ok(self) -> bool:
        """The step's process exited 0 and the engine found nothing wrong with it."""
        return not self.timed_out and self.exit_code == 0 and not self.error_type

    @classmethod
    def not_started(cls, message: str) -> StepResult:
        """A step whose command cannot be made or given to a process: ``validation_failed``."""
        return cls(error=message, error_type="validation_failed")

    @classmethod
    def cannot_start(cls, program: str) -> StepResult:
        """A program that could not be started (not found, not executable): exit code 127."""
        return cls(exit_code=127, error=f"cannot start {program!r}")


CANCELLED = StepResult(error="cancelled before it started")
"""A step whose attempt was cancelled before its process started: it never starts."""


def start_failure_note(program: str, cwd: str, exc: OSError) -> bytes:
    """The line the stderr log gets when ``program`` cannot be started in ``cwd``."""
    where = f" in {cwd}" if exc.filename == cwd else ""
    return f"engine: cannot start {program!r}{where}: {exc.strerror}\n".encode()


def _not_json(name: str) -> Any:
    """``NaN``, ``Infinity``: Python's json reads them, JSON (and the ledger) has none."""
    raise ValueError(f"{name} is not a JSON value")


class CaptureError(ValueError):
    """Output that its ``capture_format`` cannot read (a number or a boolean that is not one)."""


_INTEGER = re.compile(r"[-+]?[0-9]{1,4000}")
_NUMBER = re.compile(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
_BOOLEANS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
_INT_RANGE = 2**63
"""Integers the ledger holds as integers; larger ones are kept as floats."""


def _shown(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:57] + "...")


def _number(text: str) -> int | float:
    """``capture_format: number``: an int when integral, else a float (:class:`CaptureError`:
    not a number)."""
    if _INTEGER.fullmatch(text) and abs(value := int(text)) < _INT_RANGE:
        return value
    number = float(text) if len(text) <= 400 and _NUMBER.fullmatch(text) else math.nan
    if not math.isfinite(number):
        raise CaptureError(f"{_shown(text)} is not a number (capture_format: number)")
    if number.is_integer() and abs(number) < _INT_RANGE:
        return int(number)
    return number


def capture(stdout: str, fmt: str) -> Any:
    """A step's output as its ``capture_format`` reads it (JSON that is not JSON: the text).

    ``number`` and ``boolean`` (``true``/``false``, ``yes``/``no``, ``1``/``0``, in any
    case) read the stripped output; one that is not such a value raises
    :class:`CaptureError`, saying why.
    """
    if fmt == "json":
        try:
            return json.loads(stdout, parse_constant=_not_json)
        except ValueError:
            return stdout.strip()
    if fmt == "lines":
        return [line for line in stdout.splitlines() if line.strip()]
    if fmt == "number":
        return _number(stdout.strip())
    if fmt == "boolean":
        text = stdout.strip()
        value = _BOOLEANS.get(text.lower())
        if value is None:
            raise CaptureError(
                f"{_shown(text)} is not a boolean (capture_format: boolean reads "
                "true/false, yes/no or 1/0)"
            )
        return value
    return stdout.strip()


_FENCED_JSON = re.compile(r"```json[ \t]*\n(.*?)\n[ \t]*```", re.DOTALL)
"""A fenced JSON block, as an agent writes one in its answer."""


def parse_output(stdout: str, fmt: str) -> tuple[Any, str | None]:
    """The item's result from the last step's output, and why it could not be read.

    For ``json``, output that is not JSON but holds a fenced ```` ```json ````
    block (an agent's answer) is read as that block (the last one).
    """
    if fmt == "json":
        try:
            return json.loads(stdout, parse_constant=_not_json), None
        except ValueError as exc:
            blocks = _FENCED_JSON.findall(stdout)
            if blocks:
                try:
                    return json.loads(blocks[-1], parse_constant=_not_json), None
                except ValueError as inner:
                    return None, f"output's ```json block is not JSON: {inner}"
            return None, f"output is not JSON: {exc}"
    return stdout.strip(), None


# --- redaction of output ------------------------------------------------------------------------


def output_secrets(redact: Sequence[str]) -> tuple[bytes, ...]:
    """Every form of each secret as output may hold it, as bytes (longest first)."""
    return tuple(s.encode() for s in secret_forms(redact))


class OutputRedactor:
    """Secrets replaced by ``***`` in a stream of output, chunk by chunk.

    A secret may arrive cut across two chunks: the last bytes of each chunk
    (one fewer than the longest secret) are kept back until the next one, or
    the end (:meth:`end`).
    """

    __slots__ = ("carry", "hold", "secrets")

    def __init__(self, secrets: tuple[bytes, ...]) -> None:
        self.secrets = secrets
        self.hold = max((len(x) for x in secrets), default=1) - 1
        """Bytes kept back until more come."""
        self.carry = b""

    def feed(self, data: bytes) -> bytes:
        """What of the stream so far can be written, redacted."""
        data = self.carry + data
        for secret in self.secrets:
            data = data.replace(secret, b"***")
        if self.hold:
            data, self.carry = data[: -self.hold], data[-self.hold :]
        return data

    def end(self) -> bytes:
        """What was kept back (the stream has ended)."""
        data, self.carry = self.carry, b""
        return data
