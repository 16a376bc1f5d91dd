"""What an engine finds of the ones before it, and what its own steps leave behind.

* :func:`reclaim`: what a dead engine left running, stopped first;
* :func:`settle_interrupted`: attempts a dead engine left without an outcome
  are recorded ``interrupted``, the logs they had written kept under their
  final names and named in the record;
* :func:`requeue_events`: the dead items a resume brings back;
* :func:`end_leftovers`: processes of the run that outlived their steps, as
  the run ends: stopped (or left, with ``map.allow_background``) and said.
"""

from __future__ import annotations

import asyncio

import msgspec

from engine.exec.local import orphans
from engine.exec.local.procfs import process_command, run_processes
from engine.map.outcomes import abandon_events, machine_resources
from engine.run.context import RunContext
from engine.store.logs import keep_partial_logs
from ledger.events import Event, ItemFailed, ItemRequeued, LeftoverProcess, LogRef, RunLeftovers

__all__ = ["end_leftovers", "reclaim", "requeue_events", "settle_interrupted"]


async def reclaim(run: RunContext) -> dict[str, int]:
    """Stop what a dead engine left running for the run (before anything else of a resume);
    how many processes, by item.

    Also on every Dask scheduler an earlier session ran attempts on, when this one
    runs elsewhere: its tasks run on without their engine. One that cannot be reached
    refuses the resume (they may still run there).
    """
    stopped = await run.executor.reclaim(run.run_id, run.run_dir)
    for name in run.p.run.executors:
        if name.startswith("dask://") and name != run.executor.name:
            for item, count in (await _reclaim_on(name, run)).items():
                stopped[item] = stopped.get(item, 0) + count
    return stopped


async def _reclaim_on(address: str, run: RunContext) -> dict[str, int]:
    from engine.exec.dask.cluster import DaskUnreachable  # noqa: PLC0415 - the dask extra
    from engine.exec.dask.executor import DaskExecutor  # noqa: PLC0415

    earlier = DaskExecutor(address)
    try:
        return await earlier.reclaim(run.run_id, run.run_dir)
    except DaskUnreachable:
        raise DaskUnreachable(
            f"run {run.run_id!r} ran attempts on {address}, which cannot be reached: they may "
            "still run there",
            hint="start a scheduler at that address again and resume: what of the run still "
            "runs on the workers connected to it is stopped first",
        ) from None
    finally:
        await earlier.close()


async def settle_interrupted(run: RunContext, leftovers: dict[str, int]) -> None:
    """Attempts a dead engine left without an outcome (``leftovers``: the processes
    :func:`reclaim` stopped, by item): recorded interrupted."""
    assert run.spec.map is not None or not run.p.items.items
    running = [s for s in run.p.items.items.values() if s.status == "running"]
    if not running or run.spec.map is None:
        return
    events: list[Event] = []
    for state in sorted(running, key=lambda s: s.index):
        stopped = leftovers.get(state.item, 0)
        message = "the engine stopped before this attempt's outcome was recorded"
        if stopped:
            message += f" ({stopped} leftover process{'es' if stopped > 1 else ''} stopped)"
        stdout, stderr = await _kept_logs(run, state.item, state.attempts)
        events += [
            msgspec.structs.replace(e, stdout=stdout, stderr=stderr)
            if isinstance(e, ItemFailed)
            else e
            for e in abandon_events(
                run.spec.map,
                state.item,
                state.attempts,
                message,
                now=run.options.clock(),
                resources=machine_resources(),
            )
        ]
    await run.append(events)


async def _kept_logs(
    run: RunContext, item: str, attempt: int
) -> tuple[LogRef | None, LogRef | None]:
    """The logs an interrupted attempt wrote, under their final names (or a warning)."""
    try:
        return await asyncio.to_thread(keep_partial_logs, run.run_dir, item, attempt)
    except OSError as exc:
        run.options.warn(
            f"engine: cannot keep the log of item {item!r} attempt {attempt}: "
            f"{exc.strerror or exc} (its item.failed names no log)"
        )
        return None, None


def requeue_events(run: RunContext) -> list[Event]:
    """``item.requeued`` for the dead items a resume brings back."""
    options = run.options
    wanted: list[str] = []
    if options.requeue is not None:
        wanted = [item for item in options.requeue if item in run.p.dlq.dead]
    elif options.include_dlq:
        wanted = sorted(run.p.dlq.dead, key=lambda item: run.p.items.items[item].index)
    reason = "dlq retry" if options.requeue is not None else "resume --include-dlq"
    return [ItemRequeued(item=item, reason=reason) for item in wanted]


async def end_leftovers(run: RunContext) -> None:
    """Processes of the run that outlived their steps, as the run ends: stopped, and said.

    A step's own process group is stopped when the step ends; what is
    found here left it (``setsid``) or was kept (``map.allow_background``,
    then it is reported and left running). One line on stderr, and a
    ``run.leftovers`` record.
    """
    keep = run.spec.map.allow_background if run.spec.map else False
    found = await asyncio.to_thread(run_processes, run.run_id, run.run_dir)
    if not found:
        return
    processes = [
        LeftoverProcess(
            pid=pid,
            pgid=pgid,
            item=item,
            command=run.redactor.text(process_command(pid))[:300],
        )
        for pid, (pgid, item) in sorted(found.items())
    ]
    if not keep:
        await run.local.reclaim(run.run_id, run.run_dir)
        orphans.reap()
    shown = ", ".join(
        f"pid {p.pid} ({p.item + ': ' if p.item else ''}{p.command[:60]})" for p in processes[:3]
    )
    more = f" and {len(processes) - 3} more" if len(processes) > 3 else ""
    what = "left running (map.allow_background)" if keep else "stopped"
    run.options.warn(
        f"engine: {len(processes)} process{'es' if len(processes) > 1 else ''} of run "
        f"{run.run_id} outlived {'their steps' if len(processes) > 1 else 'its step'}, "
        f"{what}: {shown}{more}"
    )
    await run.append([RunLeftovers(processes=processes[:100], stopped=not keep)])
