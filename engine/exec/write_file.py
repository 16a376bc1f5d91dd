"""A ``write_file:`` step: a file written by the engine itself, inside the workspace.

No process runs. The path and the content are templates rendered as text
(a value is data: it is written as it is, never read by a shell). The path
is relative to the step's working directory and must stay inside the
workspace (the attempt's worktree with isolation, else the workflow's
directory): an absolute path, a ``..`` that climbs out, or a symbolic link
that leads out (a directory on the way, or the file itself) is refused with
``validation_failed``, before anything is written. Each directory on the way
is resolved and checked in turn (``create_dirs`` makes the missing ones
there, never through a link that leads out); the file is written in the
directory so reached, opened once (``O_NOFOLLOW``) and checked again through
its descriptor, as a temporary file renamed over the target: atomic and
durable (the steps of :func:`ledger.atomic.atomic_write`, relative to that
descriptor).

Used by every executor (:func:`perform` is a function of the step, its
context and two directories), so a remote worker writes the same way.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from engine.exec.program import StepResult, step_cwd
from engine.workflow.reading import load_yaml
from engine.workflow.spec import Step, WriteFileSpec
from engine.workflow.template import render_text

__all__ = ["WriteRefused", "perform", "render_content", "write_inside"]

_NEW_FILE_MODE = 0o666
"""A new file's mode before the umask, as an editor or ``>`` would make it."""


class WriteRefused(ValueError):
    """The file cannot be written as asked: outside the workspace, or its content invalid."""


def perform(step: Step, context: Mapping[str, Any], *, cwd: Path, root: Path) -> StepResult:
    """Write ``step``'s file; its result as any step's (exit code 0, nothing printed).

    ``cwd``: the attempt's working directory (the step's own ``cwd`` is under it);
    ``root``: the workspace the file must stay in. A refusal is ``validation_failed``,
    a failed write (``EACCES``, a full disk) ``command_failed`` or
    ``resource_exhausted``, each with a message naming the file.
    """
    spec = step.write_file
    assert spec is not None
    shown = spec.path
    try:
        shown = render_text(spec.path, context)
        data = render_content(spec, context, shown)
        write_inside(Path(step_cwd(step, cwd)), root, shown, data, spec)
    except ValueError as exc:  # WriteRefused, or a template error
        return StepResult.not_started(f"write_file {shown[:200]}: {exc}")
    except OSError as exc:
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        return StepResult(
            error=f"write_file {shown[:200]}: cannot write it ({exc.strerror or exc})",
            error_type="resource_exhausted" if full else "command_failed",
        )
    return StepResult(exit_code=0)


def render_content(spec: WriteFileSpec, context: Mapping[str, Any], shown: str) -> bytes:
    """The bytes to write: the rendered content, or (json, yaml) the value it parses to,
    written pretty (JSON with an indent of 2 and a final newline; YAML in block style)."""
    text = render_text(spec.content, context)
    if spec.format == "json":
        try:
            value = json.loads(text, parse_constant=_not_json)
        except (ValueError, RecursionError) as exc:
            raise WriteRefused(f"the content is not JSON ({_one_line(exc)})") from None
        text = json.dumps(value, indent=2, ensure_ascii=False) + "\n"
    elif spec.format == "yaml":
        try:
            value = load_yaml(text)
        except yaml.YAMLError as exc:
            raise WriteRefused(f"the content is not YAML ({_yaml_problem(exc)})") from None
        text = yaml.safe_dump(value, sort_keys=False, allow_unicode=True, default_flow_style=False)
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise WriteRefused("the content is not valid text (a lone surrogate)") from None


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deep"
    return " ".join(str(exc).split())[:300]


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        return f"{exc.problem} at line {exc.problem_mark.line + 1}"
    return _one_line(exc)


# --- the path, inside the workspace -------------------------------------------------------


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _resolved_dir(cwd: Path, root: str, parts: list[str], create: bool) -> str:
    """The real directory ``parts`` lead to from ``cwd``, each step checked inside ``root``."""
    current = os.path.realpath(cwd)
    if not _inside(current, root):
        raise WriteRefused("the step's working directory is outside the workspace")
    for part in parts:
        if part in ("", "."):
            continue
        candidate = os.path.dirname(current) if part == ".." else os.path.join(current, part)
        if not _inside(candidate, root):
            raise WriteRefused(
                "the path leads out of the workspace with '..' "
                "(give a path inside the step's working directory)"
            )
        try:
            info = os.lstat(candidate)
        except FileNotFoundError:
            if not create:
                raise WriteRefused(
                    f"the directory {part!r} does not exist (create_dirs: true makes it)"
                ) from None
            with contextlib.suppress(FileExistsError):  # made meanwhile: checked below
                os.mkdir(candidate, 0o777)
            info = os.lstat(candidate)
        if stat.S_ISLNK(info.st_mode):
            candidate = os.path.realpath(candidate)
            if not _inside(candidate, root):
                raise WriteRefused(
                    f"{part!r} is a symbolic link that leads out of the workspace "
                    "(write to a path inside it)"
                )
            try:
                info = os.stat(candidate)
            except FileNotFoundError:
                raise WriteRefused(f"{part!r} is a symbolic link to nothing") from None
        if not stat.S_ISDIR(info.st_mode):
            raise WriteRefused(f"{part!r} is not a directory")
        current = candidate
    return current


def _open_dir(path: str, root: str) -> int:
    """A descriptor of directory ``path`` (no link followed), checked to be inside ``root``."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        opened = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        opened = path  # no /proc: the checks made while resolving it stand
    if not _inside(opened, root):
        os.close(fd)
        raise WriteRefused("a directory on the way was moved out of the workspace meanwhile")
    return fd


def write_inside(cwd: Path, root: Path, path: str, data: bytes, spec: WriteFileSpec) -> None:
    """Write ``data`` to ``path`` (relative to ``cwd``) atomically, refusing to leave ``root``."""
    if not path:
        raise WriteRefused("the path is empty")
    if "\0" in path:
        raise WriteRefused("the path contains a NUL byte")
    if os.path.isabs(path):
        raise WriteRefused(
            "the path is absolute (give a path relative to the step's working directory)"
        )
    real_root = os.path.realpath(root)
    *parents, name = path.split("/")
    if name in ("", ".", ".."):
        raise WriteRefused("the path names a directory, not a file")
    directory = _resolved_dir(cwd, real_root, parents, spec.create_dirs)
    fd = _open_dir(directory, real_root)
    try:
        try:
            info: os.stat_result | None = os.lstat(name, dir_fd=fd)
        except FileNotFoundError:
            info = None
        if info is not None and stat.S_ISLNK(info.st_mode):
            target = os.path.realpath(os.path.join(directory, name))
            if not _inside(target, real_root):
                raise WriteRefused(
                    "the file is a symbolic link that leads out of the workspace "
                    "(remove the link, or write to another path)"
                )
            os.close(fd)
            fd = -1
            directory, name = os.path.dirname(target), os.path.basename(target)
            fd = _open_dir(directory, real_root)
            try:
                info = os.lstat(name, dir_fd=fd)
            except FileNotFoundError:
                info = None
        if info is not None and not stat.S_ISREG(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise WriteRefused(f"the path is {kind}")
        mode = int(spec.mode, 8) if spec.mode is not None else None
        if mode is None and info is not None:
            mode = stat.S_IMODE(info.st_mode)  # a file replaced keeps its permissions
        _replace(fd, name, data, mode)
    finally:
        if fd >= 0:
            os.close(fd)


def _replace(dir_fd: int, name: str, data: bytes, mode: int | None) -> None:
    """``name`` in the directory ``dir_fd`` replaced by ``data``: temporary file, fsync,
    rename, fsync of the directory."""
    tmp = f".{name[:200]}.engine-{os.getpid()}-{secrets.token_hex(4)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, _NEW_FILE_MODE, dir_fd=dir_fd)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if mode is not None:
                os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    os.fsync(dir_fd)
