"""Pattern text -> IR (the grammar `pattern.lark` is package data): `compile` and `load`."""
from __future__ import annotations

from pathlib import Path

from ..errors import PatternError, closest
from ..ir.pattern import Pattern
from .parser import parse_text

__all__ = ["Patterns", "UnknownPattern", "compile", "load", "parse_text"]


def compile(text: str, name: str | None = None, **params) -> Pattern:  # noqa: A001 - the product's verb
    """Parse pattern text into a `Pattern`.

    `text` is a whole file (`let`s and `pattern name(...):` blocks; it must define exactly one
    pattern unless `name` picks one) or a bare pattern body such as `"causal & window(1024)"`.
    Keyword arguments override parameter defaults (`compile(text, w=2048)`).
    """
    named, bare = parse_text(text)
    if bare is not None:
        pattern = bare
    elif name is not None:
        if name not in named:
            guess = closest(name, named)
            raise PatternError(f"no pattern named '{name}'", None,
                               f"did you mean '{guess}'?" if guess else f"patterns: {', '.join(named) or 'none'}")
        pattern = named[name]
    elif len(named) == 1:
        pattern = next(iter(named.values()))
    else:
        raise PatternError(f"the text defines {len(named)} patterns ({', '.join(named) or 'none'}); pick one with name=",
                           None, "or use patternc.load(path) for all of them")
    return pattern.bind(**params) if params else pattern


class Patterns(dict):
    """The named patterns of a file, by name (a dict); a name it lacks is an error with a
    did-you-mean, which is also a `KeyError`."""

    def __init__(self, patterns: dict[str, Pattern], path: Path):
        super().__init__(patterns)
        self.path = path

    def __missing__(self, name):
        guess = closest(str(name), self)
        raise UnknownPattern(f"{self.path} has no pattern named {name!r}", None,
                             f"did you mean '{guess}'?" if guess else f"its patterns: {', '.join(self) or 'none'}")


class UnknownPattern(PatternError, KeyError):
    __str__ = PatternError.__str__


def load(path: str | Path) -> Patterns:
    """The named patterns of a `.pat` file, by name."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise PatternError(f"can't read {path}: {e.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PatternError(f"{path} is not a text file: byte {e.start} is not UTF-8 ({data[e.start]:#04x})", None,
                           "pattern files are UTF-8 text") from None
    if "\0" in text:
        raise PatternError(f"{path} is not a text file: it holds NUL bytes (byte {text.index(chr(0))})", None,
                           "pattern files are UTF-8 text")
    named, bare = parse_text(text, str(path))
    return Patterns({path.stem: bare} if bare is not None else named, path)
