"""A step's ``validate``: how complete its work is, and the rounds that repair it.

After a step succeeds, its validation steps run (steps like any other, on
the same executor path, with the same environment); then their result is
read: JSON from ``result_file`` (a template, relative to the step's working
directory, at most :data:`RESULT_LIMIT` bytes, written by this round's steps) or else
the last validation step's stdout (the whole of it, or else its last line).
The result's ``completion_percentage`` (or ``completion``), a number from 0
to 100, makes the round complete when it reaches ``threshold``; ``status``,
``missing`` and ``gaps`` are passed on. A result that cannot be read (none,
not JSON, no number) is a round at 0% with the reason.

While a round is incomplete and rounds remain (``on_incomplete.max_attempts``
in all, the first included; one without ``on_incomplete``), the
``on_incomplete`` steps run with ``${validation.*}`` and the work is
validated again. Still incomplete after the last round: with ``fail``
(the default) the step fails ``validation_failed``, else the sequence goes
on. Each round is a :class:`~ledger.events.ValidationRound` that the outcome
events record.

:class:`ValidationLoop` is a state machine like
:class:`engine.exec.sequence.StepSequence`, which drives it: no process,
its clock injected (``time.monotonic`` by default), so tests run it alone.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.exec.program import StepResult, step_cwd
from engine.workflow.spec import Step, ValidateSpec
from engine.workflow.template import render_text
from engine.workflow.variables import last_step
from ledger.events import ValidationRound

__all__ = [
    "RESULT_LIMIT",
    "ROUNDS_RECORDED",
    "Reading",
    "ValidationLoop",
    "parse_result",
    "read_result_file",
    "recorded",
]

RESULT_LIMIT = 1 << 20
"""Bytes of a validation result read at most (1 MiB)."""
ROUNDS_RECORDED = 256
"""Rounds an outcome records at most (the last ones), each reason at most
:data:`REASON_LIMIT` characters: with its other fields, the record always fits."""
REASON_LIMIT = 300

_FileState = tuple[int, int, int, int]
"""A file's inode, size, mtime and ctime (ns): whether a round's steps wrote it."""


@dataclass(frozen=True)
class Reading:
    """A validation result as read: its numbers, or why there are none."""

    completion: float = 0.0
    status: str = ""
    missing: Any = dataclasses.field(default_factory=list)
    gaps: Any = dataclasses.field(default_factory=dict)
    reason: str | None = None


def _number(value: float) -> int | float:
    """50.0 -> 50 (as ``${validation.completion}`` and messages show it)."""
    return int(value) if float(value).is_integer() else round(value, 2)


def _decode(text: str) -> Any:
    """The whole text as JSON, or else its last non-empty line (a validator's log before it)."""
    try:
        return json.loads(text)
    except ValueError:
        lines = [line for line in text.splitlines() if line.strip()]
        if len(lines) > 1:
            try:
                return json.loads(lines[-1])
            except ValueError:
                pass
        raise


def parse_result(data: bytes, source: str) -> Reading:
    """A validation result from its bytes; ``source`` names where they came from."""
    text = data.decode("utf-8", "replace").strip()
    if not text:
        return Reading(reason=f"{source} is empty")
    try:
        value = _decode(text)
    except (ValueError, RecursionError) as exc:
        why = " ".join(str(exc).split())[:200] if isinstance(exc, ValueError) else "too deep"
        return Reading(reason=f"{source} is not JSON ({why})")
    if not isinstance(value, dict):
        return Reading(reason=f"{source} is not a JSON object")
    completion = value.get("completion_percentage", value.get("completion"))
    if (
        isinstance(completion, bool)
        or not isinstance(completion, int | float)
        or not math.isfinite(completion)
    ):
        return Reading(
            reason=f"{source} has no completion_percentage (a number from 0 to 100)",
            status=value["status"] if isinstance(value.get("status"), str) else "",
        )
    status = value.get("status")
    return Reading(
        completion=float(completion),
        status=status if isinstance(status, str) else "",
        missing=value.get("missing", []),
        gaps=value.get("gaps", {}),
    )


def _state(path: Path) -> _FileState | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def read_result_file(path: Path, shown: str, before: _FileState | None) -> Reading:
    """``result_file`` read, at most :data:`RESULT_LIMIT` bytes; ``before``: its state
    before the round's steps (a file they did not write is not their result)."""
    source = f"result_file {shown}"
    now = _state(path)
    if now is None:
        return Reading(reason=f"{source} was not found")
    if now == before:
        return Reading(reason=f"{source} was not written by the validation steps")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        return Reading(reason=f"{source} cannot be read ({exc.strerror})")
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return Reading(reason=f"{source} is not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size <= RESULT_LIMIT and (chunk := os.read(fd, RESULT_LIMIT + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        return Reading(reason=f"{source} cannot be read ({exc.strerror})")
    finally:
        os.close(fd)
    if size > RESULT_LIMIT:
        return Reading(reason=f"{source} is over {RESULT_LIMIT:,} bytes")
    return parse_result(b"".join(chunks), source)


def recorded(rounds: list[ValidationRound]) -> tuple[ValidationRound, ...]:
    """The rounds an outcome records: the last :data:`ROUNDS_RECORDED` of them."""
    return tuple(rounds[-ROUNDS_RECORDED:])


def _failed(result: StepResult, *, stopped: bool) -> bool:
    return stopped or result.timed_out or result.exit_code != 0 or result.error_type is not None


class ValidationLoop:
    """The validation of one step that succeeded: its rounds, driven like a step sequence.

    :meth:`next` gives the next validation or ``on_incomplete`` step (None:
    the loop is over), :meth:`record` what it did. Once over, :attr:`rounds`
    holds every round and :attr:`failure` what the validated step fails with
    (None: it succeeded, or carries on incomplete with ``fail: false``).
    ``context``: the sequence's (``${last.*}`` is set after each step here,
    ``${validation.*}`` while the ``on_incomplete`` steps run).
    """

    def __init__(
        self,
        index: int,
        step: Step,
        result: StepResult,
        context: dict[str, Any],
        *,
        cwd: Path,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        assert step.validate_ is not None
        self.spec: ValidateSpec = step.validate_
        self.index = index
        self.validated = result
        self.context = context
        self.clock = clock
        self.rounds: list[ValidationRound] = []
        self.failure: StepResult | None = None
        self.done = False
        incomplete = self.spec.on_incomplete
        self._max_rounds = incomplete.max_attempts if incomplete is not None else 1
        self._fail = incomplete.fail if incomplete is not None else True
        self._result_file: str | None = None
        try:
            if self.spec.result_file is not None:
                self._result_file = render_text(self.spec.result_file, context)
        except ValueError as exc:  # a template error
            self._end(StepResult.not_started(f"validate.result_file: {exc}"))
        self._result_path = (
            Path(step_cwd(step, cwd)) / self._result_file if self._result_file else None
        )
        self._repairing = False
        self._queue: list[Step] = []
        self._position = 0
        self._deadline: float | None = None
        self._before: _FileState | None = None
        self._stdout = b""
        self._problem: str | None = None
        if not self.done:
            self._begin_round()

    def _begin_round(self) -> None:
        self._repairing = False
        self.context.pop("validation", None)
        self._queue, self._position = list(self.spec.steps), 0
        timeout = self.spec.timeout
        self._deadline = None if timeout is None else self.clock() + timeout
        self._before = _state(self._result_path) if self._result_path is not None else None
        self._stdout, self._problem = b"", None

    def next(self) -> Step | None:
        """The next step to run; None: the loop is over."""
        while not self.done:
            if self._position < len(self._queue):
                step = self._queue[self._position]
                if self._repairing or self._deadline is None:
                    return step
                remaining = self._deadline - self.clock()
                if remaining > 0:
                    limit = remaining if step.timeout is None else min(step.timeout, remaining)
                    return step.model_copy(update={"timeout": limit})
                self._problem = self._timed_out()
            if self._repairing:
                self._begin_round()
            else:
                self._end_round()
        return None

    def record(self, result: StepResult, *, stopped: bool) -> None:
        """What happened to the step :meth:`next` gave; ``stopped``: the attempt was stopped."""
        last_step(self.context, result.stdout.decode("utf-8", "replace").strip(), result.exit_code)
        self._position += 1
        failed = _failed(result, stopped=stopped)
        if self._repairing:
            if failed:
                self._end(result)  # a repair that fails is the validated step's failure
            return
        if not failed:
            self._stdout = result.stdout
            return
        round_over = self._deadline is not None and self.clock() >= self._deadline
        if result.timed_out and not stopped and round_over:
            self._problem = self._timed_out()
        elif stopped or result.timed_out or result.exit_code is None:
            self._end(result)  # stopped, its own or the attempt's timeout, never started
            return
        else:
            self._problem = f"validation step {self._position} exited with code {result.exit_code}"
            self._stdout = result.stdout
        self._position = len(self._queue)  # the round's other steps do not run

    def _timed_out(self) -> str:
        return f"the validation timed out after {self.spec.timeout:g}s (validate.timeout)"

    def _end(self, failure: StepResult | None) -> None:
        self.failure, self.done = failure, True
        self.context.pop("validation", None)

    def _read(self) -> Reading:
        if self._result_path is not None:
            shown = self._result_file or ""
            reading = read_result_file(self._result_path, shown, self._before)
        elif len(self._stdout) > RESULT_LIMIT:
            reading = Reading(reason=f"the validation output is over {RESULT_LIMIT:,} bytes")
        else:
            reading = parse_result(self._stdout, "the validation output")
        if reading.reason is not None and self._problem is not None:
            reading = dataclasses.replace(reading, reason=f"{self._problem}; {reading.reason}")
        return reading

    def _end_round(self) -> None:
        reading = self._read()
        threshold = float(self.spec.threshold)
        complete = reading.reason is None and reading.completion >= threshold
        number = len(self.rounds) + 1
        self.rounds.append(
            ValidationRound(
                step=self.index,
                round=number,
                completion=reading.completion,
                threshold=threshold,
                complete=complete,
                reason=None if reading.reason is None else reading.reason[:REASON_LIMIT],
            )
        )
        if complete:
            self._end(None)
        elif number < self._max_rounds:
            self._repair(reading, number)
        elif not self._fail:
            self._end(None)
        else:
            self._end(
                dataclasses.replace(
                    self.validated,
                    error=self._message(reading, number),
                    error_type="validation_failed",
                )
            )

    def _repair(self, reading: Reading, number: int) -> None:
        """The ``on_incomplete`` steps next, with ``${validation.*}``."""
        assert self.spec.on_incomplete is not None
        self._repairing = True
        self._queue, self._position = list(self.spec.on_incomplete.steps), 0
        self.context["validation"] = {
            "completion": _number(reading.completion),
            "threshold": _number(self.spec.threshold),
            "status": reading.status or "incomplete",
            "missing": reading.missing,
            "gaps": reading.gaps,
            "reason": reading.reason or "",
            "round": number,
        }

    def _message(self, reading: Reading, number: int) -> str:
        rounds = f"{number} round{'s' if number > 1 else ''}"
        text = (
            f"step {self.index + 1} incomplete: {_number(reading.completion)}% < "
            f"{_number(self.spec.threshold)}% after {rounds} (validate)"
        )
        return f"{text}: {reading.reason}" if reading.reason else text
