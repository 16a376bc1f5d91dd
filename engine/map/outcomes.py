"""An attempt's end as events: its outcome's record, and the decision that follows it.

An executor's :class:`~engine.exec.executor.AttemptOutcome` becomes
``item.succeeded``, or ``item.failed`` (its error classified, its texts
bounded so the record always fits) followed by what
:func:`engine.map.policy.retry_or_dead_letter` decides. An attempt without
an outcome (its engine died, or the engine's own code failed around it)
becomes a failure of a given type the same way. The functions are pure:
the time (``now``, epoch seconds) and the machine's state
(``resources``, from :func:`machine_resources`) are given to them.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
from pathlib import Path

import msgspec

from engine.exec.executor import AttemptOutcome, HeartbeatSample
from engine.map.classify import classify, signature
from engine.map.policy import NO_HISTORY, Cause, ItemHistory, retry_or_dead_letter
from engine.map.usage_limits import failure_reset
from engine.workflow.spec import MapSpec
from ledger.events import Event, Heartbeat, ItemFailed, ItemSucceeded
from ledger.times import rfc3339

__all__ = [
    "ABANDONED",
    "abandon_events",
    "describe_error",
    "failure_events",
    "heartbeat_event",
    "machine_resources",
    "outcome_events",
]

ABANDONED = "the engine stopped before this attempt's outcome was recorded"
"""What an attempt whose engine died fails with; its signature is made of this text."""


def outcome_events(
    spec: MapSpec,
    item: str,
    attempt: int,
    outcome: AttemptOutcome,
    *,
    stopping: bool,
    now: float,
    rng: random.Random,
    resources: dict[str, float],
    history: ItemHistory = NO_HISTORY,
) -> list[Event]:
    """The outcome's record, and for a failure the retry or dead-letter decision.

    ``stopping``: the engine is stopping (a signal, a cancel), so an
    interrupted attempt runs again on resume, whatever attempts remain.
    ``history``: the item's earlier attempts, as its retry depends on them.
    """
    o = outcome
    if o.ok:
        return [
            ItemSucceeded(
                item=item,
                attempt=attempt,
                duration=round(o.duration, 6),
                exit_code=o.exit_code or 0,
                result=o.result,
                stdout=o.stdout,
                stderr=o.stderr,
                result_ref=o.result_ref,
                validations=list(o.validations),
                recovered=list(o.recovered),
                usage=o.usage,
                worker=o.worker,
            )
        ]
    failed = _failed(spec, item, attempt, o, resources, now=now)
    cause: Cause = "stopping" if o.interrupted and stopping else "outcome"
    decision = retry_or_dead_letter(spec, failed, cause=cause, now=now, rng=rng, history=history)
    return [failed, *decision]


def _failed(
    spec: MapSpec,
    item: str,
    attempt: int,
    o: AttemptOutcome,
    resources: dict[str, float],
    *,
    now: float,
) -> ItemFailed:
    """``item.failed`` for a failed outcome: what the engine saw wins, then the executor's type.

    A ``rate_limited`` failure whose message, stderr or stdout says when the
    usage limit resets (:func:`~engine.map.usage_limits.failure_reset`, after
    ``now``) records it as ``resets_at``.
    """
    c = classify(
        exit_code=o.exit_code,
        signal=o.signal,
        stderr_tail=o.stderr_tail,
        stdout_tail=o.stdout_tail,
        timed_out=o.timed_out,
        hung=o.hung,
        interrupted=o.interrupted,
        rules=spec.classify,
    )
    error_type, message = c.error_type, c.message
    if not (o.timed_out or o.hung or o.interrupted):
        if o.error_type is not None:
            error_type, message = o.error_type, o.error or o.error_type
        elif o.invalid_output is not None:
            error_type, message = "validation_failed", o.invalid_output
    resets = failure_reset(error_type, (message, o.stderr_tail, o.stdout_tail), now)
    return ItemFailed(
        item=item,
        attempt=attempt,
        error_type=error_type,
        signature=c.signature if error_type == c.error_type else signature(error_type, message),
        message=_bounded(message, 4096),
        duration=round(o.duration, 6),
        exit_code=o.exit_code,
        signal=o.signal,
        stderr_tail=_bounded(o.stderr_tail),
        resources=resources,
        stdout=o.stdout,
        stderr=o.stderr,
        validations=list(o.validations),
        recovered=list(o.recovered),
        usage=o.usage,
        resets_at=rfc3339(resets) if resets is not None else None,
        worker=o.worker,
    )


def abandon_events(
    spec: MapSpec,
    item: str,
    attempt: int,
    message: str,
    *,
    now: float,
    resources: dict[str, float],
) -> list[Event]:
    """Events for an attempt whose engine died before its outcome was recorded.

    The attempt counts: it fails as ``interrupted``, and is retried at once
    while attempts remain (``interrupted`` retries by default), or goes
    where ``on_item_failure`` says.
    """
    return failure_events(
        spec,
        item,
        attempt,
        "interrupted",
        message or ABANDONED,
        now=now,
        resources=resources,
        stable=ABANDONED,
    )


def failure_events(
    spec: MapSpec,
    item: str,
    attempt: int,
    error_type: str,
    message: str,
    *,
    now: float,
    resources: dict[str, float],
    stable: str | None = None,
    history: ItemHistory = NO_HISTORY,
) -> list[Event]:
    """A failed attempt without an outcome from its executor, and what follows it.

    It is retried at once while attempts remain and ``error_type`` is retried,
    else it goes where ``on_item_failure`` says. ``stable``: the text the
    failure's signature is made of (by default ``message``); the message
    is kept under 4 KiB, so the record always fits.
    """
    message = _bounded(message, 4096)
    failed = ItemFailed(
        item=item,
        attempt=attempt,
        error_type=error_type,
        signature=signature(error_type, stable if stable is not None else message),
        message=message,
        duration=0.0,
        resources=resources,
    )
    decision = retry_or_dead_letter(spec, failed, cause="no_outcome", now=now, history=history)
    return [failed, *decision]


def _bounded(text: str, limit: int = 64 * 1024) -> str:
    """The end of ``text``, at most ``limit`` bytes as JSON (escapes counted: a control
    character takes six), so that the record holding it always fits."""
    if not text.isascii():
        text = text.encode("utf-8", "replace").decode("utf-8")  # no lone surrogates
    size = len(msgspec.json.encode(text))
    while size > limit:
        keep = len(text) * limit // size - 1
        text = text[len(text) - keep :] if keep > 0 else ""
        size = len(msgspec.json.encode(text))
    return text


def machine_resources() -> dict[str, float]:
    """Load, free memory and free disk now (recorded with a failure; it reads the machine)."""
    out: dict[str, float] = {}
    with contextlib.suppress(OSError):
        out["load1"] = round(os.getloadavg()[0], 2)
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                out["mem_available_mb"] = round(int(line.split()[1]) / 1024, 1)
                break
    with contextlib.suppress(OSError):
        out["disk_free_mb"] = round(shutil.disk_usage(Path.cwd()).free / 2**20, 1)
    return out


def heartbeat_event(item: str, attempt: int, sample: HeartbeatSample) -> Heartbeat:
    """A running attempt's heartbeat record, from its executor's sample."""
    return Heartbeat(
        item=item,
        attempt=attempt,
        pid=sample.pid,
        rss=sample.rss,
        cpu=sample.cpu,
        output_bytes=sample.output_bytes,
        touched_at=sample.touched_at,
        agent=sample.agent,
    )


def describe_error(exc: BaseException) -> str:
    """An exception as one short line: its type and message."""
    text = " ".join(str(exc).split()) or "(no message)"
    if len(text) > 500:
        text = text[:500] + "..."
    return f"{type(exc).__name__}: {text}"
