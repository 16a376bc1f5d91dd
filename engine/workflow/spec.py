"""The workflow spec: pydantic models of a workflow file (YAML or JSON).

Every model forbids unknown keys. Durations are numbers of seconds or
strings such as ``500ms``, ``10s``, ``2m``, ``1h30m``. See
``docs/workflow.md`` for every field with its default and an example.
"""

from __future__ import annotations

import math
import re
import shlex
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    field_validator,
    model_validator,
)

from engine.limits import MAX_DURATION, MAX_ENV_ENTRY
from engine.workflow.patterns import PatternError, compile_pattern

__all__ = [
    "ERROR_TYPES",
    "RETRIED_BY_DEFAULT",
    "TRANSIENT_ERROR_TYPES",
    "CacheSpec",
    "CircuitBreakerSpec",
    "ClassifyRule",
    "Duration",
    "ErrorType",
    "HeartbeatSpec",
    "MapSpec",
    "RetrySpec",
    "Step",
    "Workflow",
    "parse_duration",
]

ErrorType = Literal[
    "timeout",
    "hung",
    "rate_limited",
    "api_error",
    "resource_exhausted",
    "worker_lost",
    "interrupted",
    "command_failed",
    "validation_failed",
    "merge_conflict",
    "unknown",
]
ERROR_TYPES: tuple[str, ...] = ErrorType.__args__  # type: ignore[attr-defined]
TRANSIENT_ERROR_TYPES: tuple[ErrorType, ...] = (
    "timeout",
    "hung",
    "rate_limited",
    "api_error",
    "resource_exhausted",
    "worker_lost",
    "interrupted",
)
"""Error types that are passing trouble: retried by default."""
RETRIED_BY_DEFAULT: tuple[ErrorType, ...] = (*TRANSIENT_ERROR_TYPES, "merge_conflict")
"""Error types ``retry.retry_on`` lists by default: the transient ones, and a merge
conflict (the retry forks from the run branch's newer head, which usually resolves it)."""

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _seconds(number: float) -> float:
    """A duration's seconds, checked: finite, not negative, at most a year."""
    if math.isnan(number) or math.isinf(number):
        raise ValueError("a duration is a finite number of seconds (not NaN or infinity)")
    if number < 0:
        raise ValueError("a duration cannot be negative")
    if number > MAX_DURATION:
        raise ValueError(f"a duration is at most {MAX_DURATION:.0f} seconds (a year)")
    return number


def parse_duration(value: Any) -> Any:
    """``"1h30m"`` -> 5400.0; numbers are seconds; anything else is refused."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '10s', '2m'")
    if isinstance(value, int):
        # Compared before float(): a 400-digit int would overflow it.
        return _seconds(float(max(-1, min(value, int(MAX_DURATION) + 1))))
    if isinstance(value, float):
        return _seconds(value)
    if isinstance(value, str):
        text = value.strip().replace(" ", "")
        if 0 < len(text) <= 64 and _DURATION.sub("", text) == "":
            return _seconds(sum(float(n) * _UNITS[u] for n, u in _DURATION.findall(text)))
        try:
            number = float(text) if len(text) <= 64 else math.nan
        except ValueError:
            number = math.nan
        if math.isnan(number) and text.lower().lstrip("+-") != "nan":
            raise ValueError(
                f"{value[:40]!r} is not a duration (use e.g. '500ms', '10s', '2m', '1h30m')"
            )
        return _seconds(number)
    raise ValueError("a duration is a number of seconds or a string like '10s', '2m'")


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_env_name(name: str) -> str:
    """An environment variable's name: letters, digits and ``_``, not first a digit."""
    if not _ENV_NAME.fullmatch(name):
        raise ValueError(
            f"{name[:40]!r} is not an environment variable name "
            "(use letters, digits and _, not starting with a digit)"
        )
    return name


def _env_names(env: dict[str, str]) -> dict[str, str]:
    for name, value in env.items():
        check_env_name(name)
        size = len(name.encode("utf-8")) + len(value.encode("utf-8", "surrogatepass")) + 2
        if size > MAX_ENV_ENTRY:
            raise ValueError(
                f"the entry {name}=... is {size:,} bytes: an environment entry holds at most "
                f"{MAX_ENV_ENTRY:,} (put the value in a file and give its path)"
            )
    return env


def _env_name_list(names: list[str]) -> list[str]:
    for name in names:
        check_env_name(name)
    return names


EnvMap = Annotated[dict[str, str], AfterValidator(_env_names)]
EnvNames = Annotated[list[str], AfterValidator(_env_name_list)]
Count = Annotated[StrictInt, Field(le=2**62)]
"""A whole number (``true`` or ``2.0`` is refused), small enough for the ledger."""


Duration = Annotated[float, BeforeValidator(parse_duration)]
"""Seconds: a finite number from 0 to a year, or a string such as ``10s`` or ``1h30m``."""


def _exactly_one(model: BaseModel, fields: tuple[str, ...], what: str) -> None:
    given = [name for name in fields if getattr(model, name) is not None]
    if len(given) != 1:
        found = " and ".join(given) if given else "none"
        raise ValueError(f"{what} needs exactly one of {', '.join(fields)} (found {found})")


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False
    )


class Step(_Model):
    """One command: exactly one of ``run``, ``shell``, ``argv`` or ``claude``."""

    run: str | None = None
    """A shell command (``/bin/sh -c``)."""
    shell: str | None = None
    """The same as ``run``."""
    argv: list[str] | None = None
    """A program and its arguments, run without a shell."""
    claude: str | None = None
    """A prompt for the configured agent command (default ``claude -p``)."""
    name: str | None = None
    timeout: Duration | None = None
    """Kill the step after this long (SIGTERM to its process group, then SIGKILL)."""
    env: EnvMap = {}
    cwd: str | None = None
    """Working directory, relative to the workflow's directory."""
    on_failure: list[Step] = []
    """Steps run (best effort) when this step fails."""
    capture_output: str | None = None
    """Name under which the step's stdout is kept, as ``${NAME}``."""
    capture_format: Literal["text", "json", "lines"] = "text"
    output: Literal["json", "text"] | None = None
    """On the map's last step: the item's result is its stdout (as JSON or text)."""
    artifacts: list[str] = []
    """Files (paths or globs, inside the workspace) kept after success."""
    commit_required: StrictBool = False
    """The step must create at least one commit (move HEAD of the repository it works
    in); else it fails with ``validation_failed``."""

    @model_validator(mode="after")
    def _one_command(self) -> Step:
        _exactly_one(self, ("run", "shell", "argv", "claude"), "a step")
        if self.argv is not None and not self.argv:
            raise ValueError("argv needs at least the program to run")
        if self.capture_output is not None and not re.fullmatch(
            r"[A-Za-z_][A-Za-z0-9_]*", self.capture_output
        ):
            raise ValueError("capture_output must be a name like files or build_id")
        for pattern in self.artifacts:
            if pattern.startswith("/") or ".." in pattern.split("/"):
                raise ValueError(
                    f"artifact {pattern!r} must stay inside the workspace "
                    "(no absolute paths or '..')"
                )
        return self

    @property
    def kind(self) -> Literal["shell", "argv", "claude"]:
        if self.argv is not None:
            return "argv"
        if self.claude is not None:
            return "claude"
        return "shell"

    @property
    def text(self) -> str:
        """The command as written (for display and the ledger)."""
        if self.argv is not None:
            return " ".join(self.argv)
        return self.run or self.shell or self.claude or ""


def _steps(value: Any) -> Any:
    """``{commands: [...]}`` is accepted as the list itself."""
    if isinstance(value, dict) and set(value) == {"commands"}:
        return value["commands"]
    if isinstance(value, dict) and "commands" in value:
        extra = sorted(set(value) - {"commands"})
        raise ValueError(f"only 'commands' is allowed here (found {', '.join(extra)})")
    return value


Steps = Annotated[list[Step], BeforeValidator(_steps)]


class RetrySpec(_Model):
    max_attempts: StrictInt = Field(3, ge=1, le=10_000)
    """Attempts in all, the first included."""
    backoff: Literal["fixed", "linear", "exponential"] = "exponential"
    initial: Duration = 2.0
    multiplier: StrictFloat = Field(2.0, ge=1.0, le=1000.0)
    max: Duration = 60.0
    jitter: StrictBool = True
    """Spread each delay uniformly over [delay/2, delay]."""
    retry_on: list[ErrorType] = list(RETRIED_BY_DEFAULT)


class HeartbeatSpec(_Model):
    interval: Duration = Field(10.0, gt=0)
    hung_after: Duration | None = None
    """No output and no touch of the heartbeat file for this long: ``hung``."""


class ClassifyRule(_Model):
    pattern: str
    """A regular expression searched in the attempt's stderr and stdout tail."""
    as_: ErrorType = Field(alias="as")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            compile_pattern(value, ignore_case=True)
        except PatternError as exc:
            raise ValueError(str(exc)) from None
        return value


class MapSpec(_Model):
    input: str | None = None
    """A JSON (or JSON Lines) file of items, relative to the workflow's directory."""
    command: str | None = None
    """A command whose stdout lists the items (JSON, or one item a line)."""
    items: list[Any] | None = None
    """Items given inline."""
    json_path: str | None = None
    id: str | None = None
    """Template of the item's identity, e.g. ``${item.path}``; default: hash of the item."""
    filter: str | None = None
    sort_by: str | None = None
    max_items: Count | None = Field(None, ge=0)
    offset: Count = Field(0, ge=0)
    max_parallel: StrictInt = Field(4, ge=1, le=100_000)
    timeout: Duration | None = None
    """Per item: all of its steps together."""
    retry: RetrySpec = RetrySpec()
    heartbeat: HeartbeatSpec = HeartbeatSpec()
    on_item_failure: Literal["dlq", "fail", "ignore"] = "dlq"
    max_failures: Count | None = Field(None, ge=1)
    failure_threshold: StrictFloat | None = Field(None, gt=0, le=1)
    """Stop when this fraction of finished items failed (after at least 10)."""
    agent_template: Steps
    classify: list[ClassifyRule] = []
    allow_background: bool = False
    """Keep what a step leaves running in the background (``cmd &``, a double
    fork, ``setsid``) when it ends; by default it is stopped with the step,
    and whatever escaped its process group is stopped at the end of the run.
    Applies to the setup and reduce steps too."""
    isolation: Literal["none", "worktree"] = "none"
    """``worktree``: each attempt works in its own git worktree and branch, merged into
    the run's branch ``engine/<run-id>`` once it succeeds (``docs/worktrees.md``)."""
    commit_leftovers: StrictBool = True
    """With isolation: changes a successful attempt left uncommitted are committed by the
    engine (false: the attempt fails with ``validation_failed`` instead)."""
    on_conflict: Steps = []
    """With isolation: steps run in the run's worktree when an attempt's merge
    conflicts, the merge left in progress for them to finish."""

    @model_validator(mode="after")
    def _one_source(self) -> MapSpec:
        _exactly_one(self, ("input", "command", "items"), "map")
        if not self.agent_template:
            raise ValueError("agent_template needs at least one step")
        if self.isolation != "worktree" and self.on_conflict:
            raise ValueError("on_conflict needs isolation: worktree (there is no merge without it)")
        return self


class CircuitBreakerSpec(_Model):
    threshold: StrictInt = Field(5, ge=1, le=1_000_000)
    cooldown: Duration = 30.0
    on: list[ErrorType] = ["rate_limited", "api_error"]


class CacheSpec(_Model):
    key: list[str] = ["${item}"]
    inputs: list[str] = []
    """Files whose content is part of the key (paths or globs)."""
    enabled: StrictBool = True


class AgentSpec(_Model):
    command: str = "claude -p"
    """The command a ``claude:`` step runs, with the prompt as its last argument."""

    @field_validator("command")
    @classmethod
    def _splits(cls, value: str) -> str:
        try:
            words = shlex.split(value)
        except ValueError as exc:
            raise ValueError(
                f"cannot split {value[:60]!r} into words: {exc} (close the quote)"
            ) from None
        if not words:
            raise ValueError("is empty (name the agent's program, e.g. 'claude -p')")
        return value


class Workflow(_Model):
    name: str = Field(min_length=1)
    env: EnvMap = {}
    secrets: EnvNames = []
    """Names of environment variables passed to commands and never recorded."""
    agent: AgentSpec = AgentSpec()
    setup: Steps = []
    map: MapSpec | None = None
    reduce: Steps = []
    circuit_breaker: CircuitBreakerSpec | None = None
    cache: CacheSpec | None = None
    merge: Steps = []
    """With ``map.isolation: worktree``: steps run after reduce, in the run's worktree,
    to bring the run's branch to the workspace's (``${merge.*}``)."""

    @model_validator(mode="after")
    def _something_to_do(self) -> Workflow:
        if self.map is None and not self.setup and not self.reduce:
            raise ValueError("a workflow needs a map, setup or reduce")
        isolated = self.map is not None and self.map.isolation == "worktree"
        if self.merge and not isolated:
            raise ValueError(
                "merge needs map.isolation: worktree (there is no run branch to merge)"
            )
        if isolated and self.cache is not None and self.cache.enabled:
            raise ValueError(
                "cache cannot be used with map.isolation: worktree (a cached item's changes "
                "are not commits to merge): remove cache, or set cache.enabled: false"
            )
        return self
