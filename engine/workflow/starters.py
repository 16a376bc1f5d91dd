"""Starter workflows written by ``engine init``; each runs as written."""

from __future__ import annotations

from pathlib import Path

from ledger.atomic import atomic_write
from ledger.errors import EngineError

__all__ = ["TEMPLATES", "write_template"]

MAP_REDUCE = """\
# A map-reduce workflow: list work items in setup, process each in parallel,
# then summarise. Run it with:  engine run workflow.yml
name: word-count

setup:
  # Setup steps run once, before the map. Here: make the list of items.
  - run: printf '%s\\n' alpha beta gamma delta epsilon > words.txt

map:
  input: words.txt          # one item a line (or a JSON document; see json_path)
  id: "${item}"              # identity for dedup and resume (default: hash of the item)
  max_parallel: 4
  timeout: 1m                # per item, all steps together
  retry: {max_attempts: 3, backoff: exponential, initial: 1s, max: 30s}
  on_item_failure: dlq       # dlq | fail | ignore
  agent_template:
    # ${item} reaches the shell as data, never as code.
    - run: printf '%s' "${item}" | wc -c
      output: text           # the item's result

reduce:
  - run: echo "${map.successful}/${map.total} items done; results in ${map.results_file}"
"""

AGENT = """\
# An agent workflow: one agent call per item, retried when rate limited.
# It uses the built-in mock agent so it runs anywhere; to use a real agent,
# set `agent.command` (e.g. `claude -p`) and list its key under `secrets`.
# `output: claude-json` reads Claude Code's result: the answer, its errors,
# and what each call cost (engine stats, engine query RUN "cost by item").
name: agent-review

agent:
  command: "engine mock-agent --behavior '{\\"ok\\": \\"reviewed\\", \\"cost\\": 0.01}' -p"
  output: claude-json

map:
  items:
    - {path: src/app.py}
    - {path: src/db.py}
    - {path: src/api.py}
  id: "${item.path}"
  max_parallel: 2
  timeout: 10m
  heartbeat: {interval: 10s, hung_after: 5m}
  retry: {max_attempts: 3, backoff: exponential, initial: 2s, max: 1m, jitter: true}
  agent_template:
    - claude: "Review ${item.path} for bugs. Reply with a short summary."
      output: text
  classify:
    - {pattern: "rate.?limit|429", as: rate_limited}

circuit_breaker: {threshold: 5, cooldown: 30s, on: [rate_limited, api_error]}

reduce:
  - run: echo "reviewed ${map.successful} of ${map.total} files"
"""

SHELL = """\
# A shell workflow: run a command over inline items, no setup or reduce.
name: shell-batch

map:
  items: [1, 2, 3, 4, 5, 6, 7, 8]
  max_parallel: 4
  agent_template:
    - argv: [sh, -c, 'echo "square of $1 is $(($1 * $1))"', sh, "${item}"]
      output: text
"""

TEMPLATES = {"map-reduce": MAP_REDUCE, "agent": AGENT, "shell": SHELL}


def write_template(name: str, directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "workflow.yml"
    if path.exists():
        raise EngineError(f"{path} already exists", hint="pick another directory or remove it")
    atomic_write(path, TEMPLATES[name].encode(), mode=0o644)
    return [path]
