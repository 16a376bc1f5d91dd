"""Setup and reduce steps: running them in order, their captures, and what reduce sees.

A setup step that succeeded before a resume is not run again, and its
capture is restored, only while it is the same step: a step is identified
by its phase, its index and the command its ``step.started`` recorded (and
the capture its ``step.succeeded`` names). The first setup step that is not
done as it is now written runs again, and every setup step after it
(:func:`setup_plan`). Reduce steps always run.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from engine.exec.executor import AttemptOutcome, AttemptRequest
from engine.exec.limits import usage_limit_note
from engine.exec.local.attempt import LocalAttempt
from engine.map.policy import budget_exhausted
from engine.run.context import RunContext
from engine.workflow.spec import Step
from engine.workflow.template import value_text as json_text
from ledger.atomic import atomic_write
from ledger.events import StepFailed, StepStarted, StepSucceeded
from projections.values import DoneStep

__all__ = [
    "CAPTURE_INLINE_LIMIT",
    "RESULTS_INLINE_LIMIT",
    "PhaseClock",
    "SetupPlan",
    "map_context",
    "restore_captures",
    "run_steps",
    "setup_plan",
]

CAPTURE_INLINE_LIMIT = 64 * 1024
RESULTS_INLINE_LIMIT = 64 * 1024


async def run_steps(
    run: RunContext,
    phase: str,
    steps: list[Step],
    *,
    hold: Callable[[], Awaitable[None]] | None = None,
    context: dict[str, Any] | None = None,
    item: str | None = None,
    run_as: int = 1,
) -> str | None:
    """Run setup, reduce, merge or on_conflict steps in order; the failure reason, if one failed.

    Setup steps before ``run.setup_done`` are done already (their captures restored).
    ``hold``: awaited before each step starts, while the run is paused; when
    the run is stopping after it (a signal, a cancel), no more steps start.
    ``context``: their variables (and where their captures go), by default the
    run's; ``item``: the item they are for (``on_conflict``), named in
    ``step.started``; ``run_as``: the attempt number their files are named by
    (steps run more than once in a run).
    """
    variables = run.context if context is None else context
    first = run.setup_done if phase == "setup" else 0
    limit = getattr(run.spec.phase_timeout, phase, None)
    clock = None if limit is None else PhaseClock(phase, limit)
    for index, step in enumerate(steps):
        if index < first:
            continue
        if hold is not None:
            await hold()
        if run.stopping:
            return None  # the driver says how the run ended
        if step.kind == "claude":
            spent = budget_exhausted(run.spec.budget, run.p, wanted=True)
            if spent is not None:  # no agent step starts: the driver ends the run (exit 4)
                await run.append(spent)
                run.budget_stop = run.stopping = True
                return None
        await run.append(
            [
                StepStarted(
                    phase=phase, index=index, name=step.name or "", command=step.text, item=item
                )
            ]
        )
        outcome = await _attempt(run, phase, index, step, variables, run_as, clock)
        if not outcome.ok:
            event, reason = _failure(phase, index, step, outcome, clock)
            await run.append([event])
            return f"{phase} step {index + 1} ({step.name or step.text[:60]}) failed: {reason}"
        variables.update(outcome.captures)
        if phase in ("reduce", "merge") and outcome.stdout is not None:
            text = (run.run_dir / outcome.stdout.path).read_text(errors="replace")
            run.output.append(text.rstrip("\n"))
        captured = step.capture_output
        await run.append(
            [
                StepSucceeded(
                    phase=phase,
                    index=index,
                    duration=round(outcome.duration, 6),
                    captured=captured,
                    captured_value=_recordable(run, outcome.captures.get(captured))
                    if captured
                    else None,
                    stdout=outcome.stdout,
                    stderr=outcome.stderr,
                    validations=list(outcome.validations),
                    recovered=list(outcome.recovered),
                    usage=outcome.usage,
                )
            ]
        )
    return None


@dataclass
class PhaseClock:
    """A phase's ``phase_timeout``: the time its steps have used of it, together.

    Only the time they run counts (a pause between them does not); a resume's steps
    have the whole of it again.
    """

    phase: str
    limit: float
    used: float = 0.0
    left_at_start: float = 0.0
    """What was left when the step running now started."""

    def start(self) -> float:
        """The step starting now may run this long (its attempt's deadline)."""
        self.left_at_start = max(0.0, self.limit - self.used)
        return self.left_at_start

    def ran(self, seconds: float) -> None:
        self.used += seconds

    def passed(self, step: Step, outcome: AttemptOutcome) -> bool:
        """Whether the step's timeout was the phase's (not the step's own ``timeout``)."""
        return outcome.timed_out and (
            step.timeout is None or step.timeout >= self.left_at_start or self.used >= self.limit
        )

    @property
    def message(self) -> str:
        return f"{self.phase} timed out after {self.limit:g}s (phase_timeout.{self.phase})"


async def _attempt(
    run: RunContext,
    phase: str,
    index: int,
    step: Step,
    context: dict[str, Any],
    run_as: int,
    clock: PhaseClock | None = None,
) -> AttemptOutcome:
    """One step's process, to its end; stopped at once when the run is stopping, or
    when what is left of the phase's ``clock`` has passed."""
    request = run.request(
        f"{phase}-{index}", run_as, "", None, steps=[step], phase=phase, context=context
    )
    if clock is not None:
        request = dataclasses.replace(request, timeout=clock.start())
    started = time.monotonic()
    try:
        return await _run_attempt(run, phase, index, request)
    finally:
        if clock is not None:
            clock.ran(time.monotonic() - started)


async def _run_attempt(
    run: RunContext, phase: str, index: int, request: AttemptRequest
) -> AttemptOutcome:
    attempt = await run.local.start(request)
    if isinstance(attempt, LocalAttempt):  # a wait for a usage limit's reset, said
        what = f"{phase} step {index + 1}"
        attempt.on_usage_limit = lambda when: run.options.warn(
            f"engine: {usage_limit_note(what, when)}"
        )
    run.current_step = attempt
    if run.stopping:  # stopped while the step was being recorded or started
        await attempt.cancel()
    try:
        return await attempt.wait()
    except Exception as exc:  # an error in the engine fails the step, typed
        run.options.warn(f"engine: error while running {phase} step {index + 1}: {exc}")
        return AttemptOutcome(
            ok=False,
            duration=0.0,
            error_type="unknown",
            error=f"engine error: {type(exc).__name__}: {exc}"[:4096],
        )
    finally:
        run.current_step = None


def _failure(
    phase: str, index: int, step: Step, outcome: AttemptOutcome, clock: PhaseClock | None = None
) -> tuple[StepFailed, str]:
    """``step.failed`` for a failed step, and why it failed in one line."""
    reason = (outcome.stderr_tail.strip().splitlines() or [""])[-1]
    if outcome.interrupted:
        kind = "interrupted"
        reason = "stopped (the engine was interrupted or the run cancelled)"
    elif outcome.timed_out:
        kind = "timeout"
        passed = clock is not None and clock.passed(step, outcome)
        reason = (
            clock.message if clock is not None and passed else f"timed out after {step.timeout}s"
        )
    elif outcome.error_type is not None:
        kind, reason = outcome.error_type, outcome.error or outcome.error_type
    else:
        kind = "command_failed"
        reason = reason or f"exited with code {outcome.exit_code}"
    event = StepFailed(
        phase=phase,
        index=index,
        error_type=kind,
        message=reason,
        duration=round(outcome.duration, 6),
        exit_code=outcome.exit_code,
        signal=outcome.signal,
        stderr_tail=outcome.stderr_tail[-8192:],
        stdout=outcome.stdout,
        stderr=outcome.stderr,
        validations=list(outcome.validations),
        recovered=list(outcome.recovered),
        usage=outcome.usage,
    )
    return event, reason


def _recordable(run: RunContext, value: Any) -> Any:
    """A captured value as the ledger keeps it: inline, or in the store when large."""
    encoded = msgspec.json.encode(value)
    if len(encoded) <= CAPTURE_INLINE_LIMIT:
        return value
    return {"$blob": run.store.put_bytes(encoded)}


# --- a resume's setup ------------------------------------------------------------------


@dataclass
class SetupPlan:
    """Which setup steps a resume skips."""

    done: list[DoneStep] = field(default_factory=list)
    """The steps done as they are written now, in order: the first ``len(done)``."""
    changed: str | None = None
    """The first step that succeeded before but is written differently now (it runs
    again, and the steps after it), in the words of ``run.resumed``'s ``changes``."""
    warning: str | None = None
    """The same, as one line for the terminal."""


def setup_plan(run: RunContext) -> SetupPlan:
    """The setup steps done before, up to the first that is not done as written now."""
    plan = SetupPlan()
    recorded = run.values.steps
    for index, step in enumerate(run.spec.setup):
        done = recorded.get(("setup", index))
        if done is None:
            break
        # Compared as recorded: the ledger's copy of a command is redacted.
        command = run.redactor.text(step.text)
        if (done.command is not None and done.command != command) or (
            done.captured != step.capture_output
        ):
            moved = done.command is not None and done.command != command
            what = "its command" if moved else "its capture_output"
            plan.changed = (
                f"setup[{index}]: {what} changed since it succeeded: "
                "it runs again, and the setup steps after it"
            )
            plan.warning = (
                f"warning: setup step {index + 1} ({step.name or step.text[:60]}) of run "
                f"{run.run_id} changed since it succeeded ({what}): it runs again, and so do "
                "the setup steps after it"
            )
            break
        plan.done.append(done)
    return plan


def restore_captures(run: RunContext, done: list[DoneStep]) -> None:
    """The captures of the setup steps done before a resume, back in the variables."""
    for step in done:
        if not step.captured:
            continue
        value = recorded = step.captured_value
        if isinstance(recorded, dict) and set(recorded) == {"$blob"}:
            value = msgspec.json.decode(run.store.get_bytes(recorded["$blob"]))
        run.context[step.captured] = value


# --- what reduce sees ------------------------------------------------------------------


def map_context(run: RunContext) -> dict[str, Any]:
    """``${map.*}`` for the reduce steps; every item's result written to ``results.json``,
    and every item's outcome in Prodigy's shape to ``agent-results.json``."""
    counts = run.p.items.counts
    total = len(run.p.items.items)
    successful = counts["succeeded"] + counts["skipped"]
    failed = counts["failed"] + counts["dead"]
    path = run.run_dir / "results.json"
    results = {item: run.stored(e.result, e.result_ref) for item, e in run.values.results.items()}
    encoded = msgspec.json.encode(results)
    atomic_write(path, encoded + b"\n")
    agents_path = run.run_dir / "agent-results.json"
    agents = msgspec.json.encode(_agent_results(run))
    atomic_write(agents_path, agents + b"\n")
    return {
        "total": total,
        "successful": successful,
        "failed": failed,
        "success_rate": round(successful / total, 4) if total else 0.0,
        "success_percent": f"{100 * successful / total:.2f}" if total else "0.00",
        "failure_percent": f"{100 * failed / total:.2f}" if total else "0.00",
        "results_file": str(path),
        "results": _inline(encoded, path),
        "agent_results": _inline(agents, agents_path),
    }


def _inline(encoded: bytes, path: Path) -> str:
    """A JSON value as text for a template, or the path of its file when it is large."""
    return encoded.decode() if len(encoded) <= RESULTS_INLINE_LIMIT else str(path)


_PRODIGY_STATUS = {"pending": "Pending", "running": "Running"}


def _agent_results(run: RunContext) -> list[dict[str, Any]]:
    """Every item's outcome as Prodigy's ``AgentResult``: status, output, commits, files
    changed, duration and error, failed items included, in the items' order."""
    out = []
    states = sorted(run.p.items.items.values(), key=lambda state: state.index)
    for state in states:
        success = run.values.results.get(state.item)
        failure = run.values.failures.get(state.item)
        status: Any = _PRODIGY_STATUS.get(state.status, "Success")
        error = None
        if state.status in ("failed", "dead"):
            error = state.last_error or state.error_type or "failed"
            status = {"Failed": error}
        output = None
        duration = 0.0
        if success is not None:
            value = run.stored(success.result, success.result_ref)
            output = value if isinstance(value, str) or value is None else json_text(value)
            duration = getattr(success, "duration", 0.0)
        elif failure is not None:
            duration = failure.duration
        entry: dict[str, Any] = {
            "item_id": state.item,
            "status": status,
            "output": output,
            "commits": [],
            "duration": {"secs": int(duration), "nanos": round(duration % 1 * 1e9)},
            "error": error,
        }
        # The attempt whose work was merged, looked up (not searched: reduce is once
        # per run, but over every item).
        merged = run.p.worktrees.merged.get(state.item)
        tree = run.p.worktrees.attempts.get((state.item, merged.attempt)) if merged else None
        if tree is not None:
            entry["commits"] = list(tree.shas)
            entry["files_modified"] = list(tree.files)
            entry["branch_name"] = tree.branch
        out.append(entry)
    return out
