"""The words, commands and here-documents a scan of shell code builds (``shellscan``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.workflow.shellcode import command_start

__all__ = ["CommandList", "Heredoc", "Word"]


@dataclass
class Word:
    """A word (or a here-document body) as the shell will see it once it is unquoted."""

    parts: list[str] = field(default_factory=list)
    length: int = 0
    marks: list[tuple[int, int]] = field(default_factory=list)
    """(placement index, offset in the unquoted text)."""
    substituted: list[int] = field(default_factory=list)
    """Placements inside command substitutions of the word: their output is in its text."""
    started: bool = False

    def add(self, text: str) -> None:
        self.parts.append(text)
        self.length += len(text)
        self.started = True

    @property
    def text(self) -> str:
        return "".join(self.parts)


@dataclass
class Heredoc:
    delimiter: str
    quoted: bool
    strip_tabs: bool
    words: list[Word]
    span: tuple[int, int]
    """Where the delimiter is written after ``<<``."""


@dataclass
class CommandList:
    """The command being read in a list (top level or a ``$( )``)."""

    word: Word = field(default_factory=Word)
    words: list[Word] = field(default_factory=list)
    heredocs: list[Heredoc] = field(default_factory=list)
    herestrings: list[Word] = field(default_factory=list)
    """The words after ``<<<``: the command's standard input."""
    herestring_next: bool = False
    depth: int = 0
    """Open ``(`` subshells."""
    cases: int = 0
    """Open ``case ... esac``: a ``)`` there ends a pattern."""

    def end_word(self) -> None:
        word = self.word
        if word.started:
            if self.herestring_next:
                self.herestrings.append(word)
                self.herestring_next = False
            else:
                if not self.words and word.text in ("case", "esac"):
                    self.cases = max(0, self.cases + (1 if word.text == "case" else -1))
                self.words.append(word)
        self.word = Word()

    def no_name(self) -> bool:
        """No command name yet (so ``((`` is arithmetic): only ``if``, ``for``, ...."""
        texts = [w.text for w in self.words]
        return texts == ["for"] or command_start(texts) == len(texts)
