"""Item caching and artifacts.

Artifacts: after an item succeeds, the files its steps declare
(``artifacts:``, paths or globs inside the workspace, templates allowed) are
hashed and copied into the content store; ``artifact.written`` records
each (path, sha256, size).

Caching (``cache:`` in the workflow): an item's cache key is the SHA-256 of
the canonical JSON of its rendered commands, its value, the rendered
``cache.key`` entries and the hashes of the ``cache.inputs`` files. A
success is stored under ``<home>/cache/``; a later run (any run) whose item
has the same key skips it (``cache.hit``, ``item.skipped``), reuses its
result, and restores its artifacts atomically (a file that already has the
same content is left alone: ``nochange``).
"""

from __future__ import annotations

import asyncio
import glob
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from engine.exec.executor import AttemptOutcome
from engine.items.selection import canonical_json
from engine.redact import Redactor
from engine.store.content import ContentStore, file_sha256
from engine.workflow.spec import CacheSpec, MapSpec
from engine.workflow.template import TemplateError, render_text
from ledger.atomic import atomic_write, make_private_dir
from ledger.events import ArtifactWritten, CacheHit, CacheMiss, Event, ItemSkipped

__all__ = ["CacheEntry", "ItemHooks"]

CACHE_FORMAT = 1


class StoredArtifact(msgspec.Struct, frozen=True):
    path: str
    sha256: str
    size: int
    mode: int = 0o644


class CacheEntry(msgspec.Struct, frozen=True, kw_only=True):
    v: int = CACHE_FORMAT
    key: str
    item: str
    run: str
    result: Any = None
    artifacts: list[StoredArtifact] = []


class ArtifactError(Exception):
    pass


class ItemHooks:
    """What happens around an item's attempts: the cache lookup before, artifacts after."""

    def __init__(
        self,
        *,
        home: Path,
        run_id: str,
        workspace: Path,
        spec: MapSpec,
        cache: CacheSpec | None,
        mode: str,
        context: Callable[[str, Any], dict[str, Any]],
        redactor: Redactor | None = None,
    ) -> None:
        """``mode``: ``use`` (look up and store), ``refresh`` (store only), ``off``."""
        self.store = ContentStore(home)
        self.cache_dir = home / "cache"
        self.run_id = run_id
        self.workspace = workspace.resolve()
        self.spec = spec
        self.cache = cache if cache is not None and cache.enabled and mode != "off" else None
        self.lookup = mode == "use"
        self.context = context
        self._inputs: dict[str, str] | None = None
        self.patterns = [p for step in spec.agent_template for p in step.artifacts]
        self.redactor = redactor or Redactor()

    @property
    def active(self) -> bool:
        return self.cache is not None or bool(self.patterns)

    # --- keys ---------------------------------------------------------------------------

    def _input_hashes(self) -> dict[str, str]:
        """``cache.inputs`` files by path, hashed once per run."""
        if self._inputs is None:
            assert self.cache is not None
            found: dict[str, str] = {}
            for pattern in self.cache.inputs:
                for name in sorted(glob.glob(pattern, root_dir=self.workspace, recursive=True)):
                    path = self.workspace / name
                    if path.is_file():
                        found[name] = file_sha256(path)[0]
            self._inputs = found
        return self._inputs

    def key(self, item: str, value: Any) -> str:
        assert self.cache is not None
        context = self.context(item, value)
        commands = []
        for step in self.spec.agent_template:
            try:
                commands.append(render_text(step.text, context))
            except TemplateError:
                commands.append(step.text)
        extra = []
        for template in self.cache.key:
            try:
                extra.append(render_text(template, context))
            except TemplateError:
                extra.append(template)
        payload = {
            "v": CACHE_FORMAT,
            "commands": commands,
            "item": value,
            "key": extra,
            "inputs": self._input_hashes(),
        }
        return "sha256:" + hashlib.sha256(canonical_json(payload)).hexdigest()

    def _entry_path(self, key: str) -> Path:
        digest = key.removeprefix("sha256:")
        return self.cache_dir / digest[:2] / f"{digest}.json"

    # --- before an attempt --------------------------------------------------------------

    async def check_all(self, items: list[tuple[str, Any, int]]) -> tuple[set[str], list[Event]]:
        """(misses, events) for (item, value, attempts so far) about to be dispatched: the
        items to run, and what the lookups found (a hit is skipped, its artifacts restored)."""
        misses: set[str] = set()
        found: list[Event] = []
        for item, value, attempts in items:
            hit, events = await self.check(item, value, attempts)
            found += events
            if not hit:
                misses.add(item)
        return misses, found

    async def check(self, item: str, value: Any, attempts: int) -> tuple[bool, list[Event]]:
        """(hit, events): on a hit the item is skipped, its artifacts restored."""
        if self.cache is None:
            return False, []
        try:
            key = await asyncio.to_thread(self.key, item, value)
        except OSError as exc:  # an input file went away or cannot be read
            return False, [CacheMiss(item=item, key="", reason=f"no key: {exc}")]
        entry = None
        if self.lookup:
            try:
                entry = msgspec.json.decode(self._entry_path(key).read_bytes(), type=CacheEntry)
            except (OSError, msgspec.DecodeError, msgspec.ValidationError):
                entry = None
            if entry is not None and not all(self.store.has(a.sha256) for a in entry.artifacts):
                entry = None  # its artifacts are gone from the store: run it again
        if entry is None:
            reason = "" if self.lookup else "refresh: not looked up"
            return False, [CacheMiss(item=item, key=key, reason=reason)]
        try:
            restored = await asyncio.to_thread(self._restore, item, attempts, entry)
        except (OSError, ArtifactError) as exc:
            # The workspace will not take the cached artifacts back: run the item instead.
            return False, [CacheMiss(item=item, key=key, reason=f"cannot restore: {exc}")]
        events: list[Event] = [CacheHit(item=item, key=key), *restored]
        result, ref = self.store.inline_or_ref(entry.result)
        events.append(
            ItemSkipped(item=item, reason="cache", cache_key=key, result=result, result_ref=ref)
        )
        return True, events

    def _restore(self, item: str, attempts: int, entry: CacheEntry) -> list[Event]:
        events: list[Event] = []
        for a in entry.artifacts:
            dest = _inside(self.workspace, a.path)
            changed = self.store.restore(a.sha256, dest, mode=a.mode)
            events.append(
                ArtifactWritten(
                    item=item,
                    attempt=attempts,
                    path=a.path,
                    sha256=a.sha256,
                    size=a.size,
                    status="restored" if changed else "nochange",
                )
            )
        return events

    # --- after a success ----------------------------------------------------------------

    async def on_success(
        self,
        item: str,
        attempt: int,
        value: Any,
        outcome: AttemptOutcome,
        workspace: Path | None = None,
    ) -> list[Event]:
        """Store the item's artifacts (and its cache entry); the events saying so.

        ``workspace``: where the attempt worked (its worktree), if not the run's workspace.
        """
        if not self.active:
            return []
        root = (workspace or self.workspace).resolve()
        try:
            return await asyncio.to_thread(self._after, item, attempt, value, outcome, root)
        except (OSError, ArtifactError) as exc:
            # Its message names files, and becomes the item's error and signature.
            raise ArtifactError(self.redactor.text(str(exc))) from None

    def _after(
        self, item: str, attempt: int, value: Any, outcome: AttemptOutcome, root: Path
    ) -> list[Event]:
        stored: list[StoredArtifact] = []
        events: list[Event] = []
        context = self.context(item, value)
        for pattern in self.patterns:
            try:
                rendered = render_text(pattern, context)
            except TemplateError:
                rendered = pattern
            for name in sorted(glob.glob(rendered, root_dir=root, recursive=True)):
                path = _inside(root, name)
                if not path.is_file():
                    continue
                digest, size = self.store.put_file(path)
                relative = str(path.relative_to(root))
                stored.append(
                    StoredArtifact(relative, digest, size, mode=path.stat().st_mode & 0o777)
                )
                events.append(
                    ArtifactWritten(
                        item=item, attempt=attempt, path=relative, sha256=digest, size=size
                    )
                )
        # An artifact named with a secret is recorded as ***: a cache entry would
        # have to keep its real name, so the item is not cached.
        if self.cache is not None and not any(self.redactor.contains(a.path) for a in stored):
            key = self.key(item, value)
            entry = CacheEntry(
                key=key,
                item=self.redactor.text(item),
                run=self.run_id,
                result=self.redactor.value(outcome.result),
                artifacts=stored,
            )
            target = self._entry_path(key)
            make_private_dir(target.parent)
            atomic_write(target, msgspec.json.encode(entry))
        return events


def _inside(root: Path, name: str) -> Path:
    """A path in the workspace ``root``, refusing one that leads outside it."""
    path = (root / name).resolve()
    if path != root and root not in path.parents:
        raise ArtifactError(f"artifact {name!r} is outside the workspace {root}")
    return path
