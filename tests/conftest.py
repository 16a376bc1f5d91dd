"""Shared fixtures: real files under tmp_path, a printed random seed."""

from __future__ import annotations

import os
import random
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from projections.replay import Projections

pytest_plugins = ("tests.dask_cluster",)

FIXTURES = Path(__file__).parent / "fixtures"
HELPERS = Path(__file__).parent / "helpers"
FIXTURE_LEDGER = FIXTURES / "run-fixture" / "ledger.ndjson"
ENGINE = str(Path(sys.executable).with_name("engine"))


def pytest_configure(config: pytest.Config) -> None:
    # Tests stop the processes they start with SIGINT, as Ctrl-C would. A suite
    # started in the background by a script (`make test &`, nohup) inherits
    # SIGINT ignored, and so would every process it starts: it is put back.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_report_header(config: pytest.Config) -> str:
    return f"random seed: {_seed()} (set ENGINE_TEST_SEED to reproduce)"


def _seed() -> int:
    value = os.environ.get("ENGINE_TEST_SEED")
    if value is None:
        value = str(random.SystemRandom().randrange(2**32))
        os.environ["ENGINE_TEST_SEED"] = value
    return int(value)


@pytest.fixture(autouse=True)
def _own_home_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test (nor a process it starts) falls back on a home set in the shell:
    one shared with other checkouts running the suite at the same time."""
    monkeypatch.delenv("ENGINE_HOME", raising=False)


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    """A seeded Random; the seed is printed in the header and on failure."""
    seed = _seed()
    request.node.user_properties.append(("seed", seed))
    return random.Random(f"{seed}-{request.node.nodeid}")


@pytest.fixture
def fixture_run(tmp_path: Path) -> Path:
    """A copy of the checked-in fixture run directory (safe to modify)."""
    run_dir = tmp_path / "home" / "runs" / "run-fixture"
    run_dir.mkdir(parents=True)
    shutil.copyfile(FIXTURE_LEDGER, run_dir / "ledger.ndjson")
    return run_dir


def alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def own_pids() -> Iterator[list[int]]:
    """Pids of processes this test caused to exist; any still alive at the end are killed."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "home"
    path.mkdir(exist_ok=True)
    yield path


def projections_json(p: Projections) -> bytes:
    import msgspec

    return msgspec.json.encode(p.to_json())


@pytest.fixture
def own_git(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Git in this test reads no configuration of the machine or the user, only the
    repositories' own (``pytestmark = pytest.mark.usefixtures("own_git")``)."""
    from tests.engine_helpers import hermetic_git

    hermetic_git(monkeypatch, tmp_path)
