"""The values projection: what the engine reads back of a run (values, results, done steps)."""

from __future__ import annotations

from pathlib import Path

from ledger import LedgerWriter
from ledger.events import (
    Event,
    ItemEnqueued,
    ItemSkipped,
    ItemSucceeded,
    StepFailed,
    StepStarted,
    StepSucceeded,
)
from projections.replay import Projections, replay
from projections.values import ValuesProjection


def _replayed(tmp_path: Path, events: list[Event]) -> Projections:
    with LedgerWriter.open(tmp_path / "run", "values", create=True, command="test") as writer:
        writer.append_many(events)
    return replay(tmp_path / "run" / "ledger.ndjson", into=Projections(extra=(ValuesProjection(),)))


def test_values_results_and_steps_as_the_engine_reads_them_back(tmp_path: Path) -> None:
    p = _replayed(
        tmp_path,
        [
            ItemEnqueued(item="a", index=0, value={"n": 1}),
            ItemEnqueued(item="b", index=1, value_ref="sha256:" + "0" * 64),
            ItemEnqueued(item="a", index=2, value="again"),  # a resume's: the first stays
            ItemSucceeded(item="b", attempt=1, result="B1"),
            ItemSkipped(item="a", reason="cache", result="A"),
            ItemSucceeded(item="b", attempt=2, result_ref="sha256:" + "1" * 64),
            StepStarted(phase="setup", index=0, name="prepare", command="make"),
            StepSucceeded(phase="setup", index=0, captured="conf", captured_value={"k": 1}),
            StepStarted(phase="setup", index=1, command="make check"),
            StepFailed(phase="setup", index=1, error_type="command_failed"),
            StepStarted(phase="setup", index=0, command="make all"),  # run again, then stopped
        ],
    )
    values = p.find(ValuesProjection)
    assert values is not None
    assert values is not None
    assert {k: (e.value, e.value_ref) for k, e in values.enqueued.items()} == {
        "a": ({"n": 1}, None),
        "b": (None, "sha256:" + "0" * 64),
    }
    # The last success of each, in the order the items first had one (results.json's).
    assert [(k, e.result, e.result_ref) for k, e in values.results.items()] == [
        ("b", None, "sha256:" + "1" * 64),
        ("a", "A", None),
    ]
    done = values.steps
    assert list(done) == [("setup", 0)]
    assert (done["setup", 0].command, done["setup", 0].name) == ("make", "prepare")
    assert (done["setup", 0].captured, done["setup", 0].captured_value) == ("conf", {"k": 1})


def test_a_replay_that_does_not_ask_for_values_does_not_fold_them(tmp_path: Path) -> None:
    with LedgerWriter.open(tmp_path / "run", "values", create=True, command="test") as writer:
        writer.append(ItemEnqueued(item="a", index=0, value=1))
    assert replay(tmp_path / "run" / "ledger.ndjson").find(ValuesProjection) is None
