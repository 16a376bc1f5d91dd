"""A full disk: never a traceback, the ledger intact, and the run resumes once
there is space again.

The engine's own logs of an attempt's output are the first thing a full disk
hits: a failed log write ends that attempt as ``resource_exhausted`` instead
of raising into the pipe reader (which the event loop calls again and again
while the pipe has data). When the ledger itself cannot be written, the
engine stops with one line and the ledger keeps only durable records.

The end-to-end tests mount a small tmpfs (root only); they skip, saying why,
where mounting is not permitted. The unit tests use /dev/full.
"""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.exec.local.child import Child
from engine.exec.local.logs import Log
from ledger import LedgerReader, verify_ledger
from tests.conftest import ENGINE


def _log_on_a_full_device(directory: Path, name: str) -> Log:
    log = Log(str(directory), name)
    os.symlink("/dev/full", log.tmp)  # every write fails with ENOSPC
    return log


@pytest.fixture
def full_device() -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")


@pytest.mark.usefixtures("full_device")
def test_a_log_write_that_fails_is_remembered_not_raised(tmp_path: Path) -> None:
    log = _log_on_a_full_device(tmp_path, "a.stdout")
    for _ in range(3):
        log.write(b"x" * 1000)  # the first fails; none raises
    assert log.error is not None and log.error.errno == errno.ENOSPC
    assert log.tail_text().startswith("xxx")  # the tail is still kept for classification
    assert log.read_from(0) == b""
    assert log.finish() is None  # no reference to a log that is not what was printed
    assert not os.path.lexists(log.tmp) and not os.path.exists(log.path)


@pytest.mark.usefixtures("full_device")
def test_a_child_whose_log_fails_is_drained_without_loop_errors(tmp_path: Path) -> None:
    """The pipe reader keeps draining (the child is not blocked) and never raises."""

    async def main() -> tuple[list[dict[str, Any]], Log, int | None]:
        loop = asyncio.get_running_loop()
        errors: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, context: errors.append(context))
        out = _log_on_a_full_device(tmp_path, "b.stdout")
        err = Log(str(tmp_path), "b.stderr")
        child = Child(
            ["/bin/sh", "-c", "head -c 2000000 /dev/zero"],
            base_env=dict(os.environ),
            env={},
            cwd=str(tmp_path),
            sinks=(out, err),
            on_output=lambda: None,
        )
        await child.drained
        await child.exited
        return errors, out, child.returncode

    errors, out, code = asyncio.run(main())
    assert errors == []
    assert code == 0
    assert out.error is not None and out.error.errno == errno.ENOSPC


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {proc.stderr.strip()}")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], check=False)


def _grow(mount: Path) -> None:
    subprocess.run(["mount", "-o", "remount,size=64m", str(mount)], check=True)


def _engine(home: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ENGINE, "--home", str(home), *args, "--no-progress"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        cwd=cwd,
    )


def _no_noise(stderr: str) -> None:
    assert "Traceback" not in stderr and "Exception in callback" not in stderr, stderr
    assert stderr.count("\n") <= 1, stderr


def test_output_that_fills_the_disk_fails_the_attempt_quietly(
    tmp_path: Path, small_disk: Path
) -> None:
    wf = tmp_path / "wf.yml"
    wf.write_text(
        "name: loud\n"
        "map:\n"
        "  items: [1, 2]\n"
        "  max_parallel: 1\n"
        "  retry: {max_attempts: 1}\n"
        "  agent_template:\n"
        "    - run: head -c 3000000 /dev/zero | tr '\\0' a\n"
    )
    home = small_disk / "home"
    first = _engine(home, "run", str(wf), "--run-id", "loud", cwd=tmp_path)
    _no_noise(first.stderr)
    assert first.returncode == 1, first.stderr  # finished, with failures
    run_dir = home / "runs" / "loud"
    ledger = run_dir / "ledger.ndjson"
    assert verify_ledger(ledger).torn is None
    failed = [r.data for r in LedgerReader(ledger).records() if r.type == "item.failed"]
    assert failed and all(f.error_type == "resource_exhausted" for f in failed)
    assert "No space left on device" in failed[0].message
    assert not [p for p in (run_dir / "logs").iterdir() if p.name.endswith(".tmp")]
    _grow(small_disk)
    again = _engine(home, "resume", "loud", "--include-dlq", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    types = [r.type for r in LedgerReader(ledger).records()]
    assert types.count("item.succeeded") == 2 and types[-1] == "run.completed"


def test_a_full_ledger_disk_stops_with_one_line_and_resumes(
    tmp_path: Path, small_disk: Path
) -> None:
    filler = small_disk / "filler"
    marker = tmp_path / "filled-once"
    wf = tmp_path / "wf.yml"
    wf.write_text(
        "name: filler\n"
        "map:\n"
        # More records than the ledger's last, partly filled page can take.
        "  items: [" + ", ".join(str(n) for n in range(40)) + "]\n"
        "  max_parallel: 1\n"
        "  agent_template:\n"
        f"    - run: '[ -f {marker} ] || {{ touch {marker}; cat /dev/zero > {filler}; }}; true'\n"
    )
    home = small_disk / "home"
    first = _engine(home, "run", str(wf), "--run-id", "full", cwd=tmp_path)
    assert first.returncode == 1, first.stderr
    last = first.stderr.splitlines()[-1]
    assert last.startswith("engine: error: ") and "ledger.ndjson" in last, first.stderr
    assert "Exception in callback" not in first.stderr  # the log writer's part
    ledger = home / "runs" / "full" / "ledger.ndjson"
    before = verify_ledger(ledger)
    assert before.torn is None  # only durable records are left
    filler.unlink()
    again = _engine(home, "resume", "full", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    types = [r.type for r in LedgerReader(ledger).records()]
    assert types.count("item.succeeded") == 40 and types[-1] == "run.completed"
    _no_noise(first.stderr)
