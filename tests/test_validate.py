"""`engine validate`: FILE:LINE: field: what (fix), exit 2; starters from `engine init` run."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ENGINE, FIXTURES
from tests.engine_helpers import records, run_workflow, write_workflow

BROKEN = sorted((FIXTURES / "broken").iterdir())


@pytest.mark.parametrize("path", BROKEN, ids=[p.name for p in BROKEN])
def test_broken_workflows(path: Path, snapshot) -> None:
    proc = subprocess.run(
        [ENGINE, "validate", path.name],
        capture_output=True,
        text=True,
        check=False,
        cwd=path.parent,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert proc.stderr == snapshot


def test_valid_workflow(tmp_path: Path) -> None:
    proc = subprocess.run(
        [ENGINE, "validate", str(Path(__file__).parent.parent / "examples" / "quickstart.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "workflow 'quickstart'" in proc.stdout


@pytest.mark.parametrize("template", ["map-reduce", "agent", "shell"])
def test_init_templates_run_as_written(tmp_path: Path, template: str) -> None:
    subprocess.run(
        [ENGINE, "init", "--template", template, str(tmp_path)], check=True, capture_output=True
    )
    text = (tmp_path / "workflow.yml").read_text()
    assert text.startswith("#")  # commented
    proc = subprocess.run(
        [ENGINE, "--home", str(tmp_path / "home"), "run", "workflow.yml", "--no-progress"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    again = subprocess.run(
        [ENGINE, "init", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert again.returncode == 2 and "already exists" in again.stderr


def test_the_safe_form_of_arithmetic_validates_and_keeps_values_out_of_code(
    tmp_path: Path,
) -> None:
    """The form the refusal names: numbers compute; anything else stops, and is never run."""
    marker = tmp_path / "pwned"
    items = [{"n": "41"}, {"n": f"a[$(touch {marker})]"}]
    path = write_workflow(
        tmp_path,
        f"""\
        name: t
        map:
          items: {json.dumps(items)}
          retry: {{max_attempts: 1}}
          agent_template:
            - run: >-
                n="${{item.n}}"; case $n in ''|*[!0-9]*) exit 2;; esac; echo $((n + 1))
              output: text
            - run: >-
                bash -c 'n="$1"; case $n in ""|*[!0-9]*) exit 2;; esac; echo $((n + 1))' _
                "${{item.n}}"
              output: text
        """,
    )
    proc = subprocess.run(
        [ENGINE, "validate", str(path)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    result = run_workflow(path, tmp_path / "home")
    assert result.projections.items.counts["succeeded"] == 1
    assert result.projections.items.counts["dead"] == 1
    (done,) = records(result, "item.succeeded")
    assert done.data.result == "42"
    assert not marker.exists()
