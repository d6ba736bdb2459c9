"""The Python front end: `@patternc.jit` traces a predicate `(q, k, h) -> bool` into a Pattern,
recognising primitive families where that is exact (`recognize`) and keeping the rest as a
general `predicate` primitive (`predicate`)."""
from .jit import JitPattern, jit, trace
from .predicate import Predicate
from .recognize import recognize

__all__ = ["JitPattern", "Predicate", "jit", "recognize", "trace"]
