"""Where each ``${...}`` of a shell command stands, for every shell that reads it.

A command can hand text to another shell: the command string of
``bash -c "..."``, the arguments of ``eval``, a here-document read by
``sh``, the body of backticks. Expanded before that shell runs it, a value's
text would become code. ``scan`` follows the quoting of the command (and of
every text it hands on) far enough to say, for each placement, its quoting
at every level (``engine.workflow.placement.Placement``). ``docs/workflow.md``
("Injection safety") states the rule.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import replace

from engine.workflow.parameters import bad_parameter, bad_parameter_message
from engine.workflow.placement import ESCAPED, MAX_DEPTH, VARIABLE, Placement, TemplateError
from engine.workflow.shellcode import (
    ARRAY_ASSIGNMENT,
    arithmetic_words,
    command_start,
    command_strings,
    foreign_code,
    reads_stdin_code,
    reads_stdin_script,
    variable_names,
)
from engine.workflow.shellwords import CommandList, Heredoc, Word

__all__ = ["Edit", "scan", "scan_edits"]


def scan(command: str, *, depth: int = 0, bad: list[str] | None = None) -> list[Placement]:
    """Every ``${...}`` in a shell command, in order, with its chain of quoting.

    ``bad`` (when given) receives a message for each ``${...}`` that is
    neither a variable of the engine nor a parameter of the shell (the shell
    would stop on it: "Bad substitution"), at any level of the command.
    """
    return scan_edits(command, depth=depth, bad=bad)[0]


def scan_edits(
    command: str, *, depth: int = 0, bad: list[str] | None = None
) -> tuple[list[Placement], list[Edit]]:
    """:func:`scan`, and the edits of the command's text that its placements need.

    A here-document with a quoted delimiter (``<<'EOF'``) holding variables,
    read by a program that is no shell, is not expanded: its delimiter is
    written unquoted and every ``\\``, ``$`` and backquote of its body
    backslashed, so the body stays as written and only the references expand.
    """
    scanner = _Scanner(command, depth, [] if bad is None else bad)
    scanner.parse_list(0, top=True)
    return sorted(scanner.found, key=lambda p: p.start), sorted(scanner.edits)


Edit = tuple[int, int, str]
"""``(start, end, text)``: the command's text from start to end is replaced by text."""
_PLAIN_DELIMITER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.]*")


class _Scanner:
    def __init__(self, text: str, depth: int, bad: list[str]) -> None:
        self.text = text
        self.n = len(text)
        self.found: list[Placement] = []
        self.depth = depth
        self.bad = bad
        self.edits: list[Edit] = []
        self.root = depth == 0
        """The command as written (not a text handed on): edits apply to it."""

    def deeper(self) -> int:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise TemplateError(
                f"the command nests substitutions or shells more than {MAX_DEPTH} deep "
                "(split it into steps or a script)"
            )
        return self.depth

    # --- placements ----------------------------------------------------------------

    def place(self, match: re.Match[str], chain: tuple[str, ...], word: Word | None) -> None:
        if word is not None:
            word.marks.append((len(self.found), word.length))
            word.add(match.group(0))
        self.found.append(Placement(match.start(), match.end(), match.group(1), chain))

    def adopt(self, inner: list[Placement], level: str, offsets: list[int]) -> None:
        """Placements found in a nested text (backticks), mapped to this text."""
        for p in inner:
            start = offsets[p.start]
            self.found.append(
                replace(p, start=start, end=start + p.end - p.start, chain=(level, *p.chain))
            )

    def command_string(self, word: Word, shell: str, env_lost: str | None) -> None:
        """The word is code for ``shell``: its placements are expanded there."""
        inner = {p.start: p for p in scan(word.text, depth=self.deeper(), bad=self.bad)}
        self.depth -= 1
        self.output_is_code(word, "shell-output", shell)
        for index, offset in word.marks:
            outer = self.found[index]
            p = inner.get(offset)
            if p is None:
                self.found[index] = replace(
                    outer, chain=(*outer.chain, "escaped"), shells=(shell,), env_lost=env_lost
                )
                continue
            self.found[index] = replace(
                outer,
                chain=(*outer.chain, *p.chain),
                shells=(shell, *p.shells),
                env_lost=env_lost or p.env_lost,
                number=outer.number or p.number,
            )

    def output_is_code(self, word: Word, kind: str, program: str) -> None:
        """Placements in the word's substitutions: their output becomes code."""
        for index in word.substituted:
            p = self.found[index]
            if p.problem is None:
                self.found[index] = replace(p, chain=(*p.chain, kind), shells=(program,))

    def mark(
        self, word: Word, kind: str, program: str | None, *, before: int | None = None
    ) -> None:
        """The placements of ``word`` (before offset ``before``) are where ``kind`` says.

        ``arithmetic`` keeps their quoting: the shell evaluates the word's text
        as an expression, so the value must be a number (checked when rendered).
        """
        for index, offset in word.marks:
            if before is not None and offset >= before:
                continue
            p = self.found[index]
            if kind == "arithmetic":
                self.found[index] = replace(p, number=True)
                continue
            shells = (*p.shells, program) if program else p.shells
            self.found[index] = replace(p, chain=(*p.chain[:-1], kind), shells=shells)

    def end_command(self, words: list[Word]) -> None:
        texts = [w.text for w in words]
        for index, shell, env_lost in command_strings(texts):
            self.command_string(words[index], shell, env_lost)
        for index, program in foreign_code(texts):
            self.mark(words[index], "foreign", program)
            self.output_is_code(words[index], "foreign-output", program)
        start = command_start(texts)
        for k in arithmetic_words(texts, start):
            self.mark(words[k], "arithmetic", None)
        for k in range(start):
            if (m := ARRAY_ASSIGNMENT.match(texts[k])) is not None:  # a[...]=: the subscript
                self.mark(words[k], "arithmetic", None, before=m.end())
        for k, name_part in variable_names(texts):
            equals = texts[k].find("=") if name_part else -1
            self.mark(words[k], "name", None, before=equals if equals >= 0 else None)

    # --- the grammar, as far as quoting goes ----------------------------------------

    def parse_list(self, i: int, *, top: bool = False) -> int:
        """Commands up to the ``)`` that closes a ``$(`` (or the end); returns past it."""
        t, n = self.text, self.n
        state = CommandList()
        while i < n:
            c = t[i]
            word = state.word
            if c == "\\":
                if not t.startswith("\n", i + 1):
                    word.add(t[i + 1 : i + 2])
                i += 2
            elif c == "'":
                i = self.parse_single(i + 1, word)
            elif c == '"':
                word.started = True
                i = self.parse_double(i + 1, word, mode="double", end=n)
            elif c == "`":
                i = self.parse_backtick(i + 1, word, in_double=False)
            elif c == "$":
                i = self.parse_dollar(i, word, "none")
            elif c == "#" and not word.started:
                newline = t.find("\n", i)
                i = n if newline < 0 else newline
            elif c in " \t":
                state.end_word()
                i += 1
            elif c == "\n":
                self.end_list_command(state)
                i = self.read_heredocs(i + 1, state.heredocs)
                state.heredocs = []
            elif c in ";&|":
                self.end_list_command(state)
                i += 1
            elif c == "(" and t.startswith("((", i) and not word.started and state.no_name():
                i = self.parse_arithmetic(i + 2)
            elif c == "(":
                state.depth += 1
                self.end_list_command(state)
                i += 1
            elif c == ")":
                self.end_list_command(state)
                i += 1
                if state.depth > 0:
                    state.depth -= 1
                elif not state.cases and not top:
                    return i
            elif t.startswith("<<", i) and not t.startswith("<<<", i):
                state.end_word()
                i, heredoc = self.parse_heredoc_operator(i + 2, state.words)
                state.heredocs.append(heredoc)
            elif c in "<>":
                state.end_word()
                state.herestring_next = t.startswith("<<<", i)
                while i < n and t[i] in "<>&":
                    i += 1
            else:
                word.add(c)
                i += 1
        self.end_list_command(state)
        self.read_heredocs(n, state.heredocs)
        return i

    def end_list_command(self, state: CommandList) -> None:
        state.end_word()
        words = state.words
        self.end_command(words)
        texts = [w.text for w in words] if state.herestrings else []
        shell = reads_stdin_script(texts) if texts else None
        program = reads_stdin_code(texts) if texts and shell is None else None
        for here in state.herestrings:
            if shell is not None:
                self.command_string(here, *shell)
            elif program is not None:
                self.mark(here, "foreign", program)
                self.output_is_code(here, "foreign-output", program)
        state.herestrings = []
        state.words = []

    def parse_single(self, i: int, word: Word) -> int:
        t = self.text
        close = t.find("'", i)
        end = self.n if close < 0 else close
        last = i
        for m in VARIABLE.finditer(t, i, end):
            word.add(t[last : m.start()])
            self.place(m, ("single",), word)
            last = m.end()
        word.add(t[last:end])
        return end + 1

    def parse_ansi(self, i: int, word: Word) -> int:
        """``$'...'`` (bash): no expansion inside; ``\\'`` does not end it."""
        t = self.text
        start = i
        while i < self.n and t[i] != "'":
            i += 2 if t[i] == "\\" else 1
        end = min(i, self.n)
        last = start
        for m in VARIABLE.finditer(t, start, end):
            word.add(t[last : m.start()])
            self.place(m, ("ansi",), word)
            last = m.end()
        word.add(t[last:end])
        return end + 1

    def parse_double(self, i: int, word: Word, *, mode: str, end: int) -> int:
        """Inside ``"..."`` (mode ``double``) or an unquoted here-document body (``heredoc``)."""
        t = self.text
        special = '$`"\\\n' if mode == "double" else "$`\\\n"
        while i < end:
            c = t[i]
            if c == '"' and mode == "double":
                return i + 1
            if c == "\\" and i + 1 < end and t[i + 1] in special:
                if t[i + 1] != "\n":
                    word.add(t[i + 1])
                i += 2
            elif c == "`":
                i = self.parse_backtick(i + 1, word, in_double=mode == "double")
            elif c == "$":
                i = self.parse_dollar(i, word, mode)
            else:
                word.add(c)
                i += 1
        return i

    def parse_dollar(self, i: int, word: Word, quoting: str) -> int:
        t = self.text
        m = VARIABLE.match(t, i)
        if m:
            self.place(m, (quoting,), word)
            return m.end()
        if t.startswith("$((", i):
            word.add("_")
            return self.parse_arithmetic(i + 3)
        if t.startswith("$[", i):  # bash's old form of $(( ))
            word.add("_")
            return self.parse_arithmetic(i + 2, close="]")
        if t.startswith("$(", i):
            word.add("_")
            self.deeper()
            before = len(self.found)
            end = self.parse_list(i + 2)
            word.substituted.extend(range(before, len(self.found)))
            self.depth -= 1
            return end
        if t.startswith("${", i):
            return self.parse_parameter(i + 2, word, quoting)
        if t.startswith("$'", i) and quoting == "none":
            return self.parse_ansi(i + 2, word)
        word.add("$")
        return i + 1

    def parse_parameter(self, i: int, word: Word, quoting: str) -> int:
        """``${name...}`` of the shell's own: a subscript in it is arithmetic."""
        t = self.text
        word.add("${")
        depth = 0
        why = bad_parameter(t[i : i + 200])
        if why is not None:
            close = t.find("}", i)
            self.bad.append(
                bad_parameter_message(t[i - 2 : self.n if close < 0 else close + 1], why)
            )
        while i < self.n:
            m = VARIABLE.match(t, i)
            if m:
                self.place(m, ("arithmetic" if depth else quoting,), word)
                i = m.end()
                continue
            c = t[i]
            word.add(c)
            i += 1
            if c == "[":
                depth += 1
            elif c == "]":
                depth = max(0, depth - 1)
            elif c == "}":
                break
        return i

    def parse_arithmetic(self, i: int, *, close: str = ")") -> int:
        """``$(( ... ))``, ``(( ... ))`` or ``$[ ... ]``: every value in it is an expression.

        A command substitution in it is a command whose output becomes part
        of the expression: the values in that command are refused as well.
        """
        t = self.text
        opening = "(" if close == ")" else "["
        depth = 0
        while i < self.n:
            m = VARIABLE.match(t, i)
            if m:
                self.place(m, ("arithmetic",), None)
                i = m.end()
                continue
            if t.startswith("$(", i) and not t.startswith("$((", i):
                self.deeper()
                before = len(self.found)
                i = self.parse_list(i + 2)
                self.depth -= 1
                for index in range(before, len(self.found)):
                    p = self.found[index]
                    if p.problem is None:
                        self.found[index] = replace(p, chain=(*p.chain, "arithmetic-output"))
                continue
            c = t[i]
            i += 1
            if c == opening:
                depth += 1
            elif c == close:
                if depth == 0 and close == "]":
                    return i
                if depth == 0 and t.startswith(")", i):
                    return i + 1
                depth = max(0, depth - 1) if close == "]" else depth - 1
        return i

    def parse_backtick(self, i: int, word: Word, *, in_double: bool) -> int:
        """```...```: a new command; ``\\$``, ``\\``` and ``\\\\`` lose their backslash."""
        t = self.text
        keep = '$`\\"' if in_double else "$`\\"
        body: list[str] = []
        offsets: list[int] = []
        while i < self.n and t[i] != "`":
            if t[i] == "\\" and i + 1 < self.n:
                if t[i + 1] not in keep:
                    body.append("\\")
                    offsets.append(i)
                body.append(t[i + 1])
                offsets.append(i + 1)
                i += 2
                continue
            body.append(t[i])
            offsets.append(i)
            i += 1
        offsets.append(i)
        inner = scan("".join(body), depth=self.deeper(), bad=self.bad)
        self.depth -= 1
        word.substituted.extend(range(len(self.found), len(self.found) + len(inner)))
        self.adopt(inner, "backtick-double" if in_double else "backtick", offsets)
        word.add("_")
        return i + 1

    def parse_heredoc_operator(self, i: int, words: list[Word]) -> tuple[int, Heredoc]:
        t = self.text
        strip = t.startswith("-", i)
        i += strip
        while i < self.n and t[i] in " \t":
            i += 1
        start = i
        while i < self.n and t[i] not in " \t\n;&|<>()":
            if t[i] in "'\"":
                close = t.find(t[i], i + 1)
                i = self.n if close < 0 else close + 1
            else:
                i += 1
        raw = t[start:i]
        try:
            delimiter = "".join(shlex.split(raw)) if raw else ""
        except ValueError:
            delimiter = raw
        quoted = any(q in raw for q in "'\"\\")
        return i, Heredoc(delimiter, quoted, strip, words, (start, i))

    def unquote(self, heredoc: Heredoc, start: int, end: int) -> bool:
        """Whether to write a quoted delimiter unquoted (its body has variables); if so, do."""
        if not self.root or not _PLAIN_DELIMITER.fullmatch(heredoc.delimiter):
            return False
        if VARIABLE.search(self.text, start, end) is None:
            return False
        self.edits.append((*heredoc.span, heredoc.delimiter))
        return True

    def quoted_body(self, start: int, end: int, body: Word, quoting: str, *, edit: bool) -> None:
        """A here-document body that is not expanded: its variables, and (``edit``) its
        text escaped for an unquoted delimiter."""
        t = self.text
        last = start
        for m in VARIABLE.finditer(t, start, end):
            body.add(t[last : m.start()])
            if edit:
                self.edits.append((last, m.start(), _heredoc_escape(t[last : m.start()])))
            self.place(m, (quoting,), body)
            last = m.end()
        body.add(t[last:end])
        if edit:
            self.edits.append((last, end, _heredoc_escape(t[last:end])))

    def read_heredocs(self, i: int, heredocs: list[Heredoc]) -> int:
        """The bodies of the here-documents started on the line that just ended."""
        t = self.text
        for heredoc in heredocs:
            start = i
            end = self.n
            while i < self.n:
                newline = t.find("\n", i)
                stop = self.n if newline < 0 else newline
                line = t[i:stop]
                if (line.lstrip("\t") if heredoc.strip_tabs else line) == heredoc.delimiter:
                    end = i
                    i = stop + 1
                    break
                i = stop + 1
            else:
                i = self.n
            words = [w.text for w in heredoc.words]
            shell = reads_stdin_script(words)
            body = Word()
            if heredoc.quoted and shell is None and self.unquote(heredoc, start, end):
                self.quoted_body(start, end, body, "heredoc", edit=True)
            elif heredoc.quoted:
                self.quoted_body(start, end, body, "heredoc-quoted", edit=False)
            else:
                self.parse_double(start, body, mode="heredoc", end=end)
            if shell is not None:
                self.command_string(body, *shell)
            elif (program := reads_stdin_code(words)) is not None:
                self.mark(body, "foreign", program)
                self.output_is_code(body, "foreign-output", program)
        return i


def _heredoc_escape(text: str) -> str:
    """Text of a quoted here-document as the body of an unquoted one: unchanged (an
    escaped ``$${name}`` as the text ``${name}``)."""
    return re.sub(r"([\\$`])", r"\\\1", ESCAPED.sub(r"\1", text))
