"""An attempt's steps as they run: which comes next, what each result means, the outcome.

The sequence half of the step semantics every executor shares (the other
half, a step as a command, is :mod:`engine.exec.program`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from engine.exec.executor import AttemptOutcome
from engine.exec.program import StepResult, capture, parse_output, step_cwd
from engine.exec.validation import ValidationLoop, recorded
from engine.git.refs import read_head
from engine.redact import redact_value, secret_forms
from engine.workflow.spec import Step
from engine.workflow.variables import last_step
from ledger.events import LogRef, ValidationRound

__all__ = ["StepSequence", "Tails"]


# --- a sequence of steps ----------------------------------------------------------------------

Tails = Callable[[], tuple[str, str]]
"""What the attempt's stderr and stdout logs end with now, as the outcome records them."""


class StepSequence:
    """An attempt's steps as they run, driven by an executor.

    The executor asks for the next step (:meth:`next`), runs it with the
    context it is given, and reports what happened (:meth:`record`), until
    there is none; then :meth:`outcome` says how the attempt ended. A step
    that fails (or runs while the attempt is stopped) ends the sequence after
    its ``on_failure`` handlers, which run with no deadline of the attempt's,
    each unless the attempt has been cancelled meanwhile, and whose results
    change nothing: the failure is what the failed step printed. ``tails``
    (the executor's logs) is read when a step with handlers fails, before
    they run, and the outcome's tails (its error message, its type, its
    signature) are those, never the handlers' output.
    """

    def __init__(
        self,
        steps: Sequence[Step],
        context: Mapping[str, Any],
        *,
        tails: Tails | None = None,
        cwd: Path | None = None,
        worktree: Path | None = None,
    ) -> None:
        """``cwd``, ``worktree``: the attempt's (where a ``commit_required`` step's
        repository is: its worktree, else the step's working directory's)."""
        self.steps = steps
        self.context: dict[str, Any] = dict(context)
        """What the next step's templates see: the attempt's context, ``last``, captures."""
        self.captures: dict[str, Any] = {}
        self.result: Any = None
        self.invalid: str | None = None
        """Why the last step's output could not be read as the result."""
        self.failed: int | None = None
        """The index of the step that failed, once one has."""
        self.last: StepResult | None = None
        """The result of the last step run (handlers aside)."""
        self.failure_tails: tuple[str, str] | None = None
        """The ends of stderr and stdout as the failed step left them, before its handlers."""
        self._tails = tails
        self._index = 0
        self._handlers: Sequence[Step] = ()
        self._handler = 0
        self._cwd = cwd or Path(".")
        self._worktree = worktree
        self._head: str | None = None
        """HEAD before the step running now, when it must commit."""
        self._validation: ValidationLoop | None = None
        """The ``validate`` of the step that just succeeded, while it runs."""
        self.validations: list[ValidationRound] = []
        """Every round of validation so far, in order."""

    def next(self, *, cancelled: bool) -> tuple[Step, bool] | None:
        """The next step to run and whether the attempt's deadline applies to it; None: done."""
        if self._validation is not None:
            validating = self._validation.next()
            if validating is not None:
                return validating, True
            self._validated()
        if self.failed is None:
            if self._index < len(self.steps):
                step = self.steps[self._index]
                if step.commit_required:
                    self._head = read_head(self._repository(step))
                return step, True
            return None
        if cancelled or self._handler >= len(self._handlers):
            return None
        return self._handlers[self._handler], False

    def record(self, result: StepResult, *, stopped: bool) -> None:
        """What happened to the step :meth:`next` gave; ``stopped``: the attempt was stopped."""
        if self._validation is not None:
            self._validation.record(result, stopped=stopped)
            return
        if self.failed is not None:
            self._handler += 1  # a handler: it changes nothing
            return
        index, step = self._index, self.steps[self._index]
        self._index += 1
        self.last = result
        stdout = result.stdout.decode("utf-8", "replace")
        last_step(self.context, stdout.strip(), result.exit_code)
        if not (stopped or result.timed_out or result.exit_code != 0) and step.commit_required:
            head = read_head(self._repository(step))
            if head is None or head == self._head:
                result = dataclasses.replace(
                    result,
                    error=f"no commit made by step {index + 1} (commit_required)",
                    error_type="validation_failed",
                )
                self.last = result
        failing = bool(stopped or result.timed_out or result.exit_code != 0 or result.error_type)
        if not failing and step.validate_ is not None:
            self._validation = ValidationLoop(index, step, result, self.context, cwd=self._cwd)
            return
        self._settle(index, step, result, failing)

    def _validated(self) -> None:
        """The validated step's end, once its validation is over: as it ran, or failed."""
        assert self._validation is not None
        loop, self._validation = self._validation, None
        self.validations.extend(loop.rounds)
        result = loop.failure or loop.validated
        self.last = result
        last_step(self.context, result.stdout.decode("utf-8", "replace").strip(), result.exit_code)
        self._settle(loop.index, self.steps[loop.index], result, loop.failure is not None)

    def _settle(self, index: int, step: Step, result: StepResult, failing: bool) -> None:
        """A step's end: its failure (with its handlers next), or its captures and result."""
        stdout = result.stdout.decode("utf-8", "replace")
        if failing:
            self.failed = index
            self._handlers = step.on_failure.steps
            if self._handlers and self._tails is not None:
                self.failure_tails = self._tails()
            return
        if step.capture_output:
            self.captures[step.capture_output] = capture(stdout, step.capture_format)
            self.context[step.capture_output] = self.captures[step.capture_output]
        if index == len(self.steps) - 1 and step.output is not None:
            self.result, self.invalid = parse_output(stdout, step.output)

    def _repository(self, step: Step) -> Path:
        return self._worktree or Path(step_cwd(step, self._cwd))

    def outcome(
        self,
        *,
        duration: float,
        cancelled: bool,
        hung: bool,
        logs_lost: bool,
        stderr_tail: str,
        stdout_tail: str,
        stdout: LogRef | None,
        stderr: LogRef | None,
        redact: Sequence[str],
        pgid: int | None = None,
    ) -> AttemptOutcome:
        """How the attempt ended. ``logs_lost``: its logs are not what the steps printed
        (a failed write), which is never a success. The result and the captures are
        redacted; the tails are the executor's (redacted as they were written), as the
        failed step left them when it had handlers (unless the logs were lost: the
        executor's note that says so ends the final tails)."""
        if self.failure_tails is not None and not logs_lost:
            stderr_tail, stdout_tail = self.failure_tails
        last = self.last or StepResult()
        secrets = secret_forms(redact)
        return AttemptOutcome(
            ok=self.failed is None and not logs_lost and self.invalid is None,
            duration=duration,
            exit_code=last.exit_code,
            signal=last.signal,
            timed_out=last.timed_out and not hung and not cancelled,
            hung=hung and not cancelled,
            interrupted=cancelled,
            invalid_output=self.invalid,
            error_type=last.error_type,
            error=last.error,
            stderr_tail=stderr_tail,
            stdout_tail=stdout_tail,
            result=redact_value(self.result, secrets),
            stdout=stdout,
            stderr=stderr,
            captures=redact_value(self.captures, secrets),
            pgid=pgid,
            validations=recorded(self.validations),
        )
