"""A placement of a ``${...}`` in a shell command: its quoting at every level.

A value's reference must be expanded by the shell that runs the code, quoted
for the quoting it has *there*. ``chain`` lists the quoting at each level,
from the command as written to the shell that expands it; ``reference``
writes the reference so that each level passes it on unexpanded, and
``problem`` says why a placement cannot carry a value as data, with the safe
form. ``docs/workflow.md`` ("Injection safety") states the rule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from engine.workflow.shellcode import AWKS, SHELL_RUNNERS

__all__ = [
    "ESCAPED",
    "MAX_DEPTH",
    "NUMBER",
    "VARIABLE",
    "Placement",
    "TemplateError",
    "number_problem",
    "reference",
]

VARIABLE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_\-]+)*)\}")
"""``${name}`` or ``${name.field.sub}`` (not after a ``$``: see :data:`ESCAPED`)."""
ESCAPED = re.compile(r"\$(\$\{[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_\-]+)*\})")
"""``$${name}``: the text ``${name}`` itself, never a variable (what a shell, or the
program, then makes of it is theirs)."""


# Quoting contexts, and the reference written there. Inside single quotes the
# reference closes them, is expanded in double quotes, and opens them again;
# in arithmetic it stands bare (the value is checked to be a whole number when
# the command is rendered).
_REFERENCE = {
    "none": '"${%s}"',
    "double": "${%s}",
    "heredoc": "${%s}",
    "single": "'\"${%s}\"'",
    "arithmetic": "${%s}",
}
# What must be escaped (with a backslash) to pass text through a level unchanged.
_ESCAPES = {
    "none": "\\$\"`'",
    "double": '\\$"`',
    "heredoc": "\\$`",
    "backtick": "\\$`",
    "backtick-double": '\\$`"',
    "single": "",
    "heredoc-quoted": "",
}


MAX_DEPTH = 32
"""Command substitutions, backticks and command strings nested deeper than this are refused."""


class TemplateError(ValueError):
    """A variable is unknown, unset, or placed where it cannot be safe."""


@dataclass(frozen=True)
class Placement:
    """One ``${name}`` in a shell command."""

    start: int
    end: int
    name: str
    chain: tuple[str, ...]
    """Its quoting at each level, outermost first; the last is where it is expanded."""
    shells: tuple[str, ...] = ()
    """The shell (or ``eval``) of each command-string level it passes into."""
    env_lost: str | None = None
    """A launcher on the way that drops the environment carrying the value."""
    number: bool = False
    """It is in a word the shell evaluates as arithmetic (``let``, ``[[ -eq ]]``, ``a[...]=``)."""

    @property
    def arithmetic(self) -> bool:
        """The shell evaluates the value as an expression: it must be a whole number."""
        return self.number or self.chain[-1] == "arithmetic"

    @property
    def quoting(self) -> str:
        """The quoting where the value is expanded (``none``, ``double``, ``single``, ...)."""
        return self.chain[-1]

    @property
    def problem(self) -> str | None:
        """Why this placement cannot carry a value as data, with the safe form; or None."""
        var = f"${{{self.name}}}"
        shell = self.shells[-1] if self.shells else None
        where = f" in the command string of {shell}" if shell else ""
        if shell == "ssh":
            fix = (
                f"send the value on standard input: printf '%s' \"{var}\" | ssh HOST "
                "'v=$(cat); … \"$v\"'"
            )
        elif shell is not None and self.chain[-1] in ("foreign", "foreign-output"):
            fix = _foreign_fix(shell, var)
        elif shell == "eval":
            fix = f'set a variable first: v="{var}"; eval \'… "$v"\''
        elif shell:
            fix = f'pass it as an argument: {shell} -c \'… "$1"\' _ "{var}"'
        else:
            fix = "use double quotes"
        kind = self.chain[-1]
        if "ansi" in self.chain:
            return (
                f"{var} is inside $'...'{where}, which sh and bash read differently "
                "(dash: a $ and single quotes), so no reference is safe in both "
                "(use '...' or double quotes)"
            )
        if kind == "heredoc-quoted":
            return (
                f"{var} is in a here-document with a quoted delimiter{where}, which is not "
                "expanded (write the delimiter unquoted, as <<EOF, and backslash each $, ` "
                "and \\ of the body that must stay as it is)"
            )
        if kind == "arithmetic-output":
            return (
                f"{var} is in a command substitution whose output is part of an arithmetic "
                f"expression{where}, where the shell evaluates a value as code "
                "(set a shell variable and check it holds only digits, then use the variable: "
                f"n=\"{var}\"; case $n in ''|*[!0-9]*) exit 2;; esac; echo $((n + 1)))"
            )
        if kind == "foreign" and shell == "ssh":
            return f"{var} is in the command ssh runs, which a remote shell reads as code ({fix})"
        if kind == "foreign" and shell in SHELL_RUNNERS:
            return f"{var} is in the command {shell} runs in a shell, as code ({fix})"
        if kind == "foreign":
            return f"{var} is in code for {shell}, which would run its value as code ({fix})"
        if kind in ("shell-output", "foreign-output"):
            return (
                f"{var} is in a command substitution whose output becomes code for {shell} ({fix})"
            )
        if kind == "name":
            return (
                f"{var} is used as a variable name{where}, which a shell can evaluate as code "
                f'(bash runs the $(...) of a[$(...)]; use a fixed name: v="{var}")'
            )
        if kind == "escaped":
            return (
                f"{var} is escaped or in a comment{where}, where that shell would not "
                "expand it (remove the backslash)"
            )
        if self.env_lost:
            return (
                f"{var} is in the command string of {shell} started by {self.env_lost}, "
                f"which does not pass on the environment that carries the value ({fix})"
            )
        return None


def _foreign_fix(program: str, var: str) -> str:
    """How to give ``program`` the value as data instead."""
    argument = "pass it as an argument and read it there: "
    if program.startswith(("python", "pypy")):
        return f"{argument}{program} -c '… sys.argv[1]' \"{var}\""
    if program in ("node", "nodejs"):
        return f"{argument}{program} -e '… process.argv[1]' \"{var}\""
    if program == "php":
        return f"{argument}php -r '… $argv[1]' \"{var}\""
    if program in AWKS:
        return f"{argument}{program} -v v=\"{var}\" '… v'"
    if program == "lua":
        return f"{argument}lua -e '… arg[1]' \"{var}\""
    if program == "watch":
        return f'run the shell without joining: watch -x sh -c \'… "$1"\' _ "{var}"'
    if program in ("su", "runuser"):
        return (
            f"send the value on standard input: printf '%s' \"{var}\" | {program} USER -c "
            "'v=$(cat); … \"$v\"'"
        )
    if program in ("flock", "script"):
        return f'run the shell yourself: {program} … sh -c \'… "$1"\' _ "{var}"'
    if program == "env -S":
        return f'run the program without env -S: sh -c \'… "$1"\' _ "{var}"'
    if program in ("perl", "ruby"):
        return f"{argument}{program} -e '… $ARGV[0]' \"{var}\""
    return (
        f'give it to the step as an environment variable, env: {{V: "{var}"}}, '
        f"and read V in {program}'s own syntax"
    )


def reference(placement: Placement, variable: str) -> str:
    """The text that stands for ``placement``: ``variable`` expanded by the right shell."""
    text = _REFERENCE[placement.chain[-1]] % variable
    for level in reversed(placement.chain[:-1]):
        if level == "single":  # close the quotes, an escaped quote, open them again
            text = text.replace("'", "'\\''")
        else:
            text = "".join("\\" + c if c in _ESCAPES[level] else c for c in text)
    return text


NUMBER = re.compile(r"-?[0-9]+")
"""A value that may stand in arithmetic: a whole number, in decimal digits."""


def number_problem(placement: Placement, text: str) -> str | None:
    """Why ``text`` cannot be the value of ``placement`` (in arithmetic), or None."""
    if not placement.arithmetic or (text.isascii() and NUMBER.fullmatch(text)):
        return None
    shown = text if len(text) <= 40 else text[:37] + "..."
    return (
        f"${{{placement.name}}} is {shown!r}, not a whole number, and it is in "
        "arithmetic, where the shell would evaluate it as an expression: the step was not "
        "run (give a whole number, or use the value outside arithmetic)"
    )
