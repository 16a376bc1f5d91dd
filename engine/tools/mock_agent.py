"""A scripted stand-in for an AI agent, for tests, examples and benchmarks.

``engine mock-agent [--script FILE | --behavior JSON] [-p PROMPT]`` acts as
its script says for the current item and attempt (``ENGINE_ITEM_ID``,
``ENGINE_ATTEMPT``, which the engine gives every attempt). :data:`HELP` is
what ``engine mock-agent --help`` prints (and ``docs/cli.md`` shows): the
script format, each behaviour (:data:`BEHAVIOURS`, the keys :func:`perform`
acts on) and an example. A script that cannot be read, or a behaviour with
a key it does not know or a value of the wrong kind, is one line on stderr
and exit 2.
"""

from __future__ import annotations

import argparse
import difflib
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

__all__ = ["BEHAVIOURS", "HELP", "ScriptError", "behavior_for", "help_text", "main", "perform"]

BEHAVIOURS: dict[str, str] = {
    "sleep": "SECONDS (or [MIN, MAX]: a random time between): wait first",
    "ok": "TEXT: print it ({item} and {attempt} filled in) and exit 0; the default: done",
    "json": "VALUE: print it as JSON and exit 0",
    "fail": "MESSAGE: print it to stderr and exit 1 (or `exit`)",
    "exit": "CODE: the exit code of `ok`, `json` or `fail`",
    "rate_limit": "true: print a 429 rate-limit error to stderr and exit 1",
    "hang": "true: print nothing, forever (the engine's timeout or hung_after ends it)",
    "touch": "SECONDS: while hanging, touch $ENGINE_HEARTBEAT_FILE this often",
    "signal": "NAME: die by that signal (SIGKILL, SIGSEGV, TERM, ...)",
    "echo_prompt": "true: print the prompt first",
}
"""Every key a behaviour may have, with what it does (the help is made of this)."""

EXAMPLE = """\
  # agent.yml: what the mock agent does, per item and attempt
  default: {sleep: [0.5, 2], json: {verdict: ok}}    # any other item
  items:                                             # by item id, exactly
    src/a.py: [{rate_limit: true}, {ok: "fixed on attempt {attempt}"}]
    src/b.py: {fail: "validation failed: not Python", exit: 2}
  match:                                             # by regex on the id, first wins
    - {pattern: "^slow/", do: {hang: true, touch: 1}}
"""
"""The help's example script (indented as the help shows it; a test runs it)."""


HELP = f"""\
A scripted stand-in for an AI agent, for tests, examples and benchmarks. It
acts out one behaviour, chosen by the script for the item and attempt it is
run for ($ENGINE_ITEM_ID and $ENGINE_ATTEMPT, which the engine sets; or
--item, --attempt).

The script (YAML or JSON, --script FILE or $ENGINE_MOCK_SCRIPT) is a mapping:

  items:    {{ITEM_ID: BEHAVIOUR, ...}}   the item with exactly this id
  match:    [{{pattern: REGEX, do: BEHAVIOUR}}, ...]
                                        else the first rule whose regex is
                                        found in the item id
  default:  BEHAVIOUR                   else this (default: {{ok: done}})

A BEHAVIOUR is a mapping, or a list of them: attempt N acts out the Nth, and
the last one repeats for the attempts after it. Its keys:

{chr(10).join(f"  {key:<12} {text}" for key, text in BEHAVIOURS.items())}

--behavior JSON gives one behaviour for every item and attempt instead of a
script; with neither, it prints "done". --log FILE (or $ENGINE_MOCK_LOG)
appends a line "start ITEM ATTEMPT EPOCH" as it starts and "end ITEM
ATTEMPT EPOCH" when it exits normally, for tests that count executions.

Example:

{EXAMPLE}
used as the agent of a workflow, whose claude: steps give their prompt
as the last argument:

  agent: {{command: engine mock-agent --script agent.yml -p}}

A script that cannot be read, or a behaviour with a key not listed above
or a value of the wrong kind, is one line on stderr and exit 2.
"""


class ScriptError(ValueError):
    """A script or a behaviour that cannot be acted out (said in one line)."""


def _parser(width: int | None = None) -> argparse.ArgumentParser:
    def formatter(prog: str) -> argparse.HelpFormatter:
        return argparse.RawDescriptionHelpFormatter(prog, width=width)

    ap = argparse.ArgumentParser(
        prog="engine mock-agent", description=HELP, formatter_class=formatter
    )
    ap.add_argument(
        "--script",
        metavar="FILE",
        default=os.environ.get("ENGINE_MOCK_SCRIPT"),
        help="the script (default $ENGINE_MOCK_SCRIPT)",
    )
    ap.add_argument("--behavior", metavar="JSON", help="one behaviour for every item and attempt")
    ap.add_argument(
        "--item", default=os.environ.get("ENGINE_ITEM_ID", "item"), help="default $ENGINE_ITEM_ID"
    )
    ap.add_argument(
        "--attempt",
        type=int,
        default=int(os.environ.get("ENGINE_ATTEMPT", "1")),
        help="default $ENGINE_ATTEMPT, else 1",
    )
    ap.add_argument(
        "--log",
        metavar="FILE",
        default=os.environ.get("ENGINE_MOCK_LOG"),
        help="append start and end lines (default $ENGINE_MOCK_LOG)",
    )
    ap.add_argument(
        "-p", "--prompt", default="", help="the prompt (or the words after the options)"
    )
    ap.add_argument("rest", nargs="*", metavar="WORDS", help=argparse.SUPPRESS)
    return ap


def help_text(width: int = 100) -> str:
    """What ``engine mock-agent --help`` prints, at a fixed width (for docs/cli.md)."""
    return _parser(width).format_help().rstrip("\n")


def behavior_for(script: dict[str, Any], item: str, attempt: int) -> dict[str, Any]:
    """The behaviour ``script`` gives ``item`` at ``attempt`` (1-based), checked."""
    if not isinstance(script, dict):
        raise ScriptError("the script is not a mapping of items, match and default")
    choice: Any = None
    items = script.get("items") or {}
    if item in items:
        choice = items[item]
    else:
        for rule in script.get("match") or []:
            if not isinstance(rule, dict) or "pattern" not in rule or "do" not in rule:
                raise ScriptError(f"match rule {rule!r} is not {{pattern: REGEX, do: BEHAVIOUR}}")
            try:
                found = re.search(str(rule["pattern"]), item)
            except re.error as exc:
                raise ScriptError(f"match pattern {rule['pattern']!r}: {exc}") from None
            if found:
                choice = rule["do"]
                break
    if choice is None:
        choice = script.get("default", {"ok": "done"})
    if isinstance(choice, list):
        choice = choice[min(attempt, len(choice)) - 1] if choice else {"ok": "done"}
    return checked(choice)


def checked(behavior: Any) -> dict[str, Any]:
    """``behavior`` as a mapping of known keys, or :class:`ScriptError` naming what is wrong."""
    if not isinstance(behavior, dict):
        raise ScriptError(f"behaviour {behavior!r} is not a mapping (e.g. {{ok: done}})")
    for key, value in behavior.items():
        if key not in BEHAVIOURS:
            near = difflib.get_close_matches(str(key), BEHAVIOURS, n=1)
            hint = f" (did you mean {near[0]}?)" if near else ""
            raise ScriptError(f"unknown behaviour key {key!r}{hint}; see engine mock-agent --help")
        expected = _expected(key, value)
        if expected is not None:
            raise ScriptError(f"behaviour {key}: {value!r} is not {expected}")
    return dict(behavior)


def _expected(key: str, value: Any) -> str | None:
    """What ``value`` should be for ``key``, when it is not that; None when it is fine."""
    number = (int, float)
    if key == "sleep":
        pair = isinstance(value, list) and len(value) == 2
        if _is(value, number) or (pair and all(_is(v, number) for v in value)):
            return None
        return "a number of seconds, or [MIN, MAX]"
    if key == "touch" and not _is(value, number):
        return "a number of seconds"
    if key == "exit" and not _is(value, (int,)):
        return "an exit code"
    if key == "signal":
        name = str(value).upper()
        if not isinstance(
            getattr(signal, name if name.startswith("SIG") else f"SIG{name}", None), signal.Signals
        ):
            return "a signal's name (SIGKILL, TERM, ...)"
    return None


def _is(value: Any, types: tuple[type, ...]) -> bool:
    return isinstance(value, types) and not isinstance(value, bool)


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


def _behavior(args: argparse.Namespace) -> dict[str, Any]:
    if args.behavior:
        try:
            return checked(json.loads(args.behavior))
        except json.JSONDecodeError as exc:
            raise ScriptError(f"--behavior is not JSON: {exc}") from None
    if not args.script:
        return {"ok": "done"}
    try:
        script = yaml.safe_load(Path(args.script).read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ScriptError(f"cannot read the script {args.script}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ScriptError(f"the script {args.script} is not YAML or JSON: {exc}") from None
    return behavior_for(script, args.item, args.attempt)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        behavior = _behavior(args)
    except ScriptError as exc:
        message = " ".join(str(exc).split())
        print(f"engine mock-agent: error: {message}", file=sys.stderr)
        return 2
    prompt = args.prompt or " ".join(args.rest)
    return perform(behavior, item=args.item, attempt=args.attempt, prompt=prompt, log=args.log)


if __name__ == "__main__":
    sys.exit(main())
