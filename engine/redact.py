"""Redaction: no secret's value reaches anything the engine writes.

A workflow names its secrets (``secrets: [NAME]``, or ``secrets: {NAME:
SOURCE}``) and writes some ``env`` or profile entries ``{value: TEXT, secret:
true}``; their values come from the environment, the workflow, or ``--var
NAME=VALUE`` (:mod:`engine.workflow.environment`, which also keeps them out
of the run's copy of the workflow). A :class:`Redactor` replaces
every occurrence of a value, and of the forms it takes when written inside
a JSON string or a Python ``repr``, by ``***``. It is applied at the places
where the engine writes:

- every event a run appends passes :meth:`Redactor.event` in the ledger
  writer, before it is encoded and hashed (ids, paths, messages, results,
  captures, the recorded command line: every string of every record), so
  what derives from the ledger (``results.json``, reports, exports, ``tail``,
  ``query``, projections and their snapshots) holds no secret either;
- the streams an attempt writes to its logs (byte by byte, in the local
  executor), its parsed result and captures;
- the command line recorded in the lock file: each argument is redacted
  before the line is joined (:meth:`Redactor.command`), so shell quoting
  cannot hide a value from the redactor;
- item ids and values at enqueue, artifact names, cache entries, the
  workspace manifest (``snapshot.json``) and the messages of errors that a
  run raises.

A redacted item id is the id: two items whose ids differ only in a secret
become one id, and the second is recorded as a duplicate of the first.
Templates whose result is recorded by design (``map.id``, ``artifacts``)
may not reference a secret at all (:func:`secret_template_problems`).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from engine.items.selection import LoadedItems, WorkItem, dedupe, default_id
from engine.workflow.template import template_variables
from ledger.errors import EngineError

if TYPE_CHECKING:
    from engine.workflow.spec import Workflow

__all__ = [
    "MASK",
    "Redactor",
    "redact_value",
    "secret_forms",
    "secret_template_problems",
]

MASK = "***"
"""What a secret becomes."""

ENGINE_FIELDS = frozenset(
    {
        "error_type",
        "status",
        "phase",
        "signature",
        "sha256",
        "hash",
        "key",
        "cache_key",
        "idempotency_key",
        "workflow_hash",
        "snapshot_id",
        "executor",
        "cache",
        "ts",
        "started_at",
        "touched_at",
    }
)
"""Event fields the engine fills from its own vocabulary or from hashes, never from
user data: left as they are, so that a short secret that happens to be part of
``timeout`` or of a digest cannot change what the record means."""

E = TypeVar("E", bound=msgspec.Struct)


def secret_forms(secrets: Iterable[str]) -> tuple[str, ...]:
    """Each secret as it may appear in output: raw, escaped inside JSON strings, in a repr.

    Longest first, so that a form containing another is replaced whole.
    """
    forms: set[str] = set()
    for secret in secrets:
        if secret:
            forms.add(secret)
            forms.add(json.dumps(secret)[1:-1])
            forms.add(json.dumps(secret, ensure_ascii=False)[1:-1])
            forms.add(msgspec.json.encode(secret).decode()[1:-1])
            forms.add(repr(secret)[1:-1])
    return tuple(sorted(forms, key=len, reverse=True))


def redact_value(value: Any, secrets: tuple[str, ...]) -> Any:
    """``value`` with every secret in every string (and mapping key) replaced by ``***``."""
    if not secrets:
        return value
    if isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, MASK)
        return value
    if isinstance(value, list | tuple):
        return [redact_value(v, secrets) for v in value]
    if isinstance(value, dict):
        return {redact_value(k, secrets): redact_value(v, secrets) for k, v in value.items()}
    return value


class Redactor:
    """Replaces the values of a run's secrets (in all their forms) by ``***``."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = [s for s in dict.fromkeys(secrets) if s]
        self.forms = secret_forms(self.secrets)
        # How a form looks inside an encoded record: a quick test before the slow path.
        self._needles = tuple(dict.fromkeys(msgspec.json.encode(form)[1:-1] for form in self.forms))

    def __bool__(self) -> bool:
        return bool(self.forms)

    def text(self, text: str) -> str:
        """``text`` with every secret replaced."""
        return redact_value(text, self.forms)  # type: ignore[no-any-return]

    def value(self, value: Any) -> Any:
        """A JSON-like value with every string (and key) redacted."""
        return redact_value(value, self.forms)

    def contains(self, text: str) -> bool:
        """Whether ``text`` holds a secret in one of its forms."""
        return any(form in text for form in self.forms)

    def command(self, argv: Sequence[str]) -> str:
        """A command line for the record: each argument redacted, then shell-joined."""
        return shlex.join(self.text(arg) for arg in argv)

    def keys(self, mapping: Mapping[str, str]) -> dict[str, str]:
        """``mapping`` with its keys redacted (a manifest of file names)."""
        return {self.text(k): v for k, v in mapping.items()}

    def error(self, exc: EngineError) -> EngineError:
        """``exc`` with its message and hint redacted (in place, for raising again)."""
        if self:
            exc.message = self.text(exc.message)
            exc.hint = None if exc.hint is None else self.text(exc.hint)
            exc.args = tuple(self.text(a) if isinstance(a, str) else a for a in exc.args)
        return exc

    def items(self, loaded: LoadedItems) -> LoadedItems:
        """Items with their ids and values redacted, duplicates found again among them.

        A redacted id is the item's identity from then on: two items whose ids
        differ only in a secret get one id, and the later one is a duplicate.
        A default id (the hash of the value) is the hash of the redacted value.
        """
        if not self:
            return loaded
        every = sorted([*loaded.items, *(w for w, _ in loaded.duplicates)], key=lambda w: w.index)
        return dedupe(self._item(work) for work in every)

    def _item(self, work: WorkItem) -> WorkItem:
        value = self.value(work.value)
        ident = self.text(work.id)
        if value != work.value and work.id == default_id(work.value):
            ident = default_id(value)  # the hash of the value as recorded
        return WorkItem(ident, work.index, value)

    def command_line(self, line: str) -> str:
        """A command line given as text, redacted word by word when a word holds a secret."""
        try:
            words = shlex.split(line)
        except ValueError:  # unbalanced quotes: not a shell line
            return self.text(line)
        if any(self.contains(word) for word in words):
            return self.command(words)
        return self.text(line)

    def event(self, event: E) -> E:
        """``event`` with every string of its data redacted (itself when none holds a secret).

        Fields in :data:`ENGINE_FIELDS` are kept; the rest are redacted at any depth.
        """
        if not self._needles:
            return event
        return self.recorded(event, msgspec.json.encode(event))

    def recorded(self, event: E, encoded: bytes) -> E:
        """:meth:`event`, given the event's JSON already encoded (the ledger writer's hook).

        Returns ``event`` itself when ``encoded`` holds no secret, so the writer
        encodes again only an event that was redacted.
        """
        if not any(needle in encoded for needle in self._needles):
            return event
        data = msgspec.to_builtins(event)
        for name, value in data.items():
            if name not in ENGINE_FIELDS:
                data[name] = self.value(value)
        return msgspec.convert(data, type(event))


def secret_template_problems(spec: Workflow) -> list[tuple[tuple[int | str, ...], str]]:
    """Templates whose result is recorded (``map.id``, ``artifacts``) that reference a secret.

    An id or an artifact's name is written to the ledger, reports and file
    names; one made of a secret would be recorded as ``***``, which identifies
    nothing. Each problem is ``(location, message)``.
    """
    secret_names = spec.secret_names
    if not secret_names or spec.map is None:
        return []

    def secrets_in(text: str) -> list[str]:
        found = []
        for name in template_variables(text):
            parts = name.split(".")
            if parts[0] == "env" and (len(parts) == 1 or parts[1] in secret_names):
                found.append(name)
        return found

    problems: list[tuple[tuple[int | str, ...], str]] = []
    if spec.map.id is not None:
        for name in secrets_in(spec.map.id):
            problems.append(
                (
                    ("map", "id"),
                    f"the id uses ${{{name}}}, a secret: ids are recorded, and a secret "
                    "never is (build the id from the item: ${item.name})",
                )
            )

    def walk(steps: Sequence[Any], loc: tuple[int | str, ...]) -> None:
        for i, step in enumerate(steps):
            for j, pattern in enumerate(step.artifacts):
                for name in secrets_in(pattern):
                    problems.append(
                        (
                            (*loc, i, "artifacts", j),
                            f"the artifact name uses ${{{name}}}, a secret: artifact names "
                            "are recorded, and a secret never is",
                        )
                    )
            walk(step.on_failure.steps, (*loc, i, "on_failure", "steps"))

    walk(spec.map.agent_template, ("map", "agent_template"))
    return problems
