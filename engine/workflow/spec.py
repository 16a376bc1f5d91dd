"""The workflow spec: pydantic models of a workflow file (YAML or JSON).

Every model forbids unknown keys. Durations are numbers of seconds or
strings such as ``500ms``, ``10s``, ``2m``, ``1h30m``. See
``docs/workflow.md`` for every field with its default and an example.
"""

from __future__ import annotations

import re
import shlex
from typing import Annotated, Any, Literal

from pydantic import (
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

from engine.workflow.error_types import (
    ERROR_TYPES,
    RETRIED_BY_DEFAULT,
    TRANSIENT_ERROR_TYPES,
    ErrorType,
)
from engine.workflow.fields import (
    USD,
    Count,
    Duration,
    EnvEntries,
    EnvMap,
    EnvValue,
    Profiles,
    Secrets,
    check_env_name,
    parse_duration,
)
from engine.workflow.patterns import PatternError, compile_pattern
from engine.workflow.spec_executor import ExecutorField

__all__ = [
    "ERROR_TYPES",
    "RETRIED_BY_DEFAULT",
    "TRANSIENT_ERROR_TYPES",
    "BudgetSpec",
    "CacheSpec",
    "CircuitBreakerSpec",
    "ClassifyRule",
    "Duration",
    "EnvValue",
    "ErrorType",
    "HeartbeatSpec",
    "IncompleteSpec",
    "MapSpec",
    "OnFailure",
    "PhaseTimeouts",
    "RetrySpec",
    "Step",
    "ValidateSpec",
    "Workflow",
    "WriteFileSpec",
    "check_env_name",
    "parse_duration",
]


def _exactly_one(model: BaseModel, fields: tuple[str, ...], what: str) -> None:
    given = [name for name in fields if getattr(model, name) is not None]
    if len(given) != 1:
        found = " and ".join(given) if given else "none"
        raise ValueError(f"{what} needs exactly one of {', '.join(fields)} (found {found})")


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False
    )


class WriteFileSpec(_Model):
    """A file the step writes, inside the workspace, with no process."""

    path: str
    """Relative to the step's working directory; a template (values are data)."""
    content: str = ""
    """A template; with ``format: json`` or ``yaml`` it must parse as that format."""
    format: Literal["text", "json", "yaml"] = "text"
    create_dirs: StrictBool = False
    """Make the missing parent directories (else a missing one fails the step)."""
    mode: str | None = None
    """Permissions in octal, e.g. ``"0644"`` (default: as a new file gets them)."""

    @field_validator("mode")
    @classmethod
    def _octal(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"0?[0-7]{3}", value):
            raise ValueError(f"{value[:20]!r} is not a file mode (use octal, e.g. '0644')")
        return value


class Step(_Model):
    """One command: exactly one of ``run``, ``shell``, ``argv``, ``claude`` or ``write_file``."""

    run: str | None = None
    """A shell command (``/bin/sh -c``)."""
    shell: str | None = None
    """The same as ``run``."""
    argv: list[str] | None = None
    """A program and its arguments, run without a shell."""
    claude: str | None = None
    """A prompt for the configured agent command (default ``claude -p``)."""
    write_file: WriteFileSpec | None = None
    """A file written by the engine itself (no process)."""
    name: str | None = None
    timeout: Duration | None = None
    """Kill the step after this long (SIGTERM to its process group, then SIGKILL)."""
    env: EnvMap = {}
    cwd: str | None = None
    """Working directory, relative to the workflow's directory."""
    on_failure: Handlers = Field(default_factory=lambda: OnFailure())  # noqa: PLW0108 (defined below)
    """What runs when this step fails: a list of steps (run best effort, then the step
    fails), or a mapping (``steps``, ``rerun``, ``recover``)."""
    retry: RetrySpec | None = None
    """Run the step again in place when it fails (the attempt goes on if a run succeeds)."""
    validate_: ValidateSpec | None = Field(None, alias="validate")
    """After the step succeeds: check how complete its work is, and repair it."""
    capture_output: str | None = None
    """Name under which the step's stdout is kept, as ``${NAME}``."""
    capture_format: Literal["text", "string", "json", "lines", "number", "boolean"] = "text"
    """How the capture reads the output (``string`` is ``text``)."""
    output: Literal["json", "text"] | None = None
    """On the map's last step: the item's result is its stdout (as JSON or text)."""
    artifacts: list[str] = []
    """Files (paths or globs, inside the workspace) kept after success."""
    commit_required: StrictBool = False
    """The step must create at least one commit (move HEAD of the repository it works
    in); else it fails with ``validation_failed``."""

    @model_validator(mode="after")
    def _one_command(self) -> Step:
        _exactly_one(self, ("run", "shell", "argv", "claude", "write_file"), "a step")
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
    def kind(self) -> Literal["shell", "argv", "claude", "write_file"]:
        if self.argv is not None:
            return "argv"
        if self.claude is not None:
            return "claude"
        if self.write_file is not None:
            return "write_file"
        return "shell"

    @property
    def text(self) -> str:
        """The command as written (for display and the ledger)."""
        if self.argv is not None:
            return " ".join(self.argv)
        if self.write_file is not None:
            return f"write_file {self.write_file.path}"
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


def _handlers(value: Any) -> Any:
    """``on_failure: [steps]`` is ``{steps: [...]}`` (run them, then fail)."""
    if isinstance(value, list):
        return {"steps": value}
    return value


class OnFailure(_Model):
    """What a failed step's failure leads to."""

    steps: Steps = []
    """Run in order when the step fails; they see it as ``${last.*}``."""
    rerun: Count = Field(0, ge=0, le=100)
    """After the handlers, run the failed step again, up to this many times (the
    handlers run again before each); a run that succeeds lets the item carry on."""
    recover: StrictBool = False
    """Handlers that succeed let the item carry on past the failed step (false: the step
    fails whatever they do)."""


class IncompleteSpec(_Model):
    """What ``validate`` does while the work is incomplete."""

    steps: Steps = []
    """Run to complete the work, with ``${validation.*}``; then it is validated again."""
    max_attempts: StrictInt = Field(2, ge=1, le=100)
    """Rounds of these steps and validation, at most."""
    fail: StrictBool = True
    """Still incomplete after the last round: the step fails (false: it goes on)."""


class ValidateSpec(_Model):
    """A step's work checked for completeness: its steps print (or write to
    ``result_file``) JSON with ``completion_percentage`` (0-100); below ``threshold``
    the ``on_incomplete`` steps run and it is checked again."""

    steps: Steps
    result_file: str | None = None
    """Read after the steps, relative to the step's working directory (else their stdout)."""
    threshold: StrictFloat | StrictInt = Field(100, ge=0, le=100)
    timeout: Duration | None = None
    """For each round of validation steps."""
    on_incomplete: IncompleteSpec | None = None


Handlers = Annotated[OnFailure, BeforeValidator(_handlers)]


class RetrySpec(_Model):
    max_attempts: StrictInt = Field(3, ge=1, le=10_000)
    """Attempts in all, the first included."""
    backoff: Literal["fixed", "linear", "exponential", "fibonacci"] = "exponential"
    initial: Duration = 2.0
    multiplier: StrictFloat = Field(2.0, ge=1.0, le=1000.0)
    max: Duration = 60.0
    jitter: StrictBool = True
    """Spread each delay uniformly over [delay/2, delay] (or by ``jitter_factor``)."""
    jitter_factor: StrictFloat | None = Field(None, gt=0, le=1)
    """With jitter: spread each delay uniformly over delay * (1 +/- factor/2) instead."""
    retry_on: list[ErrorType] = list(RETRIED_BY_DEFAULT)
    resume_session: StrictBool = False
    """A retried ``claude:`` step continues the failed attempt's agent session
    (``--resume SESSION``) instead of starting over."""
    count_usage_limits: StrictBool = False
    """An attempt that hit an agent's usage limit with a known reset counts against
    ``max_attempts`` (by default it does not: its retry waits for the reset)."""


class BudgetSpec(_Model):
    """What the run's agents may spend, by their recorded cost (``agent.output`` of a
    Claude format)."""

    max_cost_usd: USD | None = Field(None, gt=0)
    """The whole run: once its recorded spend reaches this, no new attempt starts and
    the run stops, resumable (``engine resume RUN --budget USD`` raises it)."""
    max_item_cost_usd: USD | None = Field(None, gt=0)
    """Each item, all its attempts together: passed to the agent as its own budget
    (``--max-budget-usd``), and enforced on the recorded cost."""


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
    input_missing: Literal["error", "command"] = "error"
    """When ``input`` names no file once setup is done: an error, or ``command``: run
    ``input`` as a command whose stdout lists the items."""
    command: str | None = None
    """A command whose stdout lists the items (JSON, or one item a line)."""
    items: list[Any] | None = None
    """Items given inline."""
    json_path: str | None = None
    id: str | None = None
    """Template of the item's identity, e.g. ``${item.path}``; default: hash of the item."""
    filter: str | None = None
    sort_by: str | None = None
    distinct: str | None = None
    """Keep the first item of each value of this field (after filter and sort)."""
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
    error_collection: str = Field(
        "aggregate", pattern=r"^(aggregate|immediate|batched:[1-9][0-9]{0,6})$"
    )
    """When failures are told while the run goes: ``immediate`` (each as it happens),
    ``batched:N`` (every N), ``aggregate`` (in the summary at the end)."""
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
    work_at: Literal["workflow", "repository"] = "workflow"
    """With isolation: where in each worktree the steps run and the map's input is read:
    at the workflow's place (its directory's path in the repository), or at the
    repository's root (as Prodigy runs them)."""
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
        agents = sum(step.kind == "claude" for step in self.agent_template)
        if self.retry.resume_session and agents > 1:
            raise ValueError(
                f"retry.resume_session with {agents} claude: steps: which step's session to "
                "resume is ambiguous (keep one claude: step, or use that step's own retry)"
            )
        if self.isolation != "worktree" and self.on_conflict:
            raise ValueError("on_conflict needs isolation: worktree (there is no merge without it)")
        if self.isolation != "worktree" and self.work_at != "workflow":
            raise ValueError(
                "work_at: repository needs isolation: worktree (without it, steps run in "
                "the workflow's directory)"
            )
        return self


class CircuitBreakerSpec(_Model):
    threshold: StrictInt = Field(5, ge=1, le=1_000_000)
    cooldown: Duration = 30.0
    on: list[ErrorType] = ["rate_limited", "api_error"]
    half_open_requests: StrictInt = Field(1, ge=1, le=10_000)
    """Probes let through at once when the cooldown has passed."""
    success_threshold: StrictInt = Field(1, ge=1, le=10_000)
    """Probes that must succeed to close it (a qualifying failure opens it again)."""


class CacheSpec(_Model):
    key: list[str] = ["${item}"]
    inputs: list[str] = []
    """Files whose content is part of the key (paths or globs)."""
    enabled: StrictBool = True


class AgentSpec(_Model):
    command: str = "claude -p"
    """The command a ``claude:`` step runs, with the prompt as its last argument."""
    output: Literal["text", "claude-json", "claude-stream-json"] = "text"
    """How the agent answers: ``claude-json`` (run with ``--output-format json``) and
    ``claude-stream-json`` (``--output-format stream-json --verbose``) are read as Claude
    Code's result: its ``result`` is the step's output, its errors fail the step, its
    cost, tokens, turns and session are recorded as ``usage``."""

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


class PhaseTimeouts(_Model):
    setup: Duration | None = None
    reduce: Duration | None = None
    merge: Duration | None = None


class Workflow(_Model):
    name: str = Field(min_length=1)
    env: EnvEntries = {}
    """Variables for ``${env.X}`` and every command's environment; an entry
    ``{value: TEXT, secret: true}`` is a secret (:mod:`engine.workflow.environment`)."""
    secrets: Secrets = []
    """Names of environment variables passed to commands and never recorded, or a
    mapping NAME -> the environment variable NAME's value is taken from."""
    env_files: list[Annotated[str, Field(min_length=1)]] = []
    """``.env`` files (``KEY=VALUE`` lines) read when the run is created, relative to
    the workflow's directory; later files override earlier ones, ``env`` overrides them."""
    profiles: Profiles = {}
    """Named sets of variables (``engine run --profile NAME``) laid over ``env``;
    a profile's ``description`` is not a variable."""
    agent: AgentSpec = AgentSpec()
    setup: Steps = []
    map: MapSpec | None = None
    reduce: Steps = []
    phase_timeout: PhaseTimeouts = PhaseTimeouts()
    """All of a phase's steps together: the step running when it passes is stopped
    (``timeout``) and the phase fails."""
    circuit_breaker: CircuitBreakerSpec | None = None
    budget: BudgetSpec = BudgetSpec()
    cache: CacheSpec | None = None
    merge: Steps = []
    """With ``map.isolation: worktree``: steps run after reduce, in the run's worktree,
    to bring the run's branch to the workspace's (``${merge.*}``)."""
    executor: ExecutorField = None
    """Where the map's attempts run (:mod:`engine.workflow.spec_executor`)."""

    @property
    def secret_names(self) -> frozenset[str]:
        """The names whose values are never recorded: ``secrets`` (listed or mapped),
        and every ``env`` or profile entry written with ``secret: true``."""
        names = set(self.secrets)
        for entries in (self.env, *self.profiles.values()):
            names.update(k for k, v in entries.items() if isinstance(v, EnvValue) and v.secret)
        return frozenset(names)

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


Step.model_rebuild()
