"""The phase driver: a run's opening recorded, then setup, enqueue, map, reduce, finish.

Each phase goes as far as the ledger says is left (a resume skips what is
done). Between phases, and whenever the map stops, the driver asks how the
run stands: stopped by a signal (interrupted: nothing more is recorded,
exit 130, resumable), cancelled (``run.aborted``, exit 130), stopped by its
budget (``run.aborted``, exit 4, resumable), failed (``run.failed``, exit 1),
or on to the next phase. ``run.completed`` comes
last, never with an item running or pending.

While it drives, SIGINT and SIGTERM stop the run (:func:`handling_signals`)
and ``control.json`` is watched (:class:`~engine.run.watcher.ControlWatcher`).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterator

from engine.errors import IncompleteMap, ItemsError
from engine.exec.local import orphans
from engine.map.scheduler import Feed, MapScheduler
from engine.run.context import RunContext, unfinished
from engine.run.enqueue import enqueue
from engine.run.isolated import isolated, merge_variables, open_isolation, settle_merges
from engine.run.options import RunResult
from engine.run.recovery import end_leftovers, reclaim, requeue_events, settle_interrupted
from engine.run.steps import map_context, run_steps
from engine.run.watcher import ControlWatcher
from engine.store.cache import ItemHooks
from ledger.errors import EngineError
from ledger.events import Event, RunAborted, RunCompleted, RunFailed

__all__ = ["EXIT_BUDGET", "SIGNALS", "drive", "handling_signals"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)
"""The signals that stop a run (resumable)."""


@contextlib.contextmanager
def handling_signals(run: RunContext, wake: Callable[[], None] = lambda: None) -> Iterator[None]:
    """SIGINT and SIGTERM stop the run while inside; the handlers found are put back after.

    ``wake``: told after a signal stopped the run (a phase waiting on a pause ends).

    asyncio's ``remove_signal_handler`` leaves the default action, not the
    handler that was there before: a SIGTERM just after the run would then
    kill the process outright (-15, nothing said) instead of reaching the
    CLI's handler (exit 130 and a line on stderr) or a library caller's own.
    """
    loop = asyncio.get_running_loop()
    before = {signum: signal.getsignal(signum) for signum in SIGNALS}

    def on_signal(signum: int) -> None:
        run.signal = signum
        run.halt("interrupted")
        wake()

    installed: list[signal.Signals] = []
    try:
        for signum in SIGNALS:
            loop.add_signal_handler(signum, on_signal, signum)
            installed.append(signum)
        yield
    finally:
        for number in installed:
            loop.remove_signal_handler(number)
            handler = before[number]
            if handler is not None:  # None: not set from Python; nothing to put back
                signal.signal(number, handler)


async def drive(run: RunContext, opening: list[Event], *, resuming: bool = False) -> RunResult:
    """Record ``opening``, then setup, map and reduce, as far as the ledger says is left."""
    assert run.writer is not None
    control = ControlWatcher(run)
    adopt = run.options.adopt_orphans
    failed = False
    try:
        with handling_signals(run, control.wake):
            if adopt:
                orphans.adopt(True)
            try:
                return await _phases(run, control, opening, resuming=resuming)
            except EngineError as exc:
                run.redactor.error(exc)  # its message reaches the terminal
                failed = True  # its one line says what stopped the run
                raise
            finally:
                if adopt:
                    orphans.adopt(False)
                await control.stop()
                await run.receipt_writer.close(say=not failed)
    finally:
        run.writer.close()
        if run.owns_executor:
            await run.executor.close()


async def _phases(
    run: RunContext, control: ControlWatcher, opening: list[Event], *, resuming: bool
) -> RunResult:
    spec = run.spec
    await run.append(opening)
    await control.start()
    run.hold = control.unpaused
    leftovers = await reclaim(run) if resuming else {}
    if isolated(run):
        await open_isolation(run, resuming=resuming)
        if resuming:
            await settle_merges(run)
    if resuming:
        await settle_interrupted(run, leftovers)
    failure = await run_steps(run, "setup", list(spec.setup), hold=control.unpaused)
    if (result := await _halted(run)) is not None:
        return result
    if failure is not None:
        return await finish_failed(run, failure)
    if spec.map is not None and (result := await _map(run, control)) is not None:
        return result
    if run.isolation is not None:
        await run.isolation.guard_stash()  # the last attempts' too
    if (result := await _halted(run)) is not None:
        return result
    if left := unfinished(run.p):
        return await finish_engine_error(run, IncompleteMap(left))
    run.context["map"] = map_context(run)
    failure = await run_steps(run, "reduce", list(spec.reduce), hold=control.unpaused)
    if failure is None and spec.merge and not run.stopping:
        run.context["merge"] = await merge_variables(run)
        failure = await run_steps(run, "merge", list(spec.merge), hold=control.unpaused)
    await control.apply()  # a request that came as the last step ended is answered too
    if (result := await _halted(run)) is not None:
        return result
    if failure is not None:
        return await finish_failed(run, failure)
    return await _complete(run)


async def _map(run: RunContext, control: ControlWatcher) -> RunResult | None:
    """Enqueue the items and run the map; the run's result if it ends here.

    The control file is read as the map starts: a request written before it
    is in force before the first dispatch, however late the watch reports it.
    """
    try:
        enqueued = await enqueue(run)
    except ItemsError as exc:
        await run.append([RunFailed(reason=str(exc))])
        raise
    if enqueued is None:  # the loading was stopped
        return await _halted(run) or finish_interrupted(run)
    requeued = requeue_events(run)
    if requeued:
        await run.append(requeued)
    scheduler = run.scheduler = _scheduler(run, enqueued.values, enqueued.feed)
    await control.apply()
    if run.interrupted:
        scheduler.stop("interrupted")
    if run.cancelled:
        scheduler.stop("cancelled")
    outcome = await scheduler.run()
    if outcome.stopped is None:
        return None
    if outcome.stopped == "interrupted":
        return finish_interrupted(run)
    if outcome.stopped == "cancelled":
        return await finish_cancelled(run)
    if outcome.stopped == "budget":
        return await finish_budget(run)
    if outcome.stopped == "engine_error":
        assert outcome.error is not None
        return await finish_engine_error(run, outcome.error)
    reason = (
        "an item failed and on_item_failure is 'fail'"
        if outcome.stopped == "item_failed"
        else "too many failed items (max_failures / failure_threshold)"
    )
    return await finish_failed(run, reason)


def _scheduler(run: RunContext, values: dict[str, object], feed: Feed | None) -> MapScheduler:
    spec = run.spec
    assert spec.map is not None and run.writer is not None
    options = run.options
    return MapScheduler(
        writer=run.writer,
        projections=run.p,
        spec=spec.map,
        executor=run.executor,
        values=values,
        request=run.request,
        max_parallel=options.max_parallel or spec.map.max_parallel,
        clock=options.clock,
        circuit=spec.circuit_breaker,
        on_change=run.changed,
        hooks=ItemHooks(
            home=run.run_dir.parent.parent,
            run_id=run.run_id,
            workspace=run.workdir,
            spec=spec.map,
            cache=spec.cache,
            mode=run.p.run.cache_mode,
            context=lambda item, value: dict(run.request(item, 0, "", value).context),
            redactor=run.redactor,
        ),
        warn=options.warn,
        store=run.store,
        isolation=run.isolation,
        budget=spec.budget,
        feed=feed,
    )


# --- how a run ends -----------------------------------------------------------------


async def _halted(run: RunContext) -> RunResult | None:
    """The result, once a signal, a cancel or the spent budget has stopped the run."""
    if run.interrupted:
        return finish_interrupted(run)
    if run.cancelled:
        return await finish_cancelled(run)
    if run.budget_stop:
        return await finish_budget(run)
    return None


async def _complete(run: RunContext) -> RunResult:
    counts = run.p.items.counts
    await end_leftovers(run)
    await run.append(
        [
            RunCompleted(
                succeeded=counts["succeeded"],
                failed=counts["failed"],
                dead=counts["dead"],
                skipped=counts["skipped"],
            )
        ]
    )
    failed = counts["failed"] + counts["dead"]
    return RunResult(
        run.run_id, run.run_dir, "completed", 1 if failed else 0, run.p, output=run.output
    )


async def finish_failed(run: RunContext, reason: str) -> RunResult:
    await end_leftovers(run)
    await run.append([RunFailed(reason=reason)])
    return RunResult(run.run_id, run.run_dir, "failed", 1, run.p, reason)


async def finish_engine_error(run: RunContext, error: BaseException) -> RunResult:
    """An error in the engine stopped the run: failed (resumable), never completed.

    When even ``run.failed`` cannot be recorded (the writer stopped), the
    error goes up as it is; the run is then interrupted, and resumable.
    """
    reason = f"engine error: {type(error).__name__}: {error}"
    if isinstance(error, IncompleteMap):
        run.options.warn(f"engine: {reason}")  # said nowhere else
    else:
        reason += f"; resume the run to finish it: engine resume {run.run_id}"
    try:
        return await finish_failed(run, reason[:4096])
    except Exception:
        raise error from None


def finish_interrupted(run: RunContext) -> RunResult:
    """Stopped by a signal: nothing more is recorded; the run is resumable."""
    return RunResult(run.run_id, run.run_dir, "interrupted", 130, run.p, "interrupted")


EXIT_BUDGET = 4
"""The exit code of a run stopped by its budget (resumable)."""


async def finish_budget(run: RunContext) -> RunResult:
    """Stopped by its budget (``budget.exhausted``): ``run.aborted`` (resumable with more)."""
    spend = run.p.budget
    limit = spend.limit(run.spec.budget.max_cost_usd) or 0.0
    given = "budget.max_cost_usd" if spend.raised_to is None else "engine resume --budget"
    reason = (
        f"budget spent: ${spend.spent_usd:.2f} of ${limit:.2f} ({given}); "
        f"raise it and go on with: engine resume {run.run_id} --budget USD"
    )
    await end_leftovers(run)
    await run.append([RunAborted(reason=reason)])
    return RunResult(run.run_id, run.run_dir, "aborted", EXIT_BUDGET, run.p, reason)


async def finish_cancelled(run: RunContext) -> RunResult:
    """Stopped by ``engine cancel``: ``run.aborted`` (resumable)."""
    by = run.p.run.cancel_by or "engine cancel"
    await end_leftovers(run)
    await run.append([RunAborted(reason=f"cancelled by {by}")])
    return RunResult(run.run_id, run.run_dir, "aborted", 130, run.p, f"cancelled by {by}")
