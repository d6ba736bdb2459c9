"""Pattern text -> IR (the grammar `pattern.lark` is package data): `compile` and `load`."""
from __future__ import annotations

from pathlib import Path

from ..errors import PatternError, closest
from ..ir.pattern import Pattern
from .parser import parse_text

__all__ = ["compile", "load", "parse_text"]


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


def load(path: str | Path) -> dict[str, Pattern]:
    """The named patterns of a `.pat` file, by name."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise PatternError(f"can't read {path}: {e.strerror}") from None
    named, bare = parse_text(text, str(path))
    if bare is not None:
        return {path.stem: bare}
    return named
