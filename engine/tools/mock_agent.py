"""A scripted stand-in for an AI agent, for tests, examples and benchmarks.

``engine mock-agent [--script FILE] [--behavior JSON] [-p PROMPT]`` acts as
the script says for the current item and attempt (``ENGINE_ITEM_ID``,
``ENGINE_ATTEMPT``). A script (YAML or JSON)::

    default: {ok: "looks good"}            # every attempt of other items
    items:
      b.py: [{rate_limit: true}, {ok: "fixed"}]   # attempt 1, then 2 (the last repeats)
    match:
      - {pattern: "^bad-", do: {fail: "validation failed: bad input", exit: 2}}

A behavior is a mapping of:

* ``sleep: SECONDS`` (random between two values with ``[a, b]``), done first;
* ``ok: TEXT`` / ``json: VALUE``: print it and exit 0 (the default);
* ``fail: MESSAGE`` (to stderr) with ``exit: CODE`` (default 1);
* ``rate_limit: true``: a 429 rate-limit error, exit 1;
* ``hang: true``: no output, forever; with ``touch: SECONDS`` it touches
  ``ENGINE_HEARTBEAT_FILE`` that often while hanging;
* ``signal: NAME``: die by that signal (e.g. ``SIGKILL``, ``SIGSEGV``);
* ``echo_prompt: true``: also print the prompt.

``--log FILE`` appends ``start ITEM ATTEMPT TIME`` and ``end ITEM ATTEMPT
TIME`` lines (for tests that count executions).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import yaml

__all__ = ["behavior_for", "main", "perform"]


def behavior_for(script: dict[str, Any], item: str, attempt: int) -> dict[str, Any]:
    choice: Any = None
    items = script.get("items") or {}
    if item in items:
        choice = items[item]
    else:
        for rule in script.get("match") or []:
            if re.search(rule["pattern"], item):
                choice = rule["do"]
                break
    if choice is None:
        choice = script.get("default", {"ok": "done"})
    if isinstance(choice, list):
        if not choice:
            return {"ok": "done"}
        return dict(choice[min(attempt, len(choice)) - 1])
    return dict(choice)


def _log(path: str | None, what: str, item: str, attempt: int) -> None:
    if not path:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"{what} {item} {attempt} {time.time():.6f}\n")
        f.flush()


def perform(
    behavior: dict[str, Any], *, item: str, attempt: int, prompt: str, log: str | None
) -> int:
    """Act out one behavior; returns the exit code (or dies by a signal)."""
    _log(log, "start", item, attempt)
    pause = behavior.get("sleep")
    if isinstance(pause, list):
        pause = random.uniform(float(pause[0]), float(pause[1]))
    if pause:
        time.sleep(float(pause))
    if behavior.get("echo_prompt"):
        print(prompt)
    if behavior.get("hang"):
        every = behavior.get("touch")
        beat = os.environ.get("ENGINE_HEARTBEAT_FILE")
        while True:
            if every and beat:
                Path(beat).touch()
                time.sleep(float(every))
            else:
                time.sleep(3600)
    if "signal" in behavior:
        sys.stdout.flush()
        name = str(behavior["signal"]).upper()
        number = getattr(signal, name if name.startswith("SIG") else f"SIG{name}")
        os.kill(os.getpid(), number)
        time.sleep(5)
    if behavior.get("rate_limit"):
        print("Error: 429 Too Many Requests: rate limit exceeded, retry later", file=sys.stderr)
        _log(log, "end", item, attempt)
        return 1
    if "fail" in behavior:
        print(str(behavior["fail"]), file=sys.stderr)
        _log(log, "end", item, attempt)
        return int(behavior.get("exit", 1))
    if "json" in behavior:
        print(json.dumps(behavior["json"]))
    else:
        text = str(behavior.get("ok", "done"))
        print(text.replace("{item}", item).replace("{attempt}", str(attempt)))
    _log(log, "end", item, attempt)
    return int(behavior.get("exit", 0))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="engine mock-agent", description=__doc__.splitlines()[0])
    ap.add_argument("--script", default=os.environ.get("ENGINE_MOCK_SCRIPT"))
    ap.add_argument("--behavior", help="one behavior as JSON, for every item and attempt")
    ap.add_argument("--item", default=os.environ.get("ENGINE_ITEM_ID", "item"))
    ap.add_argument("--attempt", type=int, default=int(os.environ.get("ENGINE_ATTEMPT", "1")))
    ap.add_argument("--log", default=os.environ.get("ENGINE_MOCK_LOG"))
    ap.add_argument("-p", "--prompt", default="")
    ap.add_argument("rest", nargs="*")
    args = ap.parse_args(argv)
    if args.behavior:
        behavior = json.loads(args.behavior)
    elif args.script:
        script = yaml.safe_load(Path(args.script).read_text(encoding="utf-8")) or {}
        behavior = behavior_for(script, args.item, args.attempt)
    else:
        behavior = {"ok": "done"}
    prompt = args.prompt or " ".join(args.rest)
    return perform(behavior, item=args.item, attempt=args.attempt, prompt=prompt, log=args.log)


if __name__ == "__main__":
    sys.exit(main())
