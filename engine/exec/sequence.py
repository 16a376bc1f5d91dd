"""An attempt's steps as they run: which comes next, what each result means, the outcome.

The sequence half of the step semantics every executor shares (the other
half, a step as a command, is :mod:`engine.exec.program`).
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec

from engine.exec.agent_output import read_run, replaced, used
from engine.exec.executor import AttemptOutcome
from engine.exec.limits import budget_left, budget_refusal, usage_limit_reset
from engine.exec.program import (
    AgentFlags,
    CaptureError,
    StepResult,
    capture,
    parse_output,
    step_cwd,
)
from engine.exec.validation import ValidationLoop, recorded
from engine.git.refs import read_head
from engine.map.classify import classify
from engine.map.policy import backoff_delay
from engine.redact import redact_value, secret_forms
from engine.workflow.spec import RETRIED_BY_DEFAULT, ClassifyRule, RetrySpec, Step
from engine.workflow.variables import last_step
from ledger.events import AgentUsage, LogRef, StepRecovery, ValidationRound

__all__ = ["StepSequence", "Tails"]


# --- a sequence of steps ----------------------------------------------------------------------

Tails = Callable[[], tuple[str, str]]
"""What the attempt's stderr and stdout logs end with now, as the outcome records them."""


class StepSequence:
    """An attempt's steps as they run, driven by an executor.

    The executor asks for the next step (:meth:`next`), waits what
    :meth:`backoff` says (a retry's delay), runs the step with the context it
    is given, and reports what happened (:meth:`record`), until there is
    none; then :meth:`outcome` says how the attempt ended. A step with
    ``validate`` that succeeds is followed by its validation loop
    (:class:`~engine.exec.validation.ValidationLoop`), whose failure is the
    step's.

    A step that fails with an error type its ``retry.retry_on`` lists runs
    again, after a backoff, until it has run ``retry.max_attempts`` times.
    Then its failure goes to ``on_failure``: its handlers run, with no
    deadline of the attempt's, each unless the attempt has been cancelled
    meanwhile (their results change nothing but ``recover``'s judgement);
    then, while ``rerun`` allows, the step runs once more (within the
    attempt's deadline), the handlers again after each failed run. A run
    that succeeds carries on as if the step had succeeded at once. Still
    failed: with ``recover`` and handlers that all succeeded, the sequence
    goes on with the next step, and the failure is not the outcome; else the
    sequence ends there. A step stopped with its attempt (a cancel, a hang)
    or past the attempt's deadline is not retried, re-run or recovered.
    Each failure that did not end the sequence is in :attr:`recovered`.

    A failure that hit an agent's usage limit with a known reset ahead
    (``rate_limited``) ends the sequence at once in the ``map`` phase (no
    retry, no handlers: the map waits for the reset, for every item); in the
    other phases (setup, reduce, merge) the step runs again once the limit has
    reset (:attr:`waiting_until`), the wait not counted against
    ``retry.max_attempts`` unless ``retry.count_usage_limits``. A ``claude:``
    step is not started once nothing is left of the attempt's budget
    (:meth:`refused`), nor retried.

    ``tails`` (the executor's logs) is read when a step with handlers fails,
    before they run, and a failed outcome's tails (its error message, its
    type, its signature) are those, never the handlers' output.
    """

    def __init__(
        self,
        steps: Sequence[Step],
        context: Mapping[str, Any],
        *,
        tails: Tails | None = None,
        cwd: Path | None = None,
        worktree: Path | None = None,
        rules: Sequence[ClassifyRule] = (),
        rng: random.Random | None = None,
        agent_output: str = "text",
        resume_session: str | None = None,
        max_budget_usd: float | None = None,
        max_item_cost_usd: float | None = None,
        phase: str = "map",
    ) -> None:
        """``cwd``, ``worktree``: the attempt's (where a ``commit_required`` step's
        repository is: its worktree, else the step's working directory's). ``rules``:
        the workflow's ``classify`` rules, which type a failure for ``retry_on``;
        ``rng``: what a retry's jitter is drawn from; ``agent_output``: how a
        ``claude:`` step's run is read (:mod:`engine.exec.agent_output`);
        ``resume_session``, ``max_budget_usd``: the attempt's, for its ``claude:`` steps
        (:meth:`agent_flags`); ``max_item_cost_usd``: the item's whole budget (what a
        refusal says); ``phase``: the attempt's (``map``, ``setup``, ...)."""
        self.steps = steps
        self.agent_output = agent_output
        self._resume = resume_session
        self._budget = max_budget_usd
        self._cap = max_item_cost_usd
        self._phase = phase
        self._refused = False
        """The step :meth:`next` gave was refused (:meth:`refused`): it never ran."""
        self.waiting_until: float | None = None
        """The usage-limit reset (epoch seconds) the delay :meth:`backoff` gave waits for."""
        self._resets: float | None = None
        self._session: str | None = None
        """The session the current step's last run reported (an agent's)."""
        self.usage: AgentUsage | None = None
        """What the agent's runs reported spending, summed (Claude's output formats)."""
        self._planned: Step | None = None
        self.context: dict[str, Any] = dict(context)
        """What the next step's templates see: the attempt's context, ``last``, captures."""
        self.captures: dict[str, Any] = {}
        self.result: Any = None
        self.invalid: str | None = None
        """Why the last step's output could not be read as the result."""
        self.failed: int | None = None
        """The index of the step that failed, once one has (while its handlers run, too)."""
        self.last: StepResult | None = None
        """The result of the last step run (handlers aside); None after a recovered one."""
        self.failure_tails: tuple[str, str] | None = None
        """The ends of stderr and stdout as the failed step left them, before its handlers."""
        self.recovered: list[StepRecovery] = []
        """The failures that did not end the sequence, in order."""
        self._tails = tails
        self._rules = rules
        self._rng = rng or random.Random()
        self._index = 0
        self._handlers: Sequence[Step] = ()
        self._handler = 0
        self._cwd = cwd or Path(".")
        self._worktree = worktree
        self._head: str | None = None
        """HEAD before the step running now, when it must commit."""
        self._runs = 0
        """Runs of the current step so far (retries and re-runs included)."""
        self._reruns = 0
        self._waits = 0
        """Runs of the current step that only waited for a usage limit (not counted)."""
        self._delay = 0.0
        self._failure: StepRecovery | None = None
        """The current step's last failure, as it is noted when it does not end the sequence."""
        self._handlers_ok = True
        self._final = False
        """The failure cannot be re-run or recovered (stopped, or past the deadline)."""
        self._validation: ValidationLoop | None = None
        """The ``validate`` of the step that just succeeded, while it runs."""
        self._validation_stopped = False
        self.validations: list[ValidationRound] = []
        """Every round of validation so far, in order."""

    def next(self, *, cancelled: bool) -> tuple[Step, bool] | None:
        """The next step to run and whether the attempt's deadline applies to it; None: done."""
        planned = self._next(cancelled=cancelled)
        self._planned = planned[0] if planned is not None else None
        return planned

    def _next(self, *, cancelled: bool) -> tuple[Step, bool] | None:
        if self._validation is not None:
            validating = self._validation.next()
            if validating is not None:
                return validating, True
            self._validated()
        while self.failed is not None:
            if cancelled:
                return None
            if self._handler < len(self._handlers):
                return self._handlers[self._handler], False
            if not self._carry_on():
                return None
        if self._index < len(self.steps):
            step = self.steps[self._index]
            if step.commit_required:
                self._head = read_head(self._repository(step))
            return step, True
        return None

    def agent_flags(self) -> AgentFlags:
        """What the ``claude:`` step :meth:`next` gave is run with: the session it
        continues and what it may spend (the attempt's budget less what its runs spent).

        The attempt's first run of one of its steps continues the attempt's session
        (``map.retry.resume_session``); a run of a step after a failed one continues
        that one's session when the step's ``retry.resume_session`` says so.
        """
        budget = budget_left(self._budget, self.usage)
        if self._validation is not None or self.failed is not None:
            return AgentFlags(max_budget_usd=budget)  # a validator or a handler
        step, resume = self.steps[self._index], None
        if self._runs == 0:
            resume = self._resume
        elif step.retry is not None and step.retry.resume_session:
            resume = self._session
        return AgentFlags(resume=resume, max_budget_usd=budget)

    def refused(self) -> StepResult | None:
        """The failure of the ``claude:`` step :meth:`next` gave when nothing is left of the
        attempt's budget (the executor records it instead of starting the step); else None."""
        left = budget_left(self._budget, self.usage)
        if self._planned is None or self._planned.kind != "claude" or left is None or left > 0:
            return None
        assert self._budget is not None
        self._refused = True
        return budget_refusal(self._budget, self._cap, self.usage)

    def backoff(self) -> float:
        """Seconds to wait before running the step :meth:`next` gave: a retry's delay, or
        until a usage limit resets (:attr:`waiting_until` says when), else 0.

        The executor waits them (a cancel or the attempt's deadline may cut the wait
        short: it then records what stopped the step instead of running it).
        """
        delay, self._delay = self._delay, 0.0
        self.waiting_until, self._resets = self._resets, None
        if self.waiting_until is not None:
            delay = max(0.0, self.waiting_until - time.time())
        return delay

    def record(self, result: StepResult, *, stopped: bool, expired: bool = False) -> None:
        """What happened to the step :meth:`next` gave; ``stopped``: the attempt was stopped;
        ``expired``: the attempt's deadline has passed (nothing of it can run again)."""
        planned, session = self._planned, None
        refused, self._refused = self._refused, False
        if planned is not None and planned.kind == "claude" and not refused:
            result, session = self._agent_run(result, stopped=stopped)
        if self._validation is not None:
            self._validation.record(result, stopped=stopped)
            self._validation_stopped |= stopped
            return
        if self.failed is not None:
            self._handled(result, stopped=stopped)
            return
        index, step = self._index, self.steps[self._index]
        self._runs += 1
        self._session = session
        self._set_last(step, result)
        if result.ok and not stopped:
            result = self._committed(index, step, result)
        if result.ok and not stopped and step.validate_ is not None:
            self.last = result
            self._validation = ValidationLoop(index, step, result, self.context, cwd=self._cwd)
            self._validation_stopped = False
            return
        self._settle(index, step, result, stopped=stopped, expired=expired)

    def _agent_run(self, result: StepResult, *, stopped: bool) -> tuple[StepResult, str | None]:
        """An agent's run as its output format says: its result, its error, its spending;
        and the session it reported (a stopped run: only what it spent and its session)."""
        if self.agent_output == "text":
            return result, None
        stream = self.agent_output == "claude-stream-json"
        fields, spent = read_run(result, result.stdout, stream=stream)
        self.usage = used(self.usage, spent)
        result = result if stopped else replaced(result, fields)
        return result, spent.session_id if spent is not None else None

    # --- what a step's result leads to ------------------------------------------------

    def _set_last(self, step: Step, result: StepResult) -> None:
        """``${last.*}`` (and ``${shell.*}`` or ``${claude.*}``) for the steps after it."""
        stdout = result.stdout.decode("utf-8", "replace").strip()
        stderr = result.stderr.decode("utf-8", "replace").strip()
        last_step(self.context, stdout, result.exit_code, stderr=stderr, kind=step.kind)

    def _validated(self) -> None:
        """The validated step's end, once its validation is over: as it ran, or failed."""
        assert self._validation is not None
        loop, self._validation = self._validation, None
        self.validations.extend(loop.rounds)
        step = self.steps[loop.index]
        result = loop.failure or loop.validated
        self._set_last(step, result)  # the validated step again, not its validators
        self._settle(loop.index, step, result, stopped=self._validation_stopped, expired=False)

    def _settle(
        self, index: int, step: Step, result: StepResult, *, stopped: bool, expired: bool
    ) -> None:
        """A run's end: its capture read, then a success, or a failure (retried, handled)."""
        stdout = result.stdout.decode("utf-8", "replace")
        captured: Any = None
        if result.ok and not stopped and step.capture_output:
            try:
                captured = capture(stdout, step.capture_format)
            except CaptureError as exc:
                result = dataclasses.replace(
                    result,
                    error=f"step {index + 1} capture {step.capture_output}: {exc}",
                    error_type="validation_failed",
                )
        self.last = result
        if stopped or not result.ok:
            self._run_failed(index, step, result, final=stopped or expired)
            return
        self._succeeded(index, step, stdout, captured)

    def _committed(self, index: int, step: Step, result: StepResult) -> StepResult:
        """A ``commit_required`` step that made no commit fails ``validation_failed``."""
        if not step.commit_required:
            return result
        head = read_head(self._repository(step))
        if head is not None and head != self._head:
            return result
        return dataclasses.replace(
            result,
            error=f"no commit made by step {index + 1} (commit_required)",
            error_type="validation_failed",
        )

    def _succeeded(self, index: int, step: Step, stdout: str, captured: Any) -> None:
        if self._failure is not None:  # a retry or a re-run of it succeeded
            by = "rerun" if self._reruns else "retry"
            self.recovered.append(msgspec.structs.replace(self._failure, by=by, runs=self._runs))
        if step.capture_output:
            self.captures[step.capture_output] = captured
            self.context[step.capture_output] = captured
        if index == len(self.steps) - 1 and step.output is not None:
            self.result, self.invalid = parse_output(stdout, step.output)
        self._advance()

    def _run_failed(self, index: int, step: Step, result: StepResult, *, final: bool) -> None:
        """A run of the step failed: it runs again after a usage limit's reset, or is
        retried, or its ``on_failure`` takes over."""
        self._failure = failure = self._noted(index, result)
        retry = step.retry
        spent = step.kind == "claude" and budget_left(self._budget, self.usage) == 0
        resets = None if final or spent else usage_limit_reset(failure, result, time.time())
        limited = resets is not None and self._phase == "map"  # the map waits, not the step
        if resets is not None and not limited and self._waits_for(retry):
            self._resets = resets
            self.recovered.append(msgspec.structs.replace(failure, by="retry", runs=self._runs))
            self._failure = None  # noted: a later success of the step adds nothing
            return
        counted = self._runs - self._waits
        if (
            not (final or spent or limited)
            and retry is not None
            and self._reruns == 0
            and counted < retry.max_attempts
            and failure.error_type in retry.retry_on
        ):
            self._delay = backoff_delay(retry, counted, self._rng)
            return
        self.failed = index
        self._final = final or limited
        handlers = () if limited else step.on_failure.steps
        self._handlers, self._handler, self._handlers_ok = handlers, 0, True
        if self._handlers and self._tails is not None:
            self.failure_tails = self._tails()

    def _waits_for(self, retry: RetrySpec | None) -> bool:
        """Whether the step runs again once the usage limit it hit resets: while its
        ``retry_on`` lists ``rate_limited`` (by default it does), and, when
        ``retry.count_usage_limits``, while its ``max_attempts`` allow another run."""
        if "rate_limited" not in (retry.retry_on if retry else RETRIED_BY_DEFAULT):
            return False
        if retry is not None and retry.count_usage_limits:
            return self._runs - self._waits < retry.max_attempts
        self._waits += 1
        return True

    def _handled(self, result: StepResult, *, stopped: bool) -> None:
        """A handler's result: it counts only for ``recover`` (and a stop ends them)."""
        self._handler += 1
        if stopped or not result.ok:
            self._handlers_ok = False
        if stopped:
            self._final = True

    def _carry_on(self) -> bool:
        """The failed step's handlers are done: whether it runs again or is recovered."""
        assert self.failed is not None and self._failure is not None
        on_failure = self.steps[self.failed].on_failure
        if self._final:
            return False
        if self._reruns < on_failure.rerun:
            self._reruns += 1
            self.failed = None
            return True
        if on_failure.recover and self._handlers_ok:
            self.recovered.append(
                msgspec.structs.replace(self._failure, by="recover", runs=self._runs)
            )
            self.failed = None
            self.last = None  # the outcome is what a success would be
            self._advance()
            return True
        return False

    def _advance(self) -> None:
        """On to the next step: the state of this one's runs is forgotten."""
        self._index += 1
        self._runs = self._reruns = self._waits = 0
        self._failure = None
        self.failure_tails = None
        self._handlers, self._handler, self._handlers_ok = (), 0, True

    def _noted(self, index: int, result: StepResult) -> StepRecovery:
        """A failed run as :attr:`recovered` would note it: its error typed as the map's are."""
        if result.error_type is not None:
            error_type, message = result.error_type, result.error or result.error_type
        else:
            stderr = result.stderr.decode("utf-8", "replace")
            stdout = result.stdout[-8192:].decode("utf-8", "replace")
            found = classify(
                exit_code=result.exit_code,
                signal=result.signal,
                stderr_tail="\n".join(stderr.splitlines()[-100:]),
                stdout_tail="\n".join(stdout.splitlines()[-20:]),
                timed_out=result.timed_out,
                rules=self._rules,
            )
            error_type, message = found.error_type, found.message
        return StepRecovery(
            step=index,
            by="",
            runs=self._runs,
            error_type=error_type,
            message=message[:500],
            exit_code=result.exit_code,
            signal=result.signal,
        )

    def _repository(self, step: Step) -> Path:
        return self._worktree or Path(step_cwd(step, self._cwd))

    # --- the end ----------------------------------------------------------------------

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
            usage=self.usage,
            recovered=tuple(
                msgspec.structs.replace(r, message=redact_value(r.message, secrets))
                for r in self.recovered
            ),
        )
