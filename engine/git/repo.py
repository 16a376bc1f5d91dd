"""Running git for the engine, reading a worktree's HEAD, and names safe for git and paths.

The engine's own git commands (worktrees, commits of leftovers, merges) run
as children of the engine like its steps do (:class:`~engine.exec.local.child.Child`:
reaped by the engine, found by a resume's reclaim through ``ENGINE_RUN_ID``),
with an environment of their own: no ``GIT_DIR``-like variable of the caller
that would point them elsewhere, no prompt, no editor, no pager, messages
in English so that they can be read, and an identity when the machine has
none (``engine <engine@localhost>``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from engine.exec.local.child import Child

__all__ = [
    "FALLBACK_IDENTITY",
    "GIT_CONTEXT",
    "Git",
    "GitError",
    "GitResult",
    "git_environment",
]

GIT_CONTEXT = frozenset(
    {
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_INDEX_FILE",
        "GIT_COMMON_DIR",
        "GIT_OBJECT_DIRECTORY",
        "GIT_ALTERNATE_OBJECT_DIRECTORIES",
        "GIT_NAMESPACE",
        "GIT_PREFIX",
        "GIT_CEILING_DIRECTORIES",
    }
)
"""Variables that would make a git command work on another repository than its ``-C``."""

FALLBACK_IDENTITY = {
    "GIT_AUTHOR_NAME": "engine",
    "GIT_AUTHOR_EMAIL": "engine@localhost",
    "GIT_COMMITTER_NAME": "engine",
    "GIT_COMMITTER_EMAIL": "engine@localhost",
}
"""Who the engine's own commits are by when git knows no user on this machine."""

_ENGINE_CONFIG = (
    "-c",
    "commit.gpgsign=false",
    "-c",
    "gc.auto=0",
    "-c",
    "core.hooksPath=/dev/null",
    "-c",
    "advice.detachedHead=false",
)
"""For the engine's own commands: its bookkeeping commits are not signed (no pinentry in
a headless run), run no hook of the repository and start no background gc."""


def git_environment(base: Mapping[str, str]) -> dict[str, str]:
    """The environment of the engine's git commands, from the run's."""
    env = {k: v for k, v in base.items() if k not in GIT_CONTEXT}
    env.update(
        {
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_EDITOR": "true",
            "GIT_PAGER": "cat",
            "GIT_OPTIONAL_LOCKS": "0",
            "LC_ALL": "C",
            "LANGUAGE": "C",
        }
    )
    return env


class GitError(Exception):
    """A git command failed: what it was, its exit code and what it said."""

    def __init__(self, args: list[str], code: int | None, stderr: str) -> None:
        self.args_ = args
        self.code = code
        self.stderr = stderr
        said = " ".join(stderr.split())[:300] or f"exit code {code}"
        super().__init__(f"git {' '.join(args[:3])}: {said}")


@dataclass(frozen=True, slots=True)
class GitResult:
    code: int
    out: str
    err: str


class _Buffer:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data


class Git:
    """Runs ``git`` with the engine's environment (``env``, from :func:`git_environment`)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = dict(env)
        self._empty: dict[str, str] = {}

    def identity(self, fallback: bool) -> None:
        """Use :data:`FALLBACK_IDENTITY` for the engine's commits (git knows no user)."""
        if fallback:
            self.env.update(FALLBACK_IDENTITY)

    async def run(self, cwd: Path | str, *args: str, check: bool = True) -> GitResult:
        """``git -C cwd ARGS``; raises :class:`GitError` when it fails and ``check``."""
        out, err = _Buffer(), _Buffer()
        argv = ["git", "-C", str(cwd), *_ENGINE_CONFIG, *args]
        try:
            child = Child(
                argv,
                base_env=self.env,
                env=self._empty,
                cwd=str(cwd) if Path(cwd).is_dir() else "/",
                sinks=(out, err),
                on_output=_nothing,
            )
        except OSError as exc:
            raise GitError(list(args), None, f"cannot run git: {exc.strerror or exc}") from None
        await child.exited
        await child.drained
        result = GitResult(
            child.returncode if child.returncode is not None else 255,
            out.data.decode("utf-8", "replace"),
            err.data.decode("utf-8", "replace"),
        )
        if check and result.code != 0:
            raise GitError(list(args), result.code, result.err or result.out)
        return result

    async def text(self, cwd: Path | str, *args: str) -> str:
        """The command's stdout, stripped (it must succeed)."""
        return (await self.run(cwd, *args)).out.strip()


def _nothing() -> None:
    return None
