"""patternc: a compiler for sparse attention patterns.

    p = patternc.compile("causal & window(1024)")     # -> Pattern
    p.mask(64)                                        # bool [heads, M, N] reference mask
    p.layout(32768)                                   # block-sparse Layout, built analytically
    out = patternc.attention(q, k, v, p)              # generated Triton kernel
"""
from __future__ import annotations

from pathlib import Path

from .errors import PatternError
from .ir import Pattern

__version__ = "0.1.0"
__all__ = ["Pattern", "PatternError", "attention", "compile", "load", "jit", "reference_attention", "simulate",
           "where", "__version__"]


def compile(text: str, name: str | None = None, **params) -> Pattern:  # noqa: A001 - the product's verb
    """Parse pattern text into a `Pattern`.

    `text` is a whole file (`let`s and `pattern name(...):` blocks; it must define exactly one
    pattern unless `name` picks one) or a bare pattern body such as `"causal & window(1024)"`.
    Keyword arguments override parameter defaults (`compile(text, w=2048)`).
    """
    from .grammar import parse_text

    named, bare = parse_text(text)
    if bare is not None:
        pattern = bare
    elif name is not None:
        if name not in named:
            from .errors import closest

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
    from .grammar import parse_text

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise PatternError(f"can't read {path}: {e.strerror}") from None
    named, bare = parse_text(text, str(path))
    if bare is not None:
        return {path.stem: bare}
    return named


def jit(fn=None, **params):
    """Decorator: trace a predicate `(q, k, h) -> bool expression` into a Pattern (see `patternc.frontend`)."""
    from .frontend import jit as _jit

    return _jit(fn, **params)


def attention(q, k, v, pattern, scale=None, return_lse=False, config=None, return_layout=False):
    """Sparse attention through a generated Triton kernel; see `patternc.runtime.attention`."""
    from .runtime import attention as _attention

    return _attention(q, k, v, pattern, scale=scale, return_lse=return_lse, config=config,
                      return_layout=return_layout)


def reference_attention(q, k, v, pattern, scale=None, return_lse=False):
    """Dense masked attention over `Pattern.mask` (the reference the kernels are tested against)."""
    from .runtime import reference_attention as _reference

    return _reference(q, k, v, pattern, scale=scale, return_lse=return_lse)


def simulate(pattern, M, N=None, heads=None, head_dim=128, dtype="bfloat16", batch=1, device="h100", config=None):
    """Predicted forward time and speedups of `pattern` on a device (a `patternc.sim.Prediction`)."""
    from .sim import simulate as _simulate

    return _simulate(pattern, M, N, heads, head_dim, dtype, batch, device, config)


def where(cond, a, b):
    """`a` where `cond` holds else `b`; usable inside `@patternc.jit` predicates."""
    from .ir.expr import where as _where

    return _where(cond, a, b)
