"""Receipts: one file per succeeded item, written as it succeeds, checked by `audit verify`.

Real runs (the mock agent and shell steps as real subprocesses, real files,
real ledgers); every receipt is compared with what the ledger records.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import stat
from pathlib import Path

import jsonschema
import msgspec
import pytest

from engine.run import RunOptions, RunResult, resume_run
from engine.store.receipts import RECEIPTS_DIR, receipt_name
from projections.receipts import Receipt
from tests.engine_helpers import (
    MOCK,
    assert_replays,
    engine_in_process,
    git,
    make_repo,
    records,
    run_workflow,
    write_script,
    write_workflow,
)

SCHEMA = json.loads((Path(__file__).parent.parent / "schemas/receipt.schema.json").read_text())

HOSTILE = "../../etc/pass wd"
"""An item id no file name may follow."""

WORKFLOW = f"""
name: receipts
map:
  items:
    - {{id: plain, f: p}}
    - {{id: flaky, f: f}}
    - {{id: dead, f: d}}
    - {{id: "{HOSTILE}", f: h}}
  id: "${{item.id}}"
  retry: {{max_attempts: 2, initial: 0s, jitter: false, retry_on: [rate_limited]}}
  agent_template:
    - run: |
        mkdir -p out
        printf 'made by %s\\n' "$ENGINE_ITEM_ID" > "out/${{item.f}}.txt"
      artifacts: ["out/${{item.f}}.txt"]
    - run: {MOCK} "${{item.id}}"
      output: json
"""

SCRIPT = {
    "items": {
        "flaky": [{"rate_limit": True}, {"json": {"n": 2, "word": "second"}}],
        "dead": {"fail": "never works"},
    },
    "default": {"json": {"n": 1}},
}


def _receipts(result: RunResult) -> dict[str, Receipt]:
    directory = result.run_dir / RECEIPTS_DIR
    out = {}
    for path in sorted(directory.glob("*.json")):
        jsonschema.validate(json.loads(path.read_bytes()), SCHEMA)
        receipt = msgspec.json.decode(path.read_bytes(), type=Receipt)
        assert path.name == receipt_name(receipt.item)
        out[receipt.item] = receipt
    return out


def _verify(result: RunResult, *args: str) -> tuple[int, str, str]:
    done = engine_in_process("audit", "verify", str(result.run_dir), *args)
    return done.returncode, done.stdout, done.stderr


def _run(tmp_path: Path) -> RunResult:
    write_script(tmp_path, SCRIPT)
    wf = write_workflow(tmp_path, WORKFLOW)
    result = run_workflow(wf, tmp_path / "home", max_parallel=2)
    assert {i: s.status for i, s in result.projections.items.items.items()} == {
        "plain": "succeeded",
        "flaky": "succeeded",
        "dead": "dead",
        HOSTILE: "succeeded",
    }
    return result


def test_every_succeeded_item_has_its_receipt_and_the_dead_none(tmp_path: Path) -> None:
    result = _run(tmp_path)
    receipts = _receipts(result)
    assert sorted(receipts) == sorted(["plain", "flaky", HOSTILE])  # none for the dead item
    every = records(result)
    for item, receipt in receipts.items():
        dispatched = [r for r in every if r.type == "item.dispatched" and r.data.item == item]
        [succeeded] = [r for r in every if r.type == "item.succeeded" and r.data.item == item]
        assert receipt.run == result.run_id
        assert receipt.attempts == len(dispatched) == (2 if item == "flaky" else 1)
        assert receipt.first_seq == dispatched[0].seq and receipt.last_seq == succeeded.seq
        assert receipt.idempotency_key == dispatched[-1].data.idempotency_key != ""
        assert receipt.head_hash == succeeded.hash
        canonical = json.dumps(succeeded.data.result, sort_keys=True, separators=(",", ":"))
        assert receipt.result_digest == f"sha256:{hashlib.sha256(canonical.encode()).hexdigest()}"
        # The artifacts of the succeeding attempt only, with the files' own digests.
        [artifact] = receipt.artifacts
        content = (tmp_path / artifact.path).read_bytes()
        assert content == f"made by {item}\n".encode()
        assert artifact.sha256 == f"sha256:{hashlib.sha256(content).hexdigest()}"
        assert artifact.size == len(content)
    assert receipts["flaky"].result_digest != receipts["plain"].result_digest
    # Private, like every file of a run, and only receipts in the directory.
    directory = result.run_dir / RECEIPTS_DIR
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in directory.iterdir()} == {0o600}
    assert sorted(p.name for p in directory.iterdir()) == sorted(map(receipt_name, receipts))

    code, out, err = _verify(result)
    assert code == 0, out + err
    assert "ok receipts: 3 checked, each matches the ledger" in out
    data = json.loads(_verify(result, "--json")[1])
    assert data["ok"] is True
    assert data["receipts"] == {"checked": 3, "succeeded": 3, "problems": [], "directory": True}


def test_receipt_names_are_safe_distinct_and_readable() -> None:
    names = [receipt_name(i) for i in ["a", "A", "a/b", "a_b", "", ".", "..", HOSTILE, "é" * 90]]
    assert len(set(names)) == len(names)
    for name in names:
        assert "/" not in name and not name.startswith(".") and name.endswith(".json")
        assert len(name) <= 40 + 1 + 16 + 5
    assert receipt_name("src/main.py").startswith("src_main.py-")


def test_verify_names_each_receipt_that_does_not_match_the_ledger(tmp_path: Path) -> None:
    result = _run(tmp_path)
    directory = result.run_dir / RECEIPTS_DIR
    edited = directory / receipt_name("flaky")
    data = json.loads(edited.read_text())
    data["attempts"] = 1  # a hand edit: "it worked the first time"
    edited.write_text(json.dumps(data))
    (directory / receipt_name("plain")).unlink()
    (directory / receipt_name(HOSTILE)).write_text("{not json")
    forged = msgspec.json.decode(
        msgspec.json.encode(_receipts_of(edited) | {"item": "dead", "last_seq": 3}), type=Receipt
    )
    (directory / receipt_name("dead")).write_bytes(msgspec.json.encode(forged))
    # A receipt "from the future" (past the ledger's end) of a run nobody runs: forged too.
    ahead = msgspec.structs.replace(forged, item="ghost", last_seq=10**6)
    (directory / receipt_name("ghost")).write_bytes(msgspec.json.encode(ahead))

    code, out, err = _verify(result)
    assert code == 1, out + err
    lines = [line for line in err.splitlines() if line.startswith("RECEIPT ")]
    assert len(lines) == 5, err
    assert any(f"{receipt_name('ghost')}: a receipt of item 'ghost'" in li for li in lines)
    assert any(f"{receipt_name('flaky')}: item 'flaky': attempts differs" in li for li in lines)
    assert any("item 'plain' succeeded (seq " in li and "has no receipt" in li for li in lines)
    assert any(f"{receipt_name(HOSTILE)}: not a receipt" in li for li in lines)
    assert any(
        f"{receipt_name('dead')}: a receipt of item 'dead', which has no success" in li
        for li in lines
    )
    assert "RECEIPTS: 5 problems in 4 receipts of 3 succeeded items" in err
    report = json.loads(_verify(result, "--json")[1])
    assert report["ok"] is False and report["receipts"]["checked"] == 4
    assert len(report["receipts"]["problems"]) == 5


def _receipts_of(path: Path) -> dict[str, object]:
    loaded: dict[str, object] = json.loads(path.read_text())
    return loaded


def test_a_resume_writes_the_receipts_a_killed_engine_left_unwritten(tmp_path: Path) -> None:
    """An engine killed between a success's append and its receipt's write leaves the
    receipt missing (made here by deleting it): the next engine to run the run writes it."""
    result = _run(tmp_path)
    directory = result.run_dir / RECEIPTS_DIR
    kept = {p.name: p.read_bytes() for p in directory.iterdir()}
    (directory / receipt_name("plain")).unlink()
    (directory / receipt_name("flaky")).unlink()
    assert _verify(result)[0] == 1
    write_script(tmp_path, {**SCRIPT, "items": {"dead": {"json": {"n": 3}}}})
    resumed = asyncio.run(resume_run(result.run_dir, RunOptions(include_dlq=True)))
    assert resumed.status == "completed", resumed.reason
    assert_replays(resumed)
    after = {p.name: p.read_bytes() for p in directory.iterdir()}
    assert {n: after[n] for n in kept} == kept  # the very same bytes, written again
    dead = msgspec.json.decode(after[receipt_name("dead")], type=Receipt)
    first = [r for r in records(resumed, "item.dispatched") if r.data.item == "dead"]
    assert dead.attempts == 2 and dead.first_seq == first[0].seq  # across both sessions
    assert _verify(resumed)[0] == 0


def test_a_run_made_before_receipts_is_noted_not_failed(tmp_path: Path) -> None:
    result = _run(tmp_path)
    for path in (result.run_dir / RECEIPTS_DIR).iterdir():
        path.unlink()
    (result.run_dir / RECEIPTS_DIR).rmdir()
    code, out, err = _verify(result)
    assert code == 0, out + err
    assert "note: no receipts/ directory: the receipts of 3 succeeded items are not checked" in err


ISOLATED = """
name: isolated-receipts
map:
  items: [a, b]
  id: "${item}"
  isolation: worktree
  agent_template:
    - run: |
        echo "written by $ENGINE_ITEM_ID" > "$ENGINE_ITEM_ID.txt"
        git add -A && git commit -q -m "item $ENGINE_ITEM_ID"
      commit_required: true
"""


@pytest.mark.usefixtures("own_git")
def test_an_isolated_item_gets_its_receipt_once_its_work_has_landed(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    wf = write_workflow(repo, ISOLATED)
    git(repo, "add", "wf.yml")
    git(repo, "commit", "-q", "-m", "workflow")
    result = run_workflow(wf, tmp_path / "home", max_parallel=2)
    assert result.status == "completed"
    assert_replays(result)
    receipts = _receipts(result)
    assert sorted(receipts) == ["a", "b"]
    every = records(result)
    for item, receipt in receipts.items():
        [merged] = [r for r in every if r.type == "worktree.merged" and r.data.item == item]
        [succeeded] = [r for r in every if r.type == "item.succeeded" and r.data.item == item]
        assert merged.seq < receipt.last_seq == succeeded.seq
        assert receipt.head_hash == succeeded.hash
    assert "ok receipts: 2 checked" in _verify(result)[1]


def test_a_receipt_that_cannot_be_written_is_said_and_the_run_goes_on(tmp_path: Path) -> None:
    result = _run(tmp_path)
    directory = result.run_dir / RECEIPTS_DIR
    for path in directory.iterdir():
        path.unlink()
    directory.rmdir()
    directory.write_text("a file where the receipts' directory should be\n")
    write_script(tmp_path, {**SCRIPT, "items": {"dead": {"json": {"n": 3}}}})
    said: list[str] = []
    options = RunOptions(include_dlq=True, warn=said.append)
    resumed = asyncio.run(resume_run(result.run_dir, options))
    assert resumed.status == "completed", resumed.reason
    at_start = [line for line in said if line.startswith("engine: cannot write the receipts")]
    live = [line for line in said if line.startswith("engine: cannot write a receipt")]
    assert len(at_start) == 1 and f"under {directory}: [Errno 20] Not a directory" in at_start[0]
    assert len(live) == 1 and "a resume writes them" in live[0]  # the dead item's, now done
    assert resumed.projections.items.counts["succeeded"] == 4
