"""The workflow's ``executor:``: where its map's attempts run.

``local`` (the default: process groups on this machine), ``dask`` (a local
Dask cluster started for the run), ``dask://HOST:PORT`` (the Dask scheduler
there), or ``{address: ..., workers: N}`` (``workers``: the local cluster's
worker processes). ``engine run --executor`` wins over it.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

__all__ = ["EXECUTOR_FORMS", "ExecutorField", "ExecutorSpec", "check_executor"]

EXECUTOR_FORMS = "local, dask, or dask://HOST:PORT"


HOST = re.compile(r"[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\]")
"""A host name, an IPv4 address, or an IPv6 one in brackets."""


def check_executor(value: str) -> str:
    """``value`` if it names an executor (see :data:`EXECUTOR_FORMS`), else ValueError."""
    if value in ("local", "dask"):
        return value
    host, sep, port = value.removeprefix("dask://").rpartition(":")
    named = bool(HOST.fullmatch(host))
    if value.startswith("dask://") and sep and named and port.isdigit() and 0 < int(port) < 65536:
        return value
    raise ValueError(f"executor {value!r} is not one of {EXECUTOR_FORMS}")


class ExecutorSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    address: Annotated[str, AfterValidator(check_executor)] = "dask"
    workers: Annotated[int, Field(ge=1, le=1000)] | None = None
    """The local cluster's worker processes (``address: dask``)."""

    def model_post_init(self, _context: Any) -> None:
        if self.workers is not None and self.address != "dask":
            raise ValueError("executor.workers is for address: dask (a local cluster)")


def _as_spec(value: Any) -> Any:
    """``executor: ADDRESS`` is ``executor: {address: ADDRESS}`` (one type, one error)."""
    return {"address": value} if isinstance(value, str) else value


ExecutorField = Annotated[ExecutorSpec | None, BeforeValidator(_as_spec)]
"""The type of ``Workflow.executor``: a string is read as the address."""
