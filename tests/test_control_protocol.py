"""The asking side of the control protocol (engine.run.control), without an engine process."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from engine.errors import NotConfirmed
from engine.home import RunRef
from engine.run import control
from ledger import LedgerWriter
from ledger.events import Heartbeat, RunPaused, RunUnpaused
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
    assert answer == "run.paused"
    asked = msgspec.json.decode(path.read_bytes())
    assert asked["paused"] is True and asked["by"] == "me@here pid 1"
    assert abs(asked["at"] - time.time()) < DEADLINE


def test_an_answer_recorded_before_the_watch_is_up_is_not_missed(
    held: tuple[RunRef, LedgerWriter],
) -> None:
    ref, writer = held
    start = ref.ledger.stat().st_size
    writer.append(RunUnpaused(by="someone"))  # the engine was quicker than the watch
    began = time.monotonic()
    found = control._await_answer(ref.ledger.resolve(), start, frozenset({"run.unpaused"}), 30.0)
    assert found == "run.unpaused"
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
