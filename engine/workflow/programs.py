"""The programs a workflow's steps start, looked up before anything runs.

A step whose program is not on ``PATH`` (``claude`` not installed, a typo)
would fail every item; ``engine run`` refuses to start instead (exit 2,
``--allow-missing`` to go on) and ``engine validate`` warns (the machine
that runs the workflow may have another ``PATH``).

Only what is certain is looked up: ``argv[0]``, the first word of
``agent.command`` for a ``claude:`` step, and the first word of a shell
command when it is a plain word (not a builtin or keyword, a variable, a
quoted or globbed word, or a path relative to the working directory). A
program that a setup step mentions (an earlier one, for a setup step) may be
installed by it, and is not looked up; nor is a step whose ``env`` sets
``PATH``. ``on_failure`` handlers and ``validate`` steps are left out, and a
``write_file`` step starts no program.
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
from collections.abc import Mapping
from typing import Any

from engine.workflow.checks import agent_words, steps_of
from engine.workflow.problems import Finding, Loc

__all__ = ["SHELL_BUILTINS", "first_program", "missing_programs"]

_BUILTIN_WORDS = """
! [[ ]] { } ( ) [ . : alias bg break builtin caller case cd command compgen complete
continue coproc declare dirs disown do done echo elif else enable esac eval exec exit
export false fc fg fi for function getopts hash help history if in jobs kill let local
logout mapfile popd printf pushd pwd read readarray readonly return select set shift
shopt source suspend test then time times trap true type typeset ulimit umask unalias
unset until wait while
"""
SHELL_BUILTINS = frozenset(_BUILTIN_WORDS.split())
"""Words a shell runs itself (keywords and builtins): never looked up on ``PATH``."""

_WORD_END = re.compile(r"[\s;&|()<>]")
_PLAIN = re.compile(r"[A-Za-z0-9._+@%,:/-]+")
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=[A-Za-z0-9._+@%,:/-]*")
_MAX_NAMES = 50_000
"""Executables read from ``PATH`` for a "did you mean" at most."""


def first_program(command: str) -> str | None:
    """The program a shell command starts first, when that is certain; else None."""
    i, n = 0, len(command)
    while i < n:
        while i < n and command[i] in " \t\n":
            i += 1
        if command.startswith("#", i):
            newline = command.find("\n", i)
            i = n if newline < 0 else newline
            continue
        m = _WORD_END.search(command, i)
        word = command[i : m.start() if m else n]
        if not word:
            return None
        if _ASSIGNMENT.fullmatch(word):  # NAME=value before the command
            i += len(word)
            continue
        if not _PLAIN.fullmatch(word) or word in SHELL_BUILTINS:
            return None
        return word
    return None


def _step_program(step: dict[str, Any], agent: list[str]) -> tuple[str, str] | None:
    """(key, program) of a step, when its program is certain."""
    if "write_file" in step:
        return None  # written by the engine: no program
    for key in ("run", "shell"):
        text = step.get(key)
        if isinstance(text, str):
            program = first_program(text)
            return (key, program) if program else None
    argv = step.get("argv")
    if isinstance(argv, list) and argv and isinstance(argv[0], str) and argv[0]:
        return "argv", argv[0]
    if isinstance(step.get("claude"), str) and agent:
        return "claude", agent[0]
    return None


def _step_text(step: dict[str, Any]) -> str:
    parts = [step.get(k) for k in ("run", "shell", "claude")]
    argv = step.get("argv")
    if isinstance(argv, list):
        parts += argv
    return " ".join(p for p in parts if isinstance(p, str))


def _found(program: str, path: str) -> bool:
    if "/" not in program:
        return shutil.which(program, path=path) is not None
    if not os.path.isabs(program):
        return True  # relative to the step's directory: an earlier step may make it
    return os.path.isfile(program) and os.access(program, os.X_OK)


def _suggestion(program: str, path: str) -> str | None:
    if "/" in program:
        return None
    names: set[str] = set()
    for directory in path.split(os.pathsep):
        try:
            with os.scandir(directory or ".") as entries:
                for entry in entries:
                    names.add(entry.name)
                    if len(names) >= _MAX_NAMES:
                        break
        except OSError:
            continue
    close = difflib.get_close_matches(program, sorted(names), n=1, cutoff=0.8)
    return close[0] if close else None


def _message(program: str, key: str, path: str) -> str:
    where = " (the first word of agent.command)" if key == "claude" else ""
    missing = "does not exist or cannot be run" if "/" in program else "is not found on PATH"
    close = _suggestion(program, path)
    mean = f"did you mean {close!r}? " if close else ""
    return (
        f"program {program!r}{where} {missing}, so every run of this step would fail "
        f"({mean}install it or fix its name; engine run --allow-missing starts anyway)"
    )


def missing_programs(data: dict[str, Any], env: Mapping[str, str]) -> list[Finding]:
    """The steps whose program cannot be found on ``env``'s ``PATH``, each program once."""
    path = env.get("PATH", os.defpath)
    agent = agent_words(data)
    spec = data.get("map")
    spec = spec if isinstance(spec, dict) else {}
    setup = steps_of(data.get("setup"), ("setup",))
    setup_text = " ".join(_step_text(step) for _, step in setup)
    sequences: list[list[tuple[Loc, dict[str, Any]]]] = [
        setup,
        [(("map",), {"run": spec["command"]})] if isinstance(spec.get("command"), str) else [],
        steps_of(spec.get("agent_template"), ("map", "agent_template")),
        steps_of(data.get("reduce"), ("reduce",)),
    ]
    findings: list[Finding] = []
    seen: set[str] = set()
    for number, sequence in enumerate(sequences):
        before = setup_text if number else ""
        for loc, step in sequence:
            found = _step_program(step, agent)
            env_of_step = step.get("env")
            sets_path = isinstance(env_of_step, dict) and "PATH" in env_of_step
            if found is not None and not sets_path:
                key, program = found
                name = program.rsplit("/", 1)[-1]
                if program not in seen and name not in before and not _found(program, path):
                    seen.add(program)
                    here = ("map", "command") if loc == ("map",) else (*loc, key)
                    findings.append(Finding(here, _message(program, key, path)))
            if not number:
                before += " " + _step_text(step)
    return findings
