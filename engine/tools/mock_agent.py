"""A scripted stand-in for an AI agent, for tests, examples and benchmarks.

``engine mock-agent [--script FILE | --behavior JSON] [-p PROMPT]`` acts as
its script says for the current item and attempt (``ENGINE_ITEM_ID``,
``ENGINE_ATTEMPT``, which the engine gives every attempt). :data:`HELP` is
what ``engine mock-agent --help`` prints (and ``docs/cli.md`` shows): the
script format, each behaviour (:data:`BEHAVIOURS`, the keys :func:`perform`
acts on) and an example. A script that cannot be read, or a behaviour with
a key it does not know or a value of the wrong kind or out of its range, is
one line on stderr and exit 2 (:data:`CHECKS` holds each key's check).
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import random
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import yaml

from engine.tools import mock_claude

__all__ = [
    "BEHAVIOURS",
    "CHECKS",
    "HELP",
    "ScriptError",
    "behavior_for",
    "check_script",
    "help_text",
    "main",
    "perform",
    "pick",
]

BEHAVIOURS: dict[str, str] = {
    "sleep": "SECONDS, 0 to 86400 (or [MIN, MAX]: a random time between): wait first",
    "ok": "TEXT: print it ({item} and {attempt} filled in) and exit 0; the default: done",
    "json": "VALUE: print it as JSON and exit 0",
    "fail": "MESSAGE: print it to stderr and exit 1 (or `exit`)",
    "exit": "CODE, 0 to 255: the exit code of `ok`, `json` or `fail`",
    "rate_limit": "true (or false): print a 429 rate-limit error to stderr and exit 1",
    "hang": "true (or false): print nothing, forever (the engine's timeout or hung_after ends it)",
    "touch": "SECONDS, over 0: while hanging, touch $ENGINE_HEARTBEAT_FILE this often",
    "signal": "NAME: die by that signal (SIGKILL, SIGSEGV, TERM, ...; one that ends a process)",
    "echo_prompt": "true (or false): print the prompt first",
    **mock_claude.BEHAVIOURS,
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

{chr(10).join(f"  {key:<17} {text}" for key, text in BEHAVIOURS.items())}

--behavior JSON gives one BEHAVIOUR (a mapping, or a list of them for the
attempts in turn) for every item instead of a script; with neither, it
prints "done". --log FILE (or $ENGINE_MOCK_LOG) appends a line "start ITEM
ATTEMPT EPOCH" as it starts and "end ITEM ATTEMPT EPOCH" when it exits
normally, for tests that count executions; the start line ends with
"resume=SESSION" and "budget=USD" when --resume and --max-budget-usd are given.

--output-format json answers as `claude -p --output-format json` does: one
result object on stdout (type, subtype, is_error, duration_ms,
duration_api_ms, num_turns, result, session_id, total_cost_usd, usage with
input_tokens, output_tokens, cache_read_input_tokens and
cache_creation_input_tokens, model), its result the text `ok` would print
(or the `json` value as text, the `fail` message, the usage-limit message).
--output-format stream-json (with --verbose, as Claude wants it) prints a
system init line, an assistant line per turn and that result object last,
one JSON object a line. The figures are the behaviour's, exactly. The
default, text, prints the result text alone (a `fail` message on stderr).

Example:

{EXAMPLE}
used as the agent of a workflow, whose claude: steps give their prompt
as the last argument:

  agent: {{command: engine mock-agent --script agent.yml -p}}

A script that cannot be read, or a behaviour with a key not listed above
or a value of the wrong kind or out of its range, is one line on stderr and
exit 2, before the agent does anything (the whole script is checked).
"""


class ScriptError(ValueError):
    """A script or a behaviour that cannot be acted out (said in one line)."""


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad option said in one line (and exit 2), as a bad script is."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def _attempt(text: str) -> int:
    """An attempt number (1, 2, ...), from --attempt or $ENGINE_ATTEMPT."""
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not an attempt number (1, 2, ...)")
    return number


def _budget(text: str) -> str:
    """A budget in USD (a number >= 0), from --max-budget-usd; kept as written, for the log."""
    try:
        number = float(text)
    except ValueError:
        number = -1.0
    if not (math.isfinite(number) and number >= 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not an amount of US dollars >= 0")
    return text


def _parser(width: int | None = None) -> argparse.ArgumentParser:
    def formatter(prog: str) -> argparse.HelpFormatter:
        return argparse.RawDescriptionHelpFormatter(prog, width=width)

    ap = _Parser(prog="engine mock-agent", description=HELP, formatter_class=formatter)
    ap.add_argument(
        "--script",
        metavar="FILE",
        default=os.environ.get("ENGINE_MOCK_SCRIPT"),
        help="the script (default $ENGINE_MOCK_SCRIPT)",
    )
    ap.add_argument("--behavior", metavar="JSON", help="one BEHAVIOUR (JSON) for every item")
    ap.add_argument(
        "--item", default=os.environ.get("ENGINE_ITEM_ID", "item"), help="default $ENGINE_ITEM_ID"
    )
    ap.add_argument(
        "--attempt",
        type=_attempt,
        default=os.environ.get("ENGINE_ATTEMPT", "1"),
        help="default $ENGINE_ATTEMPT, else 1",
    )
    ap.add_argument(
        "--log",
        metavar="FILE",
        default=os.environ.get("ENGINE_MOCK_LOG"),
        help="append start and end lines (default $ENGINE_MOCK_LOG)",
    )
    ap.add_argument(
        "-p",
        "--prompt",
        nargs="?",
        const="",
        default="",
        help="the prompt (or the words after the options)",
    )
    ap.add_argument(
        "--output-format",
        choices=mock_claude.FORMATS,
        default="text",
        help="answer as Claude Code's output format does (default text)",
    )
    ap.add_argument("--verbose", action="store_true", help="accepted, as Claude's")
    ap.add_argument("--resume", metavar="SESSION", help="the session to continue (logged)")
    ap.add_argument(
        "--max-budget-usd",
        metavar="USD",
        type=_budget,
        help="the budget of the attempt (accepted and logged)",
    )
    ap.add_argument("rest", nargs="*", metavar="WORDS", help=argparse.SUPPRESS)
    return ap


def help_text(width: int = 100) -> str:
    """What ``engine mock-agent --help`` prints, at a fixed width (for docs/cli.md)."""
    return _parser(width).format_help().rstrip("\n")


def behavior_for(script: Any, item: str, attempt: int) -> dict[str, Any]:
    """The behaviour ``script`` gives ``item`` at ``attempt`` (1-based), the script all checked."""
    check_script(script)
    choice: Any = None
    items = {str(key): value for key, value in (script.get("items") or {}).items()}
    if item in items:
        choice = items[item]
    else:
        for rule in script.get("match") or []:
            if re.search(str(rule["pattern"]), item):
                choice = rule["do"]
                break
    if choice is None:
        choice = script.get("default", {"ok": "done"})
    return pick(choice, attempt)


def pick(choice: Any, attempt: int) -> dict[str, Any]:
    """The behaviour for ``attempt`` of a checked BEHAVIOUR (a mapping, or a list: the Nth)."""
    if isinstance(choice, list):
        choice = choice[min(max(attempt, 1), len(choice)) - 1]
    return dict(choice)


SCRIPT_KEYS = ("items", "match", "default")
"""The keys of a script."""


def check_script(script: Any) -> None:
    """:class:`ScriptError` naming the first thing in ``script`` that cannot be acted out."""
    if not isinstance(script, dict):
        raise ScriptError("the script is not a mapping of items, match and default")
    for key in script:
        if key not in SCRIPT_KEYS:
            near = difflib.get_close_matches(str(key), SCRIPT_KEYS, n=1)
            hint = f" (did you mean {near[0]}?)" if near else ""
            raise ScriptError(f"the script's key {key!r} is not items, match or default{hint}")
    items = script.get("items") or {}
    if not isinstance(items, dict):
        raise ScriptError(f"the script's items {items!r} is not a mapping of ITEM_ID: BEHAVIOUR")
    for item, choice in items.items():
        check_choice(choice, f"the script's items[{str(item)!r}]")
    rules = script.get("match") or []
    if not isinstance(rules, list):
        raise ScriptError(f"the script's match {rules!r} is not a list of rules")
    for n, rule in enumerate(rules):
        if not isinstance(rule, dict) or set(rule) != {"pattern", "do"}:
            raise ScriptError(f"match rule {rule!r} is not {{pattern: REGEX, do: BEHAVIOUR}}")
        try:
            re.compile(str(rule["pattern"]))
        except re.error as exc:
            raise ScriptError(f"match pattern {rule['pattern']!r}: {exc}") from None
        check_choice(rule["do"], f"the script's match[{n}].do")
    if "default" in script:
        check_choice(script["default"], "the script's default")


def check_choice(choice: Any, where: str = "") -> None:
    """Check a BEHAVIOUR (a mapping, or a non-empty list of them) found at ``where``."""
    if isinstance(choice, list):
        if not choice:
            raise ScriptError(
                f"{where or '--behavior'}: an empty list; give at least one behaviour"
            )
        for n, behavior in enumerate(choice):
            checked(behavior, f"{where}[{n}]")
    else:
        checked(choice, where)


def checked(behavior: Any, where: str = "") -> dict[str, Any]:
    """``behavior`` as a mapping of known keys, or :class:`ScriptError` naming what is wrong."""
    at = f"{where}: " if where else ""
    if not isinstance(behavior, dict):
        raise ScriptError(f"{at}behaviour {behavior!r} is not a mapping (e.g. {{ok: done}})")
    for key, value in behavior.items():
        if key not in BEHAVIOURS:
            near = difflib.get_close_matches(str(key), BEHAVIOURS, n=1)
            hint = f" (did you mean {near[0]}?)" if near else ""
            raise ScriptError(
                f"{at}unknown behaviour key {key!r}{hint}; see engine mock-agent --help"
            )
        fits, expected = CHECKS[key]
        if not fits(value):
            raise ScriptError(f"{at}behaviour {key}: {value!r} is not {expected}")
    return dict(behavior)


MAX_SECONDS = 86400
"""The longest ``sleep`` or ``touch`` (a day; ``hang`` waits for ever)."""

_NOT_DEADLY = {"SIGCHLD", "SIGCLD", "SIGCONT", "SIGURG", "SIGWINCH"}
_NOT_DEADLY |= {"SIGSTOP", "SIGTSTP", "SIGTTIN", "SIGTTOU"}
"""Signals whose default action ignores the signal or stops the process: no death by them."""


def _number(value: Any, low: float, high: float, *, above: bool = False) -> bool:
    """``value`` is a number (not a bool) in [low, high] (or (low, high] when ``above``)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    return (value > low if above else value >= low) and value <= high


def _seconds(value: Any) -> bool:
    return _number(value, 0, MAX_SECONDS)


def _sleep(value: Any) -> bool:
    if isinstance(value, list):
        return len(value) == 2 and all(map(_seconds, value)) and value[0] <= value[1]
    return _seconds(value)


def _text(value: Any) -> bool:
    return isinstance(value, str) or _number(value, -math.inf, math.inf)


def _json(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def _signal(value: Any) -> bool:
    name = str(value).upper() if isinstance(value, str) else ""
    name = name if name.startswith("SIG") else f"SIG{name}"
    known = isinstance(getattr(signal, name, None), signal.Signals)
    return known and name not in _NOT_DEADLY


CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "sleep": (
        _sleep,
        f"a number of seconds from 0 to {MAX_SECONDS}, or [MIN, MAX]"
        f" with 0 <= MIN <= MAX <= {MAX_SECONDS}",
    ),
    "ok": (_text, "a text (a string or a number)"),
    "json": (_json, "a JSON value (no NaN, Infinity or dates)"),
    "fail": (_text, "a message (a string or a number)"),
    "exit": (lambda v: _number(v, 0, 255) and isinstance(v, int), "an exit code from 0 to 255"),
    "rate_limit": (lambda v: isinstance(v, bool), "true or false"),
    "hang": (lambda v: isinstance(v, bool), "true or false"),
    "touch": (
        lambda v: _number(v, 0, MAX_SECONDS, above=True),
        f"a number of seconds above 0, at most {MAX_SECONDS}",
    ),
    "signal": (_signal, "the name of a signal that ends a process (SIGKILL, TERM, SEGV, ...)"),
    "echo_prompt": (lambda v: isinstance(v, bool), "true or false"),
    **mock_claude.CHECKS,
}
"""Every behaviour key: what fits its value, and what that is in words (for the one-line error)."""


def _log(path: str | None, what: str, item: str, attempt: int, extra: str = "") -> None:
    if not path:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"{what} {item} {attempt} {time.time():.6f}{extra}\n")
        f.flush()


def _act(behavior: dict[str, Any], prompt: str) -> None:
    """The acts before the answer: wait, echo the prompt, hang, die by a signal."""
    pause = behavior.get("sleep")
    if isinstance(pause, list):
        pause = random.uniform(float(pause[0]), float(pause[1]))
    if pause:
        time.sleep(float(pause))
    if behavior.get("echo_prompt"):
        print(prompt, flush=True)
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


def perform(
    behavior: dict[str, Any],
    *,
    item: str,
    attempt: int,
    prompt: str,
    log: str | None,
    output_format: str = "text",
    resume: str | None = None,
    budget: str | None = None,
) -> int:
    """Act out one behavior in ``output_format``; returns the exit code (or dies by a signal)."""
    started = time.monotonic()
    extra = (f" resume={resume}" if resume else "") + (f" budget={budget}" if budget else "")
    _log(log, "start", item, attempt, extra)
    session = str(behavior.get("session") or resume or mock_claude.session_for(item, attempt))
    if output_format == "stream-json":
        mock_claude.init_line(behavior, session, os.getcwd())
    _act(behavior, prompt)
    if behavior.get("rate_limit"):
        print("Error: 429 Too Many Requests: rate limit exceeded, retry later", file=sys.stderr)
        _log(log, "end", item, attempt)
        return 1
    text = mock_claude.result_text(behavior, item, attempt)
    if output_format != "text":
        code = mock_claude.answer(
            behavior, output_format=output_format, text=text, session=session, started=started
        )
    else:
        failed = "fail" in behavior or "usage_limit" in behavior
        errs = "fail" in behavior or behavior.get("usage_limit_style") == "retry_after"
        print(text, file=sys.stderr if errs else sys.stdout)
        code = int(behavior.get("exit", 1 if behavior.get("is_error", failed) else 0))
    _log(log, "end", item, attempt)
    return code


def _behavior(args: argparse.Namespace) -> dict[str, Any]:
    if args.behavior:
        try:
            choice = json.loads(args.behavior)
        except json.JSONDecodeError as exc:
            raise ScriptError(f"--behavior is not JSON: {exc}") from None
        check_choice(choice, "--behavior" if isinstance(choice, list) else "")
        return pick(choice, args.attempt)
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
    args = _parser().parse_intermixed_args(argv)
    try:
        behavior = _behavior(args)
    except ScriptError as exc:
        message = " ".join(str(exc).split())
        print(f"engine mock-agent: error: {message}", file=sys.stderr)
        return 2
    prompt = args.prompt or " ".join(args.rest)
    return perform(
        behavior,
        item=args.item,
        attempt=args.attempt,
        prompt=prompt,
        log=args.log,
        output_format=args.output_format,
        resume=args.resume,
        budget=args.max_budget_usd,
    )


if __name__ == "__main__":
    sys.exit(main())
