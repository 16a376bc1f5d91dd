"""``validate`` in real runs: validators and repairs as processes, each round in the ledger,
the DLQ for work that stays incomplete, and ``engine query`` over the rounds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from cli.main import cli
from tests.engine_helpers import records, run_workflow, write_workflow

VALIDATED = """
name: {name}
map:
  items: [a, b]
  id: "${{item}}"
  max_parallel: 2
  agent_template:
    - run: echo draft > "work-${{item}}.txt"
      validate:
        steps:
          - run: |
              if grep -q done "work-${{item}}.txt"
              then echo '{{"completion_percentage": 100}}'
              else
                echo checking >&2
                echo '{{"completion_percentage": {partial}, "missing": ["done"]}}'
              fi
{incomplete}
    - run: cat "work-${{item}}.txt"
      output: text
"""

REPAIR = """\
        on_incomplete:
          steps:
            - run: echo "${validation.missing} at ${validation.completion}" >> "work-${item}.txt"
"""


def _rounds(data: Any) -> list[tuple[int, int, float, bool]]:
    return [(r.step, r.round, r.completion, r.complete) for r in data.validations]


def test_work_reported_half_done_is_repaired_and_both_rounds_are_in_the_ledger(
    tmp_path: Path,
) -> None:
    wf = write_workflow(tmp_path, VALIDATED.format(name="v", partial=50, incomplete=REPAIR))
    result = run_workflow(wf, tmp_path / "home")
    assert result.status == "completed", result.reason
    succeeded = {r.data.item: r.data for r in records(result, "item.succeeded")}
    assert set(succeeded) == {"a", "b"}
    for item, data in succeeded.items():
        assert _rounds(data) == [(0, 1, 50.0, False), (0, 2, 100.0, True)]
        assert data.validations[0].threshold == 100.0
        # The repair read ${validation.*}; the next step saw the repaired work.
        assert data.result == 'draft\n["done"] at 50'
        assert (tmp_path / f"work-{item}.txt").read_text() == 'draft\n["done"] at 50\n'

    rows = CliRunner().invoke(
        cli,
        [
            "--home",
            str(tmp_path / "home"),
            "query",
            result.run_id,
            "--sql",
            "SELECT data->>'item' AS item, CAST(r->>'round' AS INTEGER) AS round, "
            "CAST(r->>'completion' AS DOUBLE) AS completion, r->>'complete' AS complete "
            "FROM events, unnest(CAST(data->'validations' AS JSON[])) AS t(r) "
            "WHERE type = 'item.succeeded' ORDER BY item, round",
            "--format",
            "json",
        ],
        catch_exceptions=False,
    )
    assert rows.exit_code == 0, rows.output
    assert json.loads(rows.output) == [
        {"item": "a", "round": 1, "completion": 50.0, "complete": "false"},
        {"item": "a", "round": 2, "completion": 100.0, "complete": "true"},
        {"item": "b", "round": 1, "completion": 50.0, "complete": "false"},
        {"item": "b", "round": 2, "completion": 100.0, "complete": "true"},
    ]


def test_work_that_stays_incomplete_goes_to_the_dlq_as_validation_failed(tmp_path: Path) -> None:
    never = REPAIR.replace('>> "work-${item}.txt"', "> /dev/null")  # the repair changes nothing
    wf = write_workflow(tmp_path, VALIDATED.format(name="v", partial=80, incomplete=never))
    result = run_workflow(wf, tmp_path / "home")
    assert result.exit_code == 1
    failed = {r.data.item: r.data for r in records(result, "item.failed")}
    assert set(failed) == {"a", "b"}  # validation_failed is not retried by default
    for data in failed.values():
        assert data.error_type == "validation_failed"
        assert data.message == "step 1 incomplete: 80% < 100% after 2 rounds (validate)"
        assert data.exit_code == 0
        assert _rounds(data) == [(0, 1, 80.0, False), (0, 2, 80.0, False)]
    dead = records(result, "item.dead_lettered")
    assert sorted(r.data.item for r in dead) == ["a", "b"]
    assert {r.data.error_type for r in dead} == {"validation_failed"}
    assert not records(result, "item.succeeded")


def test_fail_false_lets_incomplete_work_carry_on(tmp_path: Path) -> None:
    carry = REPAIR.replace("          steps:", "          fail: false\n          steps:")
    wf = write_workflow(tmp_path, VALIDATED.format(name="v", partial=80, incomplete=carry))
    text = wf.read_text().replace("grep -q done", "grep -q never-there")
    wf.write_text(text)
    result = run_workflow(wf, tmp_path / "home")
    assert result.status == "completed", result.reason
    for record in records(result, "item.succeeded"):
        assert _rounds(record.data) == [(0, 1, 80.0, False), (0, 2, 80.0, False)]


def test_setup_and_reduce_steps_record_their_rounds(tmp_path: Path) -> None:
    wf = write_workflow(
        tmp_path,
        """
        name: sr
        setup:
          - run: echo setup
            validate:
              steps:
                - run: |
                    echo '{"completion_percentage": 100}' > setup-check.json
              result_file: setup-check.json
        reduce:
          - run: echo reduce
            validate:
              threshold: 90
              steps:
                - run: |
                    echo '{"completion": 40}'
        """,
    )
    result = run_workflow(wf, tmp_path / "home")
    assert result.status == "failed"
    [setup] = records(result, "step.succeeded")
    assert setup.data.phase == "setup" and _rounds(setup.data) == [(0, 1, 100.0, True)]
    [reduce] = records(result, "step.failed")
    assert reduce.data.phase == "reduce"
    assert reduce.data.error_type == "validation_failed"
    assert reduce.data.message == "step 1 incomplete: 40% < 90% after 1 round (validate)"
    assert _rounds(reduce.data) == [(0, 1, 40.0, False)]
    assert result.reason is not None and "40% < 90%" in result.reason
