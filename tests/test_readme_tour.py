"""The README's tour names what the quickstart's dead-letter queue holds.

The quickstart is designed (examples/quickstart-agent.yml) so that some items
fail for good; the tour's `dlq show` and `dlq retry --error-type` lines must
select them, or they exit 2 on the very run the README has just made.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from engine.map.classify import classify
from engine.workflow.load import load_workflow

ROOT = Path(__file__).parent.parent


def _tour() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## A 30-second tour", 1)[1].split("```")[1]
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def _dead_by_design() -> dict[str, str]:
    """Items the quickstart's agent fails at every attempt, with their error types."""
    spec = load_workflow(ROOT / "examples" / "quickstart.yml").spec
    assert spec.map is not None
    script = yaml.safe_load((ROOT / "examples" / "quickstart-agent.yml").read_text())
    dead = {}
    for item, behaviour in script["items"].items():
        attempts = behaviour if isinstance(behaviour, list) else [behaviour]
        if "fail" not in attempts[-1]:
            continue  # it succeeds once it is retried
        last = attempts[-1]
        c = classify(
            exit_code=last.get("exit", 1),
            signal=None,
            stderr_tail=last["fail"],
            stdout_tail="",
            rules=spec.map.classify,
        )
        dead[item] = c.error_type
    return dead


def test_the_tour_selects_what_the_quickstart_dead_letters() -> None:
    dead = _dead_by_design()
    assert dead, "the quickstart is meant to leave items in the dead-letter queue"
    tour = _tour()
    (show,) = [line for line in tour if line.startswith("engine dlq show ")]
    assert show.split()[-1] in dead, show
    (retry,) = [line for line in tour if line.startswith("engine dlq retry ")]
    wanted = re.search(r"--error-type (\S+)", retry)
    assert wanted is not None and wanted.group(1) in set(dead.values()), (retry, dead)
    items = [re.search(r"--item (\S+)", line) for line in tour]
    assert all(m.group(1) in dead for m in items if m is not None)
    (validate,) = [line for line in tour if line.startswith("engine validate ")]
    assert (ROOT / validate.split()[-1]).is_file(), validate
