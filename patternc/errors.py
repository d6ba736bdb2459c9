"""Source spans and the one error type users see.

Every error that a user's input can cause is a `PatternError` carrying where it happened
(`Span`), what went wrong and how to fix it; `str(err)` is the compiler-style report:

    llm.pat:3:9: error: unknown primitive 'windw'
        causal & windw(1024)
                 ^~~~~
    hint: did you mean 'window'?
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass


@dataclass(frozen=True)
class Source:
    """A piece of pattern text and the file it came from."""

    text: str
    filename: str = "<pattern>"

    def line(self, lineno: int) -> str:
        lines = self.text.splitlines()
        return lines[lineno - 1] if 0 < lineno <= len(lines) else ""


@dataclass(frozen=True)
class Span:
    """A 1-based line/column range in a `Source` (end column exclusive, same line if possible)."""

    source: Source
    line: int
    column: int
    end_line: int | None = None
    end_column: int | None = None

    def __str__(self) -> str:
        return f"{self.source.filename}:{self.line}:{self.column}"

    @classmethod
    def from_offsets(cls, source: Source, start: int, end: int) -> Span:
        start = max(0, min(start, len(source.text)))
        line = source.text.count("\n", 0, start) + 1
        column = start - (source.text.rfind("\n", 0, start) + 1) + 1
        end = max(start, min(end, len(source.text)))
        end_line = source.text.count("\n", 0, end) + 1
        end_column = end - (source.text.rfind("\n", 0, end) + 1) + 1
        return cls(source, line, column, end_line, end_column)


class PatternError(ValueError):
    """A pattern that can't be parsed, checked or run, with where and how to fix it.

    Attributes: `message`, `span` (a `Span` or None), `hint` (str or None), and the
    shortcuts `filename`, `line`, `column`.
    """

    def __init__(self, message: str, span: Span | None = None, hint: str | None = None):
        self.message = message
        self.span = span
        self.hint = hint
        super().__init__(self.format())

    @property
    def filename(self) -> str | None:
        return self.span.source.filename if self.span else None

    @property
    def line(self) -> int | None:
        return self.span.line if self.span else None

    @property
    def column(self) -> int | None:
        return self.span.column if self.span else None

    def with_span(self, span: Span | None) -> PatternError:
        """This error located at `span` unless it already has a location."""
        return self if self.span is not None or span is None else PatternError(self.message, span, self.hint)

    def format(self) -> str:
        if self.span is None:
            out = f"error: {self.message}"
        else:
            s = self.span
            text = s.source.line(s.line)
            width = 1
            if s.end_line == s.line and s.end_column and s.end_column > s.column:
                width = s.end_column - s.column
            width = max(1, min(width, len(text) - s.column + 1)) if text else 1
            caret = " " * (s.column - 1) + "^" + "~" * (width - 1)
            out = f"{s}: error: {self.message}"
            if text:
                out += f"\n    {text}\n    {caret}"
        if self.hint:
            out += f"\nhint: {self.hint}"
        return out


def closest(name: str, candidates) -> str | None:
    """The candidate most like `name`, for 'did you mean' hints."""
    found = difflib.get_close_matches(name, sorted(candidates), n=1, cutoff=0.6)
    return found[0] if found else None
