"""The map's items are recorded in batches beside dispatch: order, duplicates, resume."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from engine.run import enqueue as enqueue_module
from ledger import LedgerReader
from ledger.events import Record
from tests.engine_helpers import run_workflow, write_workflow


def _ledger(run_dir: Path) -> list[Record]:
    return list(LedgerReader(run_dir / "ledger.ndjson").records())


def _seqs(records: list[Record], type_: str) -> list[int]:
    return [r.seq for r in records if r.type == type_]


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """A few items per append, so that a small map takes many batches."""
    monkeypatch.setattr(enqueue_module, "ENQUEUE_BATCH", 5)


@pytest.mark.usefixtures("small_batches")
def test_dispatch_starts_before_the_last_item_is_recorded_and_keeps_the_order(
    tmp_path: Path,
) -> None:
    wf = write_workflow(
        tmp_path,
        """
        name: fed
        map:
          command: seq 0 199
          id: "n${item}"
          max_parallel: 4
          retry: {max_attempts: 1}
          agent_template:
            - argv: ["true"]
        """,
    )
    result = run_workflow(wf, tmp_path / "home")
    assert result.status == "completed" and result.exit_code == 0
    records = _ledger(result.run_dir)
    enqueued = [r for r in records if r.type == "item.enqueued"]
    assert [r.data.index for r in enqueued] == list(range(200))  # the input's order, once each
    assert min(_seqs(records, "item.dispatched")) < enqueued[-1].seq  # beside dispatch
    closing = [r for r in records if r.type == "map.enqueued"]
    assert len(closing) == 1 and closing[0].data.total == 200
    assert closing[0].seq > enqueued[-1].seq  # the list is closed after its last item
    assert result.projections.items.counts["succeeded"] == 200
    assert sorted(_seqs(records, "item.succeeded")) == _seqs(records, "item.succeeded")
    assert all(r.seq < closing[0].seq for r in enqueued)
    dispatched = [r.data.item for r in records if r.type == "item.dispatched"]
    assert dispatched == [f"n{i}" for i in range(200)]  # dispatched in the input's order


@pytest.mark.usefixtures("small_batches")
def test_duplicates_are_found_and_recorded_after_the_last_item(tmp_path: Path) -> None:
    wf = write_workflow(
        tmp_path,
        """
        name: dupes
        map:
          command: "seq 0 49; seq 0 9"
          id: "n${item}"
          max_parallel: 4
          retry: {max_attempts: 1}
          agent_template:
            - argv: ["true"]
        """,
    )
    result = run_workflow(wf, tmp_path / "home")
    assert result.status == "completed"
    records = _ledger(result.run_dir)
    enqueued = _seqs(records, "item.enqueued")
    duplicates = [r for r in records if r.type == "item.duplicate"]
    assert len(enqueued) == 50
    assert [(r.data.item, r.data.index, r.data.first_index) for r in duplicates] == [
        (f"n{i}", 50 + i, i) for i in range(10)
    ]
    assert min(r.seq for r in duplicates) > max(enqueued)
    (closing,) = [r for r in records if r.type == "map.enqueued"]
    assert (closing.data.total, closing.data.duplicates) == (50, 10)
    assert len(_seqs(records, "item.dispatched")) == 50  # a duplicate never runs


@pytest.mark.usefixtures("small_batches")
def test_a_map_stopped_while_items_are_recorded_resumes_with_the_rest(tmp_path: Path) -> None:
    wf = write_workflow(
        tmp_path,
        """
        name: cut
        map:
          command: seq 0 299
          id: "n${item}"
          max_parallel: 1
          max_failures: 1
          retry: {max_attempts: 1}
          agent_template:
            - run: '[ "${item}" != 0 ] || [ -f fixed ]'
        """,
    )
    home = tmp_path / "home"
    first = run_workflow(wf, home)
    assert first.status == "failed"  # item 0 failed: max_failures stopped the map
    records = _ledger(first.run_dir)
    cut = len(_seqs(records, "item.enqueued"))
    assert 0 < cut < 300 and not _seqs(records, "map.enqueued")  # the feed stopped with it
    (tmp_path / "fixed").write_text("")
    resumed = CliRunner().invoke(
        cli,
        ["--home", str(home), "resume", first.run_id, "--include-dlq", "--no-progress"],
        catch_exceptions=False,
    )
    assert resumed.exit_code == 0, resumed.stderr
    records = _ledger(first.run_dir)
    enqueued = [r for r in records if r.type == "item.enqueued"]
    assert [r.data.index for r in enqueued] == list(range(300))  # the rest, once each, in order
    (closing,) = [r for r in records if r.type == "map.enqueued"]
    assert closing.data.total == 300
    succeeded = {r.data.item for r in records if r.type == "item.succeeded"}
    assert succeeded == {f"n{i}" for i in range(300)}
