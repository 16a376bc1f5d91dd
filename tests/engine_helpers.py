"""Helpers for integration tests: run a workflow in-process, for real."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import textwrap
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from engine.run import RunOptions, RunResult, execute_run
from engine.workflow.load import load_workflow
from ledger import LedgerReader
from ledger.events import Record
from projections.replay import Projections, replay
from projections.values import ValuesProjection
from tests.conftest import projections_json

T = TypeVar("T")

DEADLINE = 60.0
"""Seconds a test waits for a condition before it fails.

Generous on purpose: on a loaded machine a start-up can take seconds. A
deadline only bounds how long a broken feature takes to fail; it is never a
measure of speed (timing figures belong in benchmarks/).
"""


def write_workflow(directory: Path, text: str, name: str = "wf.yml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


def write_script(directory: Path, script: dict[str, Any]) -> Path:
    path = directory / "agent.json"
    path.write_text(json.dumps(script))
    return path


def run_workflow(path: Path, home: Path, **options: Any) -> RunResult:
    """Run for real (subprocesses, fsync), then check live state == replay(ledger)."""
    loaded = load_workflow(path)
    result = asyncio.run(execute_run(loaded, home, RunOptions(**options)))
    ledger = result.run_dir / "ledger.ndjson"
    assert projections_json(result.projections) == projections_json(replay(ledger)), (
        "the engine's final projections differ from a replay of its ledger"
    )
    replayed_p = replay(ledger, into=Projections(extra=(ValuesProjection(),)))
    live = result.projections.find(ValuesProjection)
    replayed = replayed_p.find(ValuesProjection)
    assert live is not None and replayed is not None
    assert msgspec.json.encode(live.to_json()) == msgspec.json.encode(replayed.to_json()), (
        "the engine's values (items, results, steps) differ from a replay of its ledger"
    )
    return result


def records(result: RunResult, type_: str | None = None) -> list[Record]:
    out = list(LedgerReader(result.run_dir / "ledger.ndjson").records())
    return [r for r in out if type_ is None or r.type == type_]


MOCK = "engine mock-agent --script agent.json -p"


def poll(predicate: Callable[[], T], timeout: float = DEADLINE, interval: float = 0.02) -> T | None:
    """Call ``predicate`` until it returns something true (returned) or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def wait_for(predicate: Callable[[], T], timeout: float = DEADLINE, what: str = "") -> T:
    """Wait until ``predicate`` returns something true and return it; fail after ``timeout``."""
    value = poll(predicate, timeout)
    if not value:
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what or predicate}")
    return value


async def wait_for_async(
    predicate: Callable[[], T], timeout: float = DEADLINE, what: str = ""
) -> T:
    """:func:`wait_for` inside an event loop (the loop keeps running while it waits)."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what or predicate}")
        await asyncio.sleep(0.01)
    return value


async def within(awaitable: Awaitable[T], timeout: float = DEADLINE, what: str = "") -> T:
    """Await with a deadline: an AssertionError naming ``what`` instead of hanging."""
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what}") from None


def unique_run_id(prefix: str) -> str:
    """A run id no other test run uses, on this machine or any (processes are matched by it)."""
    return f"{prefix}-{os.getpid()}-{secrets.token_hex(4)}"


def ledger_has(ledger: Path, type_: str, count: int = 1) -> bool:
    """True once ``ledger`` holds at least ``count`` records of ``type_`` (a cheap byte scan)."""
    try:
        data = ledger.read_bytes()
    except FileNotFoundError:
        return False
    return data.count(b'"type":"' + type_.encode() + b'"') >= count


def _status_mask(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def catches(pid: int, signum: int) -> bool:
    """True once process ``pid`` has a handler for ``signum`` (its own code is running).

    A signal that lands before (while the interpreter itself starts) takes
    the default action whatever the program does, so a test that wants to see
    the program handle a signal waits for this first.
    """
    return bool(_status_mask(pid, "SigCgt") & (1 << (signum - 1)))


def dying(pid: int) -> bool:
    """True if ``pid`` is on its way out, not running any more.

    A fatal signal makes the kernel queue SIGKILL to the process; once it acts
    on it, the process is exiting (PF_EXITING in its flags) until it is a
    zombie. Either way it runs no more code of its own, whatever the load.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return True  # gone
    fields = stat[stat.rfind(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X") or int(fields[6]) & 0x4:  # PF_EXITING
        return True
    kill = 1 << (signal.SIGKILL - 1)
    return bool((_status_mask(pid, "SigPnd") | _status_mask(pid, "ShdPnd")) & kill)


def engine_in_process(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``engine ARGS`` run in this process by click's runner, stdout and stderr apart.

    The same commands as the console script's, without a Python start-up each:
    for the many cases a test asks of one command. What needs a real process
    (a pipe, a terminal, a signal, exit at interpreter level) runs ``ENGINE``.
    """
    from click.testing import CliRunner

    from cli.main import cli

    with contextlib.chdir(cwd) if cwd is not None else contextlib.nullcontext():
        result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, result.stderr)


# --- git repositories for isolation tests ----------------------------------------------


def hermetic_git(monkeypatch: Any, tmp_path: Path) -> None:
    """Git in this test (the test's, the engine's, the steps') reads no configuration of
    the machine or the user: only the repositories' own."""
    empty = tmp_path / "gitconfig"
    empty.write_text("")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(empty))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for name in (
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_INDEX_FILE",
        "GIT_COMMON_DIR",
        "GIT_CEILING_DIRECTORIES",
    ):
        monkeypatch.delenv(name, raising=False)


def git(repo: Path, *args: str, check: bool = True) -> str:
    """``git -C repo ARGS``'s stdout; it takes no optional lock (a ``status`` never
    rewrites the index, so the index's bytes say what the engine did to it)."""
    done = subprocess.run(
        ["git", "-C", str(repo), *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"},
    )
    if check and done.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed ({done.returncode}): {done.stderr}")
    return done.stdout


def make_repo(path: Path, files: dict[str, str] | None = None) -> Path:
    """A repository at ``path`` on branch ``main`` with its own identity and one commit
    of ``files`` (a README when none)."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.name", "Test User")
    git(path, "config", "user.email", "test@example.com")
    for name, text in (files or {"README": "a repository\n"}).items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "start")
    return path


def assert_replays(result: RunResult) -> None:
    """The run's live projections equal a replay of its ledger, and its chain verifies."""
    ledger = result.run_dir / "ledger.ndjson"
    assert projections_json(result.projections) == projections_json(replay(ledger)), (
        "the engine's final projections differ from a replay of its ledger"
    )
    verified = engine_in_process("audit", "verify", str(ledger))
    assert verified.returncode == 0, verified.stdout + verified.stderr


def read_terminal(master: int) -> tuple[bytearray, threading.Thread]:
    """Everything written to a pseudo-terminal, gathered by a thread from its ``master``
    side until the last writer closes it (join the thread to have all of it)."""
    drawn = bytearray()

    def drain() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                return  # EIO: the last writer closed the terminal
            if not chunk:
                return
            drawn.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    return drawn, reader
