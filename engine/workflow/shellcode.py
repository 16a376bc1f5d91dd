"""Which words of a shell command are code, and for which program.

A simple command's words, as the shell will pass them once unquoted, say
whether some of them are code for another program: the command string of a
shell (``bash -c "..."``), the arguments of ``eval``, the script a shell reads
from standard input, the code of an interpreter (``python3 -c``) or of a
remote shell (``ssh host ...``). The rule is stated in ``docs/workflow.md``
("Injection safety").
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = [
    "ARITHMETIC_TESTS",
    "ARRAY_ASSIGNMENT",
    "AWKS",
    "SHELLS",
    "SHELL_RUNNERS",
    "arithmetic_words",
    "command_start",
    "command_strings",
    "foreign_code",
    "is_array_assignment",
    "is_assignment",
    "reads_stdin_code",
    "reads_stdin_script",
    "variable_names",
]

SHELLS = frozenset({"sh", "bash", "dash", "ash", "ksh", "mksh", "zsh", "yash", "posh"})
"""Programs whose ``-c`` argument (or standard input) is shell code, by last path component."""
_SHELL_PARAMETER = re.compile(r"\$(?:SHELL|BASH|0|\{(?:SHELL|BASH|0)(?:[-:=+?#%/^,][^}]*)?\})")
"""``$SHELL``, ``${SHELL:-sh}``, ``$BASH``, ``$0``: a parameter that names the running shell."""
STDIN_SCRIPTS = frozenset({"-", "/dev/stdin", "/dev/fd/0", "/proc/self/fd/0"})
"""Script operands that make a shell read its code from standard input."""
DROPS_ENV = frozenset({"sudo", "doas", "docker", "podman", "kubectl"})
"""Launchers that do not pass their environment on to the shell they start."""
ARITHMETIC_TESTS = frozenset({"-eq", "-ne", "-lt", "-le", "-gt", "-ge"})
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")


def command_strings(words: Sequence[str]) -> list[tuple[int, str, str | None]]:
    """Which words of a simple command are shell code: ``(index, shell, env_lost)``.

    The first operand after options including ``c`` of a shell named anywhere
    in the command (``bash -c``, ``sudo sh -ec``, ``find . -exec sh -c``),
    every argument of ``eval``, and the action of ``trap``, when they are the
    command.
    """
    start = command_start(words)
    if start < len(words) and words[start] == "eval":
        return [(k, "eval", None) for k in range(start + 1, len(words))]
    if start < len(words) and words[start] == "trap":
        k = start + 1 + (start + 1 < len(words) and words[start + 1] == "--")
        return [(k, "trap", None)] if k < len(words) else []
    found = _shell_at(words, start)
    if found is None:
        return []
    at, index, has_c = found
    if not has_c or index >= len(words):
        return []
    return [(index, words[at], _env_lost(words[start:at]))]


def variable_names(words: Sequence[str]) -> list[tuple[int, bool]]:
    """Words used as variable names: ``(index, only up to its first "=")``.

    The operands of ``read``, ``unset``, ``declare``, ``typeset``, ``local``,
    ``export``, ``readonly`` (their name part), the name after ``printf -v``,
    and the operand of a ``-v`` test. bash evaluates a subscript in a name
    (``a[$(...)]``), and a name can set any variable (``PATH=...``).
    """
    start = command_start(words)
    if start >= len(words):
        return []
    first = words[start]
    operands = []
    k = start + 1
    while k < len(words):
        if words[k].startswith("-") and len(words[k]) > 1:
            # read -d DELIM, -n COUNT, -p PROMPT, ...: the next word is not a name
            k += 2 if first == "read" and words[k][-1] in "dinNptu" else 1
            continue
        operands.append(k)
        k += 1
    if first in ("read", "unset"):
        return [(k, False) for k in operands]
    if first in ("declare", "typeset", "local", "export", "readonly"):
        return [(k, True) for k in operands]
    after_v = [k + 1 for k in range(start, len(words) - 1) if words[k] == "-v"]
    if first in ("printf", "[[", "[", "test") and after_v:
        return [(after_v[0], False)]
    return []


def foreign_code(words: Sequence[str]) -> list[tuple[int, str]]:
    """Words that are code for a program other than a local shell: ``(index, program)``.

    The code argument of an interpreter named anywhere in the command
    (``python3 -c``, ``perl -e``, ``node -e``, ``ruby -e``, ``php -r``, an
    ``awk`` program, ``fish -c``, ``pwsh -Command``), among the options
    before its script; the ``-c`` argument of ``su``, ``runuser``, ``flock``
    and ``script``; and the command of ``ssh`` and of ``watch`` when they
    are the command.
    """
    start = command_start(words)
    for i in range(start, len(words)):
        name = words[i].rsplit("/", 1)[-1]
        if name == "env":  # env -S 'sh -c' ...: a command line env splits, then runs
            split = next(
                (j for j in range(i + 1, len(words)) if words[j].startswith(("-S", "--split"))),
                None,
            )
            if split is not None:
                return [(k, "env -S") for k in range(split, len(words))]
        if name == "ssh" and i == start:
            j = i + 1
            while j < len(words) and words[j].startswith("-"):
                j += 2 if words[j][-1] in _SSH_ARGUMENT and len(words[j]) == 2 else 1
            return [(k, "ssh") for k in range(j + 1, len(words))]
        if name in AWKS:
            j = i + 1
            while j < len(words) and words[j].startswith("-") and words[j] != "--":
                if words[j] in ("-f", "--file") or words[j].startswith("-f"):
                    return []
                j += 2 if words[j] in ("-F", "-v") else 1
            j += j < len(words) and words[j] == "--"
            return [(j, name)] if j < len(words) else []
        if name in SHELL_RUNNERS and name != "watch":
            code = [j + 1 for j in range(i + 1, len(words) - 1) if words[j] in ("-c", "--command")]
            return [(code[0], name)] if code else []
        if name == "watch" and i == start:
            j = i + 1
            while j < len(words) and words[j].startswith("-"):
                if words[j] in ("-x", "--exec"):
                    return []
                j += 2 if words[j] in ("-n", "--interval") else 1
            return [(k, name) for k in range(j, len(words))]
        options = next((o for p, o in _INTERPRETERS if p.fullmatch(name)), None)
        if options is not None:
            for j in range(i + 1, len(words) - 1):
                if words[j] in options:
                    return [(j + 1, name)]
                if not words[j].startswith("-") or words[j] == "-m":
                    break  # a script or module: the options after it are its own
            return []
    return []


_RESERVED = frozenset({"if", "then", "else", "elif", "do", "while", "until", "!", "{", "time"})
_RESERVED |= {"command", "builtin", "exec", "nohup"}
ARRAY_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\[[^\]]*\]\+?=")
"""``NAME[...]=`` or ``NAME[...]+=`` (bash: its subscript is arithmetic)."""
_SSH_ARGUMENT = frozenset("BbcDEeFIiJLlmOoPpQRSWw")
AWKS = frozenset({"awk", "gawk", "mawk", "nawk"})
_INTERPRETERS = [
    (re.compile(r"python[0-9.]*|pypy[0-9.]*"), ("-c",)),
    (re.compile(r"perl|ruby|lua|Rscript|osascript"), ("-e", "-E")),
    (re.compile(r"node|nodejs"), ("-e", "-p", "--eval", "--print")),
    (re.compile(r"php"), ("-r",)),
    (re.compile(r"fish|csh|tcsh"), ("-c",)),
    (re.compile(r"pwsh|powershell"), ("-c", "-Command", "-command")),
]
SHELL_RUNNERS = frozenset({"su", "runuser", "flock", "script", "watch"})
"""Run a command line in a shell of their own (the argument of ``-c``; watch: its operands)."""


def command_start(words: Sequence[str]) -> int:
    """The index of the command's name: past assignments and reserved words."""
    start = 0
    while start < len(words) and (
        _ASSIGNMENT.match(words[start])
        or ARRAY_ASSIGNMENT.match(words[start])
        or words[start] in _RESERVED
    ):
        start += 1
    return start


def reads_stdin_script(words: Sequence[str]) -> tuple[str, str | None] | None:
    """``(shell, env_lost)`` when the command is a shell reading its code from stdin."""
    start = command_start(words)
    if start + 1 < len(words) and words[start] in (".", "source"):
        # `. /dev/stdin <<EOF`: the running shell reads the here-document as its own code
        return ("eval", None) if words[start + 1] in STDIN_SCRIPTS else None
    found = _shell_at(words, start)
    if found is None:
        return None
    at, index, has_c = found
    options = words[at + 1 : index]
    if has_c:
        return None
    reads_stdin = index >= len(words) or words[index] in STDIN_SCRIPTS
    if not reads_stdin and not any("s" in o[1:] for o in options):
        return None
    return words[at], _env_lost(words[start:at])


def reads_stdin_code(words: Sequence[str]) -> str | None:
    """The interpreter, when the command is one reading its code from standard input.

    ``python3 <<EOF``, ``python3 - <<EOF``, ``node <<< "..."``, ``perl -w``: an
    interpreter of :func:`foreign_code` given no code argument and no script.
    """
    start = command_start(words)
    if start >= len(words):
        return None
    name = words[start].rsplit("/", 1)[-1]
    options = next((o for p, o in _INTERPRETERS if p.fullmatch(name)), None)
    if options is None:
        return None
    for word in words[start + 1 :]:
        if word in options or word == "-m" or (word != "-" and not word.startswith("-")):
            return None  # code in an argument, a module, or a script: stdin is its data
    return name


def _shell_at(words: Sequence[str], start: int) -> tuple[int, int, bool] | None:
    """The first shell word's index, its first operand's, and whether it has ``-c``."""
    for i in range(start, len(words)):
        word = words[i]
        if not is_shell_word(word):
            continue
        j = i + 1
        has_c = False
        while j < len(words):
            option = words[j]
            if option == "--":
                j += 1
                break
            if option.startswith("--"):
                j += 2 if option in ("--rcfile", "--init-file") else 1
                continue
            if len(option) > 1 and option[0] in "-+" and option[1:].isalpha():
                has_c = has_c or "c" in option[1:]
                j += 2 if "o" in option[1:] or "O" in option[1:] else 1
                continue
            break
        return i, j, has_c
    return None


def is_shell_word(word: str) -> bool:
    """``bash``, ``/bin/sh``, ``$SHELL``, ``${SHELL:-sh}``: a word that starts a shell."""
    return word.rsplit("/", 1)[-1] in SHELLS or bool(_SHELL_PARAMETER.fullmatch(word))


def _env_lost(launchers: Sequence[str]) -> str | None:
    for k, word in enumerate(launchers):
        name = word.rsplit("/", 1)[-1]
        if name in DROPS_ENV:
            return name
        if name == "env" and any(
            w in ("-i", "-", "--ignore-environment") for w in launchers[k + 1 :]
        ):
            return "env -i"
    return None


def arithmetic_words(texts: Sequence[str], start: int) -> list[int]:
    """The words of a simple command that the shell evaluates as arithmetic.

    Every operand of ``let`` and of ``declare -i`` (``typeset``, ``local``),
    and the two operands of each ``-eq``, ``-ne``, ... in a ``[[ ]]`` test.
    """
    first = texts[start] if start < len(texts) else ""
    if first == "let":
        return list(range(start + 1, len(texts)))
    if first in ("declare", "typeset", "local"):
        options = [t for t in texts[start + 1 :] if t.startswith("-")]
        if any("i" in t for t in options):
            return list(range(start + 1, len(texts)))
        return []
    if first == "[[":
        found: set[int] = set()
        for k in range(start + 1, len(texts)):
            if texts[k] in ARITHMETIC_TESTS:
                found.update(j for j in (k - 1, k + 1) if start < j < len(texts))
        return sorted(found)
    return []


def is_assignment(word: str) -> bool:
    """``NAME=...`` (a variable assignment before a command)."""
    return bool(_ASSIGNMENT.match(word))


def is_array_assignment(word: str) -> bool:
    """``NAME[...]=...`` (bash: its subscript is arithmetic)."""
    return bool(ARRAY_ASSIGNMENT.match(word))
