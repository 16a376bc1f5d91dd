"""The asking side of the control protocol (engine.run.control), without an engine process."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from engine.errors import NotConfirmed, NotRunning
from engine.home import RunRef
from engine.run import control
from ledger import LedgerReader, LedgerWriter
from ledger.events import Heartbeat, RunCompleted, RunPaused, RunUnpaused
from tests.conftest import ENGINE
from tests.engine_helpers import DEADLINE, wait_for

DOCS = Path(__file__).resolve().parent.parent / "docs" / "operations.md"


@pytest.fixture
def held(tmp_path: Path) -> Iterator[tuple[RunRef, LedgerWriter]]:
    """A run and a writer holding it: the engine's side, played by the test."""
    run_dir = tmp_path / "runs" / "steered"
    writer = LedgerWriter.open(run_dir, "steered", create=True, command="test")
    try:
        yield RunRef("steered", run_dir, run_dir / "ledger.ndjson"), writer
    finally:
        writer.close()


def test_a_request_is_written_then_answered_from_the_ledger(
    held: tuple[RunRef, LedgerWriter],
) -> None:
    ref, writer = held
    path = ref.run_dir / control.CONTROL_FILE

    def engine() -> None:
        wait_for(path.exists, what="the request")
        writer.append(Heartbeat(item="x", attempt=1))  # not an answer
        writer.append(RunPaused(by="someone"))

    answering = threading.Thread(target=engine)
    answering.start()
    try:
        answer = control.request(ref, {"paused": True}, by="me@here pid 1")
    finally:
        answering.join(DEADLINE)
    assert answer.type == "run.paused" and answer.data.by == "someone"
    assert answer.seq == max(r.seq for r in LedgerReader(ref.ledger).records())
    asked = msgspec.json.decode(path.read_bytes())
    assert asked["paused"] is True and asked["paused_by"] == "me@here pid 1"
    assert abs(asked["paused_at"] - time.time()) < DEADLINE


def test_an_answer_recorded_before_the_watch_is_up_is_not_missed(
    held: tuple[RunRef, LedgerWriter],
) -> None:
    ref, writer = held
    start = ref.ledger.stat().st_size
    writer.append(RunUnpaused(by="someone"))  # the engine was quicker than the watch
    began = time.monotonic()
    found = control._await_answer(ref.ledger.resolve(), start, frozenset({"run.unpaused"}), 30.0)
    assert found is not None and found.type == "run.unpaused"
    assert time.monotonic() - began < 10.0  # found as the watch came up, not at the deadline


def test_a_request_no_engine_answers_is_not_confirmed_at_its_deadline(
    held: tuple[RunRef, LedgerWriter],
) -> None:
    ref, _writer = held
    began = time.monotonic()
    with pytest.raises(NotConfirmed, match="did not confirm within 1s") as refused:
        control.request(ref, {"cancel": "force"}, wait=1.0)
    assert 1.0 <= time.monotonic() - began < 1.0 + DEADLINE
    assert refused.value.waited == 1.0


def test_a_request_must_be_one_the_engine_answers(held: tuple[RunRef, LedgerWriter]) -> None:
    ref, _writer = held
    with pytest.raises(ValueError, match="not a control request"):
        control.request(ref, {"cancel": "later"})
    assert not (ref.run_dir / control.CONTROL_FILE).exists()


def test_the_docs_say_how_long_a_request_waits() -> None:
    text = " ".join(DOCS.read_text().split())
    waits = re.search(r"did not confirm within (\d+) s \((\d+) s for a graceful cancel", text)
    assert waits is not None, "docs/operations.md no longer says how long a request waits"
    assert (float(waits[1]), float(waits[2])) == (control.CONFIRM_WAIT, control.CANCEL_WAIT)


@pytest.mark.parametrize(
    ("change", "constant"),
    [
        ({"paused": True}, "CONFIRM_WAIT"),
        ({"paused": False}, "CONFIRM_WAIT"),
        ({"cancel": "force"}, "CONFIRM_WAIT"),
        ({"cancel": "graceful"}, "CANCEL_WAIT"),
    ],
)
def test_a_request_waits_what_the_docs_say_and_no_longer(
    held: tuple[RunRef, LedgerWriter],
    monkeypatch: pytest.MonkeyPatch,
    change: dict[str, object],
    constant: str,
) -> None:
    # The waits shortened (the docs' figures are checked against the
    # constants below); which one a request waits, and that the deadline
    # ends the wait at once, is what this checks.
    monkeypatch.setattr(control, "CONFIRM_WAIT", 1.0)
    monkeypatch.setattr(control, "CANCEL_WAIT", 2.0)
    ref, _writer = held
    began = time.monotonic()
    with pytest.raises(NotConfirmed) as refused:
        control.request(ref, change)
    waited = time.monotonic() - began
    expected = getattr(control, constant)
    assert refused.value.waited == expected
    assert f"did not confirm within {expected:g}s" in str(refused.value)
    assert expected <= waited < expected + 1.0  # not a timer's period or two beyond


def test_a_request_to_a_run_that_ends_first_says_so_at_once(
    held: tuple[RunRef, LedgerWriter],
) -> None:
    ref, writer = held
    path = ref.run_dir / control.CONTROL_FILE

    def engine() -> None:  # the run ends before its engine read the request
        wait_for(path.exists, what="the request")
        writer.append(RunCompleted(succeeded=0, failed=0, dead=0, skipped=0))

    answering = threading.Thread(target=engine)
    answering.start()
    began = time.monotonic()
    try:
        with pytest.raises(
            NotRunning, match="ended \\(completed\\) before its engine took the pause"
        ):
            control.request(ref, {"paused": True}, wait=DEADLINE)
    finally:
        answering.join(DEADLINE)
    assert time.monotonic() - began < DEADLINE  # not at the deadline


def test_a_request_whose_engine_goes_without_answering_says_so_at_once(
    held: tuple[RunRef, LedgerWriter],
) -> None:
    ref, writer = held
    path = ref.run_dir / control.CONTROL_FILE

    def engine() -> None:  # the engine stops (a signal): the lock is released, nothing recorded
        wait_for(path.exists, what="the request")
        writer.close()

    answering = threading.Thread(target=engine)
    answering.start()
    began = time.monotonic()
    try:
        with pytest.raises(NotRunning, match="ended \\(interrupted\\)") as refused:
            control.request(ref, {"cancel": "graceful"}, wait=DEADLINE)
    finally:
        answering.join(DEADLINE)
    assert time.monotonic() - began < DEADLINE
    assert refused.value.exit_code == 2 and "engine resume steered" in str(refused.value)


def test_the_wait_counts_from_when_the_asking_began(held: tuple[RunRef, LedgerWriter]) -> None:
    ref, _writer = held
    began = time.monotonic()
    with pytest.raises(NotConfirmed, match="within 3s"):
        control.request(ref, {"paused": True}, wait=3.0, since=began - 2.0)
    assert time.monotonic() - began < 2.0  # the 2 s spent before it count


def test_a_command_no_engine_answers_gives_up_when_the_docs_say(
    held: tuple[RunRef, LedgerWriter],
) -> None:
    # `engine pause` itself, against a run whose lock is held by an engine
    # that never answers: it ends the stated time after it was started, its
    # start-up included (made slow here: the process sleeps before it execs
    # the engine, as a loaded machine would keep it), with the error's line
    # and exit code, and (--json being for success) nothing on stdout.
    ref, _writer = held
    home = str(ref.run_dir.parent.parent)
    began = time.monotonic()
    asked = subprocess.run(
        [
            "sh",
            "-c",
            'sleep 6; exec "$0" "$@"',
            ENGINE,
            "--home",
            home,
            "pause",
            "steered",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    took = time.monotonic() - began
    assert asked.returncode == 1 and asked.stdout == ""
    wait = f"{control.CONFIRM_WAIT:g}s"
    assert asked.stderr.count("\n") == 1 and f"did not confirm within {wait}" in asked.stderr
    # Not counting its start-up would take 16 s or more; a loaded machine may add a few.
    assert control.CONFIRM_WAIT <= took < control.CONFIRM_WAIT + 5.0
