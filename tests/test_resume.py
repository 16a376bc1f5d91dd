"""`engine resume`: setup not run twice (unless changed), captures restored, refusals, warnings."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner, Result

from cli.main import cli
from ledger import LedgerReader
from projections.replay import replay
from tests.engine_helpers import run_workflow, write_workflow

WORKFLOW = """
name: resumable
setup:
  - run: |
      echo once >> setup.log; echo '{"prefix": "P"}'
    capture_output: conf
    capture_format: json
map:
  items: [a, b, c]
  id: "${item}"
  max_parallel: 2
  max_failures: 1
  retry: {max_attempts: 1}
  agent_template:
    - run: |
        [ "${item}" = b ] && [ ! -f fixed ] && { echo "b is broken" >&2; exit 1; }
        echo "${conf.prefix}-${item}"
      output: text
reduce:
  - run: echo "reduced ${map.successful}" >> reduce.log
"""


def _engine(home: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--home", str(home), *args], catch_exceptions=False)


def test_resume_skips_setup_restores_captures_and_runs_reduce(tmp_path: Path) -> None:
    wf = write_workflow(tmp_path, WORKFLOW)
    home = tmp_path / "home"
    first = run_workflow(wf, home)
    assert first.status == "failed"  # max_failures: b failed
    assert not (tmp_path / "reduce.log").exists()
    (tmp_path / "fixed").write_text("")
    resumed = _engine(home, "resume", first.run_id, "--include-dlq", "--no-progress")
    assert resumed.exit_code == 0, resumed.stderr
    assert (tmp_path / "setup.log").read_text() == "once\n"  # not run again
    assert (tmp_path / "reduce.log").read_text() == "reduced 3\n"
    records = list(LedgerReader(first.run_dir / "ledger.ndjson").records())
    results = {r.data.item: r.data.result for r in records if r.type == "item.succeeded"}
    assert results == {"a": "P-a", "b": "P-b", "c": "P-c"}  # the capture came back
    assert [r.type for r in records].count("step.started") == 2  # setup once, reduce once
    assert any(r.type == "item.requeued" and r.data.item == "b" for r in records)
    again = _engine(home, "resume", first.run_id)
    assert again.exit_code == 2 and "is completed" in again.stderr
    assert "engine run WORKFLOW" in again.stderr


def test_changed_workflow_is_refused_unless_allowed_and_workspace_changes_warn(
    tmp_path: Path,
) -> None:
    wf = write_workflow(
        tmp_path,
        """
        name: changing
        map:
          items: [a, b]
          max_parallel: 2
          agent_template:
            - run: cat input.txt > /dev/null && exit 1
        """,
    )
    (tmp_path / "input.txt").write_text("v1\n")
    home = tmp_path / "home"
    first = run_workflow(wf, home)
    assert first.status == "completed" and first.exit_code == 1
    run_dir = first.run_dir
    ledger = run_dir / "ledger.ndjson"
    assert replay(ledger).run.status == "completed"  # with two dead items to retry
    wf.write_text(wf.read_text().replace("max_parallel: 2", "max_parallel: 3"))
    refused = _engine(home, "dlq", "retry", first.run_id, "--all")
    assert refused.exit_code == 2
    assert "the workflow changed" in refused.stderr
    assert "map.max_parallel: 2 -> 3" in refused.stderr and "--allow-changed" in refused.stderr
    (tmp_path / "input.txt").write_text("v2\n")
    wf.write_text(wf.read_text().replace("max_parallel: 3", "max_parallel: 2"))
    warned = _engine(home, "dlq", "retry", first.run_id, "--all", "--no-progress")
    assert warned.exit_code == 1  # they fail again
    assert "warning: the workspace changed" in warned.stderr and "input.txt" in warned.stderr
    wf.write_text(wf.read_text().replace("max_parallel: 2", "max_parallel: 3"))
    allowed = _engine(home, "resume", first.run_id, "--allow-changed", "--include-dlq")
    assert allowed.exit_code == 1, allowed.stderr
    resumed = [r.data for r in LedgerReader(ledger).records() if r.type == "run.resumed"]
    assert resumed[-1].allow_changed and resumed[-1].changes == ["map.max_parallel: 2 -> 3"]
    assert (run_dir / "workflow.yml").read_text() == wf.read_text()


def test_a_run_stopped_before_run_created_is_created_on_the_next_start(tmp_path: Path) -> None:
    from ledger.writer import LedgerWriter

    wf = write_workflow(
        tmp_path,
        """
        name: early
        map:
          items: [1, 2]
          agent_template:
            - run: "true"
        """,
    )
    home = tmp_path / "home"
    # What a kill right after taking the lock leaves: a ledger with lock.acquired only.
    LedgerWriter.open(home / "runs" / "early-1", "early-1", create=True).close()
    refused = _engine(home, "resume", "early-1")
    assert refused.exit_code == 2 and "stopped before it was created" in refused.stderr
    done = _engine(home, "run", str(wf), "--run-id", "early-1", "--no-progress")
    assert done.exit_code == 0, done.stderr
    types = [r.type for r in LedgerReader(home / "runs" / "early-1" / "ledger.ndjson").records()]
    assert types.count("run.created") == 1 and types[-1] == "run.completed"


def test_a_hand_made_ledger_resumes_interrupted_then_pending_then_dead_each_once(
    tmp_path: Path,
) -> None:
    from engine.workflow.load import load_workflow
    from ledger.events import (
        ItemDeadLettered,
        ItemDispatched,
        ItemEnqueued,
        ItemFailed,
        MapEnqueued,
        RunCreated,
        RunStarted,
    )
    from ledger.writer import LedgerWriter

    wf = write_workflow(
        tmp_path,
        """
        name: handmade
        map:
          items: [pending, interrupted, dead]
          id: "${item}"
          max_parallel: 1
          agent_template:
            - run: echo "${item} $ENGINE_ATTEMPT" >> ran.log
        """,
    )
    loaded = load_workflow(wf)
    run_dir = tmp_path / "home" / "runs" / "hm"
    writer = LedgerWriter.open(run_dir, "hm", create=True, command="test")
    (run_dir / "workflow.yml").write_text(loaded.text)
    writer.append_many(
        [
            RunCreated(workflow_name="handmade", workflow_path=str(loaded.path),
                       workflow_hash=loaded.hash, workflow=loaded.text),
            RunStarted(pid=1, host="h", max_parallel=1),
            *(ItemEnqueued(item=i, index=n, value=i)
              for n, i in enumerate(["pending", "interrupted", "dead"])),
            MapEnqueued(total=3),
            ItemDispatched(item="dead", attempt=1, idempotency_key="ik:x"),
            ItemFailed(item="dead", attempt=1, error_type="command_failed", signature="s",
                       message="boom"),
            ItemDeadLettered(item="dead", attempt=1, error_type="command_failed",
                             signature="s", reason="not retryable"),
            ItemDispatched(item="interrupted", attempt=1, idempotency_key="ik:y"),
        ]
    )  # fmt: skip
    writer.close()
    resumed = _engine(tmp_path / "home", "resume", "hm", "--include-dlq", "--no-progress")
    assert resumed.exit_code == 0, resumed.stderr
    assert (tmp_path / "ran.log").read_text().splitlines() == [
        "interrupted 2",
        "pending 1",
        "dead 2",
    ]
    records = list(LedgerReader(run_dir / "ledger.ndjson").records())
    interrupted = [
        r.data for r in records if r.type == "item.failed" and r.data.item == "interrupted"
    ]
    assert [(f.attempt, f.error_type) for f in interrupted] == [(1, "interrupted")]
    assert [r.data.item for r in records if r.type == "item.requeued"] == ["dead"]
    assert replay(run_dir / "ledger.ndjson").items.counts["succeeded"] == 3


def test_variables_given_again_on_a_resume_are_recorded(tmp_path: Path) -> None:
    wf = write_workflow(
        tmp_path,
        """
        name: vars
        secrets: [TOKEN]
        map:
          items: [a]
          retry: {max_attempts: 1}
          agent_template:
            - run: '[ "${env.MODE}" = fixed ]'
        """,
    )
    first = run_workflow(wf, tmp_path / "home", variables={"MODE": "broken"})
    assert first.projections.items.counts["dead"] == 1
    again = _engine(
        tmp_path / "home", "run", str(wf), "--run-id", first.run_id, "--var", "MODE=fixed",
        "--var", "TOKEN=t0ps3cret", "--no-progress",
    )  # fmt: skip
    assert again.exit_code == 2 and "is completed" in again.stderr  # nothing to take up
    resumed = _engine(tmp_path / "home", "resume", first.run_id, "--include-dlq", "--no-progress")
    assert resumed.exit_code == 1  # the recorded MODE=broken still applies
    import asyncio

    from engine.run import RunOptions, resume_run

    result = asyncio.run(
        resume_run(first.run_dir, RunOptions(include_dlq=True,
                                             variables={"MODE": "fixed", "TOKEN": "t0ps3cret"}))
    )  # fmt: skip
    assert result.exit_code == 0
    last = [r.data for r in LedgerReader(first.run_dir / "ledger.ndjson").records()
            if r.type == "run.resumed"][-1]  # fmt: skip
    assert last.vars == {"MODE": "fixed", "TOKEN": "***"}
    assert replay(first.run_dir / "ledger.ndjson").run.vars["MODE"] == "fixed"
    assert b"t0ps3cret" not in (first.run_dir / "ledger.ndjson").read_bytes()


CHANGING_SETUP = """
name: changing-setup
setup:
  - run: echo zero >> setup.log
  - run: echo one >> setup.log; echo v1
    capture_output: version
  - run: test -e go && echo "two ${version}" >> setup.log
map:
  items: [a]
  agent_template:
    - run: "true"
"""


def test_a_changed_setup_step_runs_again_with_the_steps_after_it(tmp_path: Path) -> None:
    # Setup steps are skipped on a resume only while they are the steps that
    # succeeded: same place, same command, same capture. Step 2 changes (after
    # step 3 failed): step 1 stays done; steps 2 and 3 run (3 sees the new capture).
    wf = write_workflow(tmp_path, CHANGING_SETUP)
    home = tmp_path / "home"
    first = run_workflow(wf, home)
    assert first.status == "failed" and "setup step 3" in (first.reason or "")
    assert (tmp_path / "setup.log").read_text() == "zero\none\n"
    wf.write_text(
        wf.read_text().replace("echo one >> setup.log; echo v1", "echo ONE >> setup.log; echo v2")
    )
    (tmp_path / "go").write_text("")
    resumed = _engine(home, "resume", first.run_id, "--allow-changed", "--no-progress")
    assert resumed.exit_code == 0, resumed.stderr
    assert (tmp_path / "setup.log").read_text() == "zero\none\nONE\ntwo v2\n"
    assert "setup step 2" in resumed.stderr and "changed since it succeeded" in resumed.stderr
    records = list(LedgerReader(first.run_dir / "ledger.ndjson").records())
    changes = next(r.data.changes for r in records if r.type == "run.resumed")
    assert changes[-1] == (
        "setup[1]: its command changed since it succeeded: "
        "it runs again, and the setup steps after it"
    )
    started = [(r.data.phase, r.data.index) for r in records if r.type == "step.started"]
    assert started == [("setup", 0), ("setup", 1), ("setup", 2), ("setup", 1), ("setup", 2)]


def test_an_unchanged_setup_is_skipped_after_an_allowed_change_elsewhere(tmp_path: Path) -> None:
    wf = write_workflow(tmp_path, CHANGING_SETUP)
    home = tmp_path / "home"
    first = run_workflow(wf, home)
    assert first.status == "failed"
    wf.write_text(wf.read_text().replace("items: [a]", "items: [a, b]"))
    (tmp_path / "go").write_text("")
    resumed = _engine(home, "resume", first.run_id, "--allow-changed", "--no-progress")
    assert resumed.exit_code == 0, resumed.stderr
    assert (tmp_path / "setup.log").read_text() == "zero\none\ntwo v1\n"  # the capture restored
    assert "changed since it succeeded" not in resumed.stderr
    records = list(LedgerReader(first.run_dir / "ledger.ndjson").records())
    changes = next(r.data.changes for r in records if r.type == "run.resumed")
    assert changes == ['map.items: ["a"] -> ["a", "b"]']
