"""Options of the commands that run attempts: where (--executor, --workers), the cache."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from engine.workflow.spec_executor import check_executor

__all__ = ["EXECUTOR", "NO_CACHE", "REFRESH_CACHE", "check_workers"]

NO_CACHE = click.option(
    "--no-cache", is_flag=True, help="Neither use nor fill the workflow's cache."
)
REFRESH_CACHE = click.option(
    "--refresh-cache", is_flag=True, help="Run every item, and store its result in the cache."
)


def _executor(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return check_executor(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--executor") from None


_EXECUTOR = click.option(
    "--executor",
    "executor_name",
    metavar="EXECUTOR",
    callback=_executor,
    help="Where the map's attempts run: local (this machine's process groups), "
    "dask://HOST:PORT (the Dask scheduler there: the workspace at the same path on every "
    "worker), or dask (a local Dask cluster, see --workers); over the workflow's executor: "
    "[default: the workflow's, else local]. Dask needs the dask extra.",
)
_WORKERS = click.option(
    "--workers",
    type=click.IntRange(min=1, max=1000),
    help="With --executor dask: the local cluster's worker processes [default: 2].",
)


def EXECUTOR(command: Callable[..., Any]) -> Callable[..., Any]:
    """--executor and --workers."""
    return _EXECUTOR(_WORKERS(command))


def check_workers(executor_name: str | None, workers: int | None) -> None:
    """--workers is for --executor dask (or a workflow's ``executor: dask``)."""
    if workers is not None and executor_name not in (None, "dask"):
        raise click.BadParameter(
            f"--workers is for --executor dask, not {executor_name}", param_hint="--workers"
        )
