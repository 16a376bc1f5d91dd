"""Live control as a new user meets it: the default home, and requests at every phase.

Every engine here is a real ``engine`` process started in a directory of its
own with no ``ENGINE_HOME`` and no ``--home``: the home is the relative
``./.engine``, as in the README. Requests come from other processes (the
CLI), and land where the test wants them by gates (files the steps wait
for), never by sleeping.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.run import control
from ledger import LedgerReader
from ledger.events import Record
from projections.replay import replay
from tests.conftest import ENGINE
from tests.engine_helpers import DEADLINE, ledger_has, unique_run_id, wait_for, write_workflow

GATED = "while [ ! -e {gate} ]; do sleep 0.005; done"
"""A command that runs until the test creates the file ``gate``."""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("ENGINE_HOME", None)
    return env


def _engine(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``engine ARGS`` in ``cwd``, with the default home (no ENGINE_HOME, no --home)."""
    return subprocess.run(
        [ENGINE, *args], cwd=cwd, env=_env(), capture_output=True, text=True, check=False
    )


def _asking(cwd: Path, *args: str) -> subprocess.Popen[str]:
    """``engine ARGS`` started, not waited for (a request that waits for its answer)."""
    return subprocess.Popen(
        [ENGINE, *args],
        cwd=cwd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


class Engine:
    """An ``engine run`` of one workflow in ``directory``, with the default home."""

    def __init__(self, directory: Path, text: str) -> None:
        self.directory = directory
        self.run_id = unique_run_id("ctl")
        write_workflow(directory, text)
        self.proc = subprocess.Popen(
            [ENGINE, "run", "wf.yml", "--run-id", self.run_id, "--no-progress"],
            cwd=directory,
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.run_dir = directory / ".engine" / "runs" / self.run_id
        self.ledger = self.run_dir / "ledger.ndjson"

    def records(self) -> list[Record]:
        return list(LedgerReader(self.ledger).records()) if self.ledger.exists() else []

    def types(self) -> list[str]:
        return [r.type for r in self.records()]

    def has(self, type_: str, count: int = 1) -> bool:
        return ledger_has(self.ledger, type_, count)

    def open(self, gate: str) -> None:
        (self.directory / gate).touch()

    def wait(self) -> int:
        _, self.stderr = self.proc.communicate(timeout=DEADLINE)
        return self.proc.returncode

    def asked(self) -> bool:
        """The request file is written (the asking command has written it)."""
        return (self.run_dir / control.CONTROL_FILE).exists()

    def ask(self, *args: str) -> subprocess.Popen[str]:
        """``engine ARGS RUN`` from another process, once its request is written."""
        asking = _asking(self.directory, *args, self.run_id)
        wait_for(lambda: self.asked() or asking.poll() is not None, what="the request")
        return asking


@pytest.fixture
def engines() -> Iterator[list[Engine]]:
    started: list[Engine] = []
    yield started
    for engine in started:
        engine.proc.kill()
        engine.proc.communicate()  # reaped even when the test fails: no warning in a later test


def _answered(asking: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = asking.communicate(timeout=DEADLINE)
    return asking.returncode, out, err


MAP = """
name: steered
map:
  command: seq 1 12
  max_parallel: 2
  agent_template:
    - run: '{gated}'
"""


def test_pause_unpause_cancel_from_the_default_home(tmp_path: Path, engines: list[Engine]) -> None:
    engine = Engine(tmp_path, MAP.format(gated=GATED.format(gate="open")))
    engines.append(engine)
    wait_for(
        lambda: engine.ledger.exists() and replay(engine.ledger).items.counts["running"] == 2,
        what="two running attempts",
    )
    paused = _engine(tmp_path, "pause", "latest", "--json")
    assert paused.returncode == 0, paused.stderr
    answer = json.loads(paused.stdout)
    assert answer["confirmed"] and answer["record"] == "run.paused"
    assert answer["run_id"] == engine.run_id and answer["asked"] == "pause"
    assert engine.records()[answer["seq"]].type == "run.paused"

    # A paused run says so, in every view of it.
    status = _engine(tmp_path, "status", "--json")
    assert json.loads(status.stdout)["status"] == "paused"
    assert json.loads(status.stdout)["paused"] is True
    assert "status paused" in _engine(tmp_path, "status").stdout
    runs = _engine(tmp_path, "runs", "--json")
    assert [(r["run_id"], r["status"], r["paused"]) for r in json.loads(runs.stdout)] == [
        (engine.run_id, "paused", True)
    ]
    row = next(
        line for line in _engine(tmp_path, "runs").stdout.splitlines() if engine.run_id in line
    )
    assert " paused " in row

    # The run obeys: the running attempts finish, no new one starts.
    engine.open("open")
    wait_for(lambda: engine.has("item.succeeded", 2), what="the running attempts to finish")
    (tmp_path / "open").unlink()
    unpaused = _engine(tmp_path, "unpause", "latest")
    assert unpaused.returncode == 0, unpaused.stderr
    assert f"unpaused {engine.run_id}" in unpaused.stdout
    assert json.loads(_engine(tmp_path, "status", "--json").stdout)["status"] == "running"
    wait_for(lambda: engine.has("item.dispatched", 4), what="dispatching to go on")
    cancelled = _engine(tmp_path, "cancel", "latest", "--json")
    assert cancelled.returncode == 0, cancelled.stderr
    assert json.loads(cancelled.stdout)["record"] == "run.aborted"
    assert engine.wait() == 130

    types = engine.types()
    paused_at, unpaused_at = types.index("run.paused"), types.index("run.unpaused")
    assert "item.dispatched" not in types[paused_at:unpaused_at]
    assert types[paused_at:unpaused_at].count("item.succeeded") == 2
    assert types.index("run.cancel_requested") < types.index("run.aborted")
    assert replay(engine.ledger).run.status == "aborted"
    assert json.loads(_engine(tmp_path, "status", "--json").stdout)["paused"] is False


PHASES = """
name: phases
setup:
  - run: '{setup}'
  - run: 'true'
map:
  items: [1, 2, 3]
  agent_template:
    - run: 'true'
reduce:
  - run: '{reduce}'
  - run: 'true'
"""


def _steps(engine: Engine, phase: str) -> list[int]:
    return [
        r.data.index for r in engine.records() if r.type == "step.started" and r.data.phase == phase
    ]


def _setup_started(engine: Engine) -> bool:
    return engine.has("step.started")


@pytest.mark.parametrize("attempt", range(4))
def test_a_pause_asked_as_setup_ends_holds_the_next_step_and_the_map(
    tmp_path: Path, engines: list[Engine], attempt: int
) -> None:
    # The request is written, then at once the gate opens: setup's first step
    # ends and the engine goes on, long before the watch reports the request.
    # The next phase reads the request first: nothing starts while paused.
    engine = Engine(tmp_path, PHASES.format(setup=GATED.format(gate="open"), reduce="true"))
    engines.append(engine)
    wait_for(lambda: _setup_started(engine), what="the setup step to start")
    asking = engine.ask("pause", "--json")
    engine.open("open")
    code, out, err = _answered(asking)
    assert code == 0, err
    answer = json.loads(out)
    assert answer["confirmed"] and answer["record"] == "run.paused", answer
    wait_for(lambda: engine.has("step.succeeded"), what="the first setup step to end")
    types = engine.types()
    paused_at = types.index("run.paused")
    assert answer["seq"] == paused_at
    assert _steps(engine, "setup") == [0]  # the second setup step waits
    assert "item.dispatched" not in types and "run.completed" not in types
    assert _engine(tmp_path, "unpause", engine.run_id).returncode == 0
    assert engine.wait() == 0, engine.stderr
    types = engine.types()
    assert types.index("run.unpaused") < types.index("item.dispatched")
    assert replay(engine.ledger).run.status == "completed"


@pytest.mark.parametrize("attempt", range(3))
def test_a_pause_asked_as_the_map_starts_is_in_force_before_the_first_dispatch(
    tmp_path: Path, engines: list[Engine], attempt: int
) -> None:
    text = """
    name: gap
    setup:
      - run: '{gated}'
    map:
      items: [1, 2, 3]
      agent_template:
        - run: 'true'
    """.format(gated=GATED.format(gate="open"))
    engine = Engine(tmp_path, text)
    engines.append(engine)
    wait_for(lambda: _setup_started(engine), what="the setup step to start")
    asking = engine.ask("pause")
    engine.open("open")  # setup ends, and the map starts at once
    code, out, err = _answered(asking)
    assert code == 0 and "paused" in out, err
    wait_for(lambda: engine.has("map.enqueued"), what="the map to start")
    assert not engine.has("item.dispatched")
    assert _engine(tmp_path, "unpause", engine.run_id).returncode == 0
    assert engine.wait() == 0, engine.stderr
    types = engine.types()
    assert types.index("run.paused") < types.index("run.unpaused") < types.index("item.dispatched")


@pytest.mark.parametrize("attempt", range(3))
def test_a_cancel_asked_as_the_last_step_ends_aborts_the_run(
    tmp_path: Path, engines: list[Engine], attempt: int
) -> None:
    text = """
    name: last
    map:
      items: [1]
      agent_template:
        - run: 'true'
    reduce:
      - run: '{gated}'
    """.format(gated=GATED.format(gate="open"))
    engine = Engine(tmp_path, text)
    engines.append(engine)
    wait_for(lambda: engine.has("step.started"), what="the reduce step to start")
    asking = engine.ask("cancel", "--json")
    engine.open("open")  # the last step ends: the run would complete now
    code, out, err = _answered(asking)
    assert code == 0, err
    assert json.loads(out)["record"] == "run.aborted"
    assert engine.wait() == 130
    types = engine.types()
    assert "run.completed" not in types and types[-1] == "run.aborted"


def test_a_pause_during_the_reduce_holds_its_next_step(
    tmp_path: Path, engines: list[Engine]
) -> None:
    engine = Engine(tmp_path, PHASES.format(setup="true", reduce=GATED.format(gate="open")))
    engines.append(engine)
    wait_for(lambda: 0 in _steps(engine, "reduce"), what="the reduce step to start")
    paused = _engine(tmp_path, "pause", engine.run_id)
    assert paused.returncode == 0, paused.stderr
    engine.open("open")
    wait_for(
        lambda: any(
            r.type == "step.succeeded" and r.data.phase == "reduce" for r in engine.records()
        ),
        what="the first reduce step to end",
    )
    assert json.loads(_engine(tmp_path, "status", "--json").stdout)["status"] == "paused"
    assert _steps(engine, "reduce") == [0] and not engine.has("run.completed")
    assert _engine(tmp_path, "unpause", engine.run_id).returncode == 0
    assert engine.wait() == 0, engine.stderr
    assert _steps(engine, "reduce") == [0, 1]


def test_a_cancel_ends_a_run_paused_between_steps(tmp_path: Path, engines: list[Engine]) -> None:
    engine = Engine(tmp_path, PHASES.format(setup=GATED.format(gate="open"), reduce="true"))
    engines.append(engine)
    wait_for(lambda: _setup_started(engine), what="the setup step to start")
    assert _engine(tmp_path, "pause", engine.run_id).returncode == 0
    engine.open("open")
    wait_for(lambda: engine.has("step.succeeded"), what="the first setup step to end")
    cancelled = _engine(tmp_path, "cancel", engine.run_id)
    assert cancelled.returncode == 0, cancelled.stderr
    assert engine.wait() == 130
    p = replay(engine.ledger)
    assert p.run.status == "aborted" and _steps(engine, "setup") == [0]


def test_a_signal_ends_a_run_paused_between_steps(tmp_path: Path, engines: list[Engine]) -> None:
    engine = Engine(tmp_path, PHASES.format(setup=GATED.format(gate="open"), reduce="true"))
    engines.append(engine)
    wait_for(lambda: _setup_started(engine), what="the setup step to start")
    assert _engine(tmp_path, "pause", engine.run_id).returncode == 0
    engine.open("open")
    wait_for(lambda: engine.has("step.succeeded"), what="the first setup step to end")
    engine.proc.send_signal(signal.SIGTERM)
    assert engine.wait() == 130  # interrupted, resumable: nothing more recorded
    assert _steps(engine, "setup") == [0] and engine.types()[-1] == "step.succeeded"
    assert json.loads(_engine(tmp_path, "status", "--json").stdout)["status"] == "interrupted"


def test_a_request_left_for_a_dead_engine_is_not_revived_by_a_later_one(
    tmp_path: Path, engines: list[Engine]
) -> None:
    """A cancel whose engine died before it answered is ignored by the next engine, even
    once another request (a pause) is written beside it."""
    engine = Engine(tmp_path, MAP.format(gated=GATED.format(gate="open")))
    engines.append(engine)
    wait_for(lambda: engine.has("item.dispatched", 2), what="two running attempts")
    engine.proc.send_signal(signal.SIGKILL)
    engine.wait()
    # What `engine cancel` leaves when its engine dies before answering.
    (engine.run_dir / control.CONTROL_FILE).write_text(
        json.dumps({"cancel": "graceful", "cancel_by": "earlier", "cancel_at": 1.0e9})
    )
    resumed = subprocess.Popen(
        [ENGINE, "resume", engine.run_id, "--no-progress"],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    engine.proc = resumed  # reaped by the fixture if the test fails
    wait_for(lambda: engine.has("run.resumed"), what="the resume")
    wait_for(lambda: engine.has("item.dispatched", 4), what="the resumed attempts")
    paused = _engine(tmp_path, "pause", engine.run_id)
    assert paused.returncode == 0, paused.stderr
    engine.open("open")
    unpaused = _engine(tmp_path, "unpause", engine.run_id)
    assert unpaused.returncode == 0, unpaused.stderr
    assert engine.wait() == 0, engine.stderr
    types = engine.types()
    assert "run.cancel_requested" not in types and types[-1] == "run.completed"
