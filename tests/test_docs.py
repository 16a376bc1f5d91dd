"""The docs' independent verifier works: the format spec is precise enough."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import FIXTURE_LEDGER

DOCS = Path(__file__).parent.parent / "docs"


def _verifier_snippet() -> str:
    text = (DOCS / "ledger-format.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    return next(b for b in blocks if "hashlib" in b)


def test_independent_verifier_accepts_the_fixture(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copyfile(FIXTURE_LEDGER, tmp_path / "ledger.ndjson")
    monkeypatch.chdir(tmp_path)
    exec(compile(_verifier_snippet(), "ledger-format.md", "exec"), {})


def test_independent_verifier_rejects_tampering(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = FIXTURE_LEDGER.read_bytes().replace(b'"b.py"', b'"B.py"', 1)
    (tmp_path / "ledger.ndjson").write_bytes(data)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AssertionError):
        exec(compile(_verifier_snippet(), "ledger-format.md", "exec"), {})


def test_cli_reference_is_current() -> None:
    from cli.docgen import render_cli_reference

    assert (DOCS / "cli.md").read_text() == render_cli_reference(), (
        "docs/cli.md is stale; run `make docs` and commit it"
    )


def test_variables_table_is_the_declared_one() -> None:
    """docs/workflow.md lists the variables exactly as engine.workflow.variables declares them."""
    from engine.workflow.variables import docs_table

    text = (DOCS / "workflow.md").read_text()
    section = text.split("## Variables\n\n", 1)[1]
    table = section[: section.index("\n\n") + 1]
    assert table == docs_table()


def test_contexts_hold_the_declared_variables() -> None:
    """What the engine puts in an item's context is what validation lets a template use."""
    from engine.workflow.variables import item_context, known_roots, last_step, run_context

    base = run_context("r", {"A": "1"})
    assert set(base) == known_roots("setup") - {"last", "shell", "claude"}
    context = item_context(base, item={"x": 1}, item_id="i", index=0, total=1, attempt=1)
    last_step(context, "out", 0, stderr="err", kind="claude")
    last_step(context, "out", 0, stderr="err", kind="shell")
    assert set(context) == known_roots("map")
    assert context["last"] == context["shell"] == {"output": "out", "stderr": "err", "exit_code": 0}
    assert context["claude"] == {"output": "out", "exit_code": 0}
