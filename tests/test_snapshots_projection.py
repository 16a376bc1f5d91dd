"""Projection snapshots: written by the engine, used by readers, derived data only."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import msgspec

from projections.replay import Projections, replay
from projections.snapshots import FORMAT, SNAPSHOT_NAME, Snapshot, load_snapshot, write_snapshot
from projections.stats import SessionsProjection
from tests.conftest import projections_json
from tests.engine_helpers import run_workflow, write_workflow

WORKFLOW = """
name: snap
map:
  items: [a, b, c, d]
  id: "${item}"
  max_parallel: 2
  agent_template:
    - run: test "${item}" != c
  retry: {max_attempts: 1}
"""


def _run(tmp_path: Path) -> Path:
    wf = write_workflow(tmp_path, WORKFLOW)
    result = run_workflow(wf, tmp_path / "home")
    return result.run_dir / "ledger.ndjson"


def _status(ledger: Path) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "status", str(ledger.parent), "--json"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode in (0, 1), done.stderr
    view = json.loads(done.stdout)
    view.pop("took_s", None)  # time; the sessions are compared by the projections
    return view


def _fresh() -> Projections:
    return Projections(extra=(SessionsProjection(),))


def test_the_engine_leaves_a_snapshot_of_its_end_that_readers_use(tmp_path: Path) -> None:
    ledger = _run(tmp_path)
    p = _fresh()
    snap = load_snapshot(ledger, [*p.all(), *p.extra])
    assert snap is not None, "no valid snapshot beside the ledger after the run"
    last = replay(ledger, snapshot=False)
    assert snap.record.seq == last.seq  # the run's end: the tail is empty
    p.last = snap.record
    assert projections_json(p) == projections_json(last)
    with_snapshot = _status(ledger)
    (ledger.parent / SNAPSHOT_NAME).unlink()
    assert _status(ledger) == with_snapshot  # deleting it changes nothing but speed


def test_a_snapshot_that_does_not_match_the_ledger_is_ignored(tmp_path: Path) -> None:
    ledger = _run(tmp_path / "one")
    other = _run(tmp_path / "two")  # same shape, other hashes
    snapshot = ledger.parent / SNAPSHOT_NAME
    snapshot.write_bytes((other.parent / SNAPSHOT_NAME).read_bytes())
    p = _fresh()
    assert load_snapshot(ledger, [*p.all(), *p.extra]) is None
    assert projections_json(replay(ledger)) == projections_json(replay(ledger, snapshot=False))


def test_a_damaged_or_foreign_snapshot_is_ignored(tmp_path: Path) -> None:
    ledger = _run(tmp_path)
    snapshot = ledger.parent / SNAPSHOT_NAME
    good = snapshot.read_bytes()
    full = projections_json(replay(ledger, snapshot=False))
    snap = msgspec.msgpack.decode(good, type=Snapshot)
    foreign = msgspec.msgpack.encode(msgspec.structs.replace(snap, format=FORMAT + 1))
    for bad in (good[: len(good) // 2], b"\x00" * 64, foreign, b""):
        snapshot.write_bytes(bad)
        p = _fresh()
        assert load_snapshot(ledger, [*p.all(), *p.extra]) is None
        assert projections_json(p) == projections_json(_fresh())  # left fresh
        assert projections_json(replay(ledger)) == full


def test_status_reads_the_snapshot_without_decoding_its_item_table(tmp_path: Path) -> None:
    ledger = _run(tmp_path)
    p = _fresh()
    assert load_snapshot(ledger, [*p.all(), *p.extra]) is not None
    assert not p.items.items_loaded  # counts, the DLQ, the running: none needs the table
    full = replay(ledger, snapshot=False)
    assert p.items.item_counts() == full.items.item_counts()
    assert not p.items.items_loaded
    assert p.items.items == full.items.items  # decoded on its first use
    assert p.items.items_loaded


def test_a_damaged_item_table_is_folded_from_the_ledger_instead(tmp_path: Path) -> None:
    ledger = _run(tmp_path)
    snapshot = ledger.parent / SNAPSHOT_NAME
    snap = msgspec.msgpack.decode(snapshot.read_bytes(), type=Snapshot)
    full = projections_json(replay(ledger, snapshot=False))
    # Checked only on its first use: not msgpack, not a table, a table of other items.
    for table in (b"\xc1", msgspec.msgpack.encode([1, 2]), msgspec.msgpack.encode({})):
        parts = {**snap.parts, "ItemsProjection.items": table}
        snapshot.write_bytes(msgspec.msgpack.encode(msgspec.structs.replace(snap, parts=parts)))
        p = _fresh()
        assert load_snapshot(ledger, [*p.all(), *p.extra]) is not None
        p.last = snap.record
        assert projections_json(p) == full
        assert projections_json(replay(ledger)) == full


def test_replay_full_ignores_the_snapshot(tmp_path: Path) -> None:
    ledger = _run(tmp_path)
    snapshot = ledger.parent / SNAPSHOT_NAME
    p = _fresh()
    snap = load_snapshot(ledger, [*p.all(), *p.extra])
    assert snap is not None
    # A snapshot that lies (valid envelope, wrong state) shows only where it is used.
    p.items.counts["succeeded"] += 100
    assert write_snapshot(ledger, [*p.all(), *p.extra], snap.record)

    def replay_json(*args: str) -> dict[str, object]:
        done = subprocess.run(
            [sys.executable, "-m", "cli.main", "replay", str(ledger.parent), "--json", *args],
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    assert replay_json()["items"]["counts"]["succeeded"] == 103
    assert replay_json("--full")["items"]["counts"]["succeeded"] == 3
    assert snapshot.exists()
