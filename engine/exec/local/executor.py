"""The local executor: attempts as process groups on this machine; what a dead engine left."""

from __future__ import annotations

import asyncio
from pathlib import Path

from engine.exec.executor import Attempt, AttemptRequest, Executor
from engine.exec.local.attempt import LocalAttempt
from engine.exec.local.guardian_client import GUARDIAN, GUARDIAN_GRACE, Guardian
from engine.exec.local.procfs import run_processes, stop_groups

__all__ = ["LocalExecutor"]


class LocalExecutor(Executor):
    """Runs attempts as local subprocesses.

    ``guardian``: the helper that stops the attempts' processes should this
    engine die (this process's own unless told otherwise).
    """

    name = "local"

    def __init__(self, *, guardian: Guardian = GUARDIAN) -> None:
        self.guardian = guardian

    async def start(self, request: AttemptRequest) -> Attempt:
        return LocalAttempt(request, guardian=self.guardian)

    async def reclaim(
        self, run_id: str, run_dir: Path, grace: float = GUARDIAN_GRACE
    ) -> dict[str, int]:
        """Stop every process an earlier engine left running for ``run_id``.

        Attempts carry ``ENGINE_RUN_ID`` and ``ENGINE_RUN_DIR`` in their
        environment, and so do the processes they start: those still alive are
        found in ``/proc``, their groups sent SIGTERM, and after ``grace``
        seconds SIGKILL.
        """
        found = await asyncio.to_thread(run_processes, run_id, run_dir)
        groups = {pgid for pgid, _item in found.values()}
        if not groups:
            return {}
        await stop_groups(groups, grace)
        per_item: dict[str, int] = {}
        for _pgid, item in found.values():
            per_item[item] = per_item.get(item, 0) + 1
        return per_item
