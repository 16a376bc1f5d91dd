"""`engine audit report`'s cost section: what the mock agent said it spent, in md, json, html."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from cli.main import cli
from engine.views import report_cost
from tests.engine_helpers import MOCK, run_workflow, write_script, write_workflow

COSTS = {f"i{n:02d}": round(0.011 * (n + 1), 3) for n in range(6)}
"""Each item's scripted cost on the attempt that succeeds."""

TOP = 4
"""The report's top items, for this test (10 in the report): two of the seven are left out."""

RETRIED = {"i05": 0.3, "i02": 0.05}
"""Items whose first attempt fails (costing this), then succeed."""

DEAD = 0.04
"""What each attempt of the item that always fails costs."""

REDUCE = 0.125
"""The reduce step's agent (no item: the script's default)."""


def _script() -> dict[str, Any]:
    items: dict[str, Any] = {}
    for n, (item, cost) in enumerate(COSTS.items()):
        ok = {
            "ok": f"done {item}",
            "cost": cost,
            "turns": 1 + n % 3,
            "tokens": {"input": 100, "output": 10 + n, "cache_read": 300, "cache_creation": 50},
        }
        first = RETRIED.get(item)
        items[item] = [{"fail": "API Error: 500", "cost": first}, ok] if first else ok
    items["broken"] = {"fail": "API Error: 500", "cost": DEAD, "subtype": "error_max_turns"}
    return {"items": items, "default": {"ok": "summary", "cost": REDUCE, "turns": 1}}


WORKFLOW = f"""
name: costly
agent: {{command: "{MOCK}", output: claude-json}}
map:
  items: {json.dumps([*COSTS, "broken"])}
  id: "${{item}}"
  max_parallel: 4
  retry: {{max_attempts: 2, initial: 10ms, max: 10ms, jitter: false}}
  agent_template:
    - claude: "review ${{item}}"
reduce:
  - claude: "summarize"
"""

PLAIN = """
name: plain
map:
  items: [a, b]
  id: "${item}"
  agent_template:
    - run: echo fine
"""


def _engine(home: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--home", str(home), *args], catch_exceptions=False)


def _reports(tmp_path: Path, workflow: str) -> tuple[dict[str, Any], str, str]:
    """The run's report as json, Markdown and HTML."""
    wf = write_workflow(tmp_path / "wf", workflow)
    write_script(tmp_path / "wf", _script())
    home = tmp_path / "home"
    result = run_workflow(wf, home)
    run = result.run_id
    as_json = _engine(home, "audit", "report", run, "--format", "json")
    md = _engine(home, "audit", "report", run)
    html = _engine(home, "audit", "report", run, "--format", "html")
    for out in (as_json, md, html):
        assert out.exit_code == 0, out.output
    return json.loads(as_json.output), md.output, html.output


def test_the_cost_section_has_what_the_agent_reported_in_every_format(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(report_cost, "TOP_ITEMS", TOP)
    report, md, html = _reports(tmp_path, WORKFLOW)
    items = {i: c + RETRIED.get(i, 0.0) for i, c in COSTS.items()} | {"broken": 2 * DEAD}
    wasted = sum(RETRIED.values()) + 2 * DEAD
    total = sum(items.values()) + REDUCE
    cost = report["outcome"]["cost"]
    assert round(cost["cost_usd"], 2) == round(total, 2)
    assert round(cost["steps_usd"], 2) == round(REDUCE, 2)
    assert round(cost["wasted_usd"], 2) == round(wasted, 2)
    succeeded = sorted(c for i, c in items.items() if i != "broken")
    assert round(cost["cost_per_item_max_usd"], 2) == round(succeeded[-1], 2)
    assert cost["agent_calls"] == len(COSTS) + len(RETRIED) + 2 + 1
    assert cost["input_tokens"] == 100 * len(COSTS)
    assert cost["cache_read_input_tokens"] == 300 * len(COSTS)
    assert cost["cache_hit_ratio"] == round(300 / 450, 4)
    top = cost["top_items"]
    ranked = sorted(items, key=lambda i: (-items[i], i))
    assert [t["item"] for t in top] == ranked[:TOP]
    assert top[0] == {
        "item": "i05",
        "status": "succeeded",
        "attempts": 2,
        "cost_usd": round(items["i05"], 6),
    }
    by_type = {e["error_type"]: e for e in cost["by_error_type"]}
    assert round(by_type["api_error"]["cost_usd"], 2) == round(sum(RETRIED.values()), 2)
    assert round(by_type["resource_exhausted"]["cost_usd"], 2) == round(2 * DEAD, 2)
    assert by_type["resource_exhausted"]["failed_attempts"] == 2
    # The same figures, as Markdown and HTML show them (dollars to 4 places).
    assert f"| total cost | ${total:.4f} |" in md
    assert f"| setup, reduce and merge steps | ${REDUCE:.4f} |" in md
    assert f"| wasted (failed attempts and retries) | ${wasted:.4f} |" in md
    assert f"| i05 | succeeded | 2 | ${items['i05']:.4f} |" in md
    assert f"| resource_exhausted | 2 | ${2 * DEAD:.4f} |" in md
    assert "| cache hit ratio (of input tokens) | 66.7% |" in md
    assert md.index("## Cost") < md.index("### Most expensive items") < md.index("## Failures")
    assert f"<td>total cost</td><td>${total:.4f}</td>" in html
    assert f"<td>i05</td><td>succeeded</td><td>2</td><td>${items['i05']:.4f}</td>" in html
    assert "<h3>Cost by error type</h3>" in html
    assert f"### Most expensive items (top {TOP})" in md
    assert all(f"| {i} |" not in md.split("## Items")[0] for i in ranked[TOP:])


def test_a_run_without_agent_usage_has_no_cost_figures(tmp_path: Path) -> None:
    report, md, html = _reports(tmp_path, PLAIN)
    assert report["outcome"]["cost"] is None
    assert "## Cost\n\nno agent usage recorded\n" in md
    assert "total cost" not in md and "Most expensive" not in md
    assert "no agent usage recorded" in html and "total cost" not in html
