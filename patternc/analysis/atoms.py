"""The atom vocabulary: what a primitive's closed form is written in.

A primitive's indicator is a signed sum of conjunctions of atoms, a dict
`{frozenset(atoms): coefficient}`: a key interval `lo(q) <= k <= hi(q)`, a query interval, a key
residue `k // b % m == ...`, or keys drawn at random per row (`sample`), which the analysis
counts in expectation. Each primitive states its own (`Primitive.count_atoms`); this module
is handed to it as the argument `atoms`, since primitives sit below the analysis and don't import
it. Closed forms of a primitive alone (`count_alone`) return `closed(...)`.
"""
from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from .result import Derived, N  # noqa: F401 - N: closed forms are written in it

MAX_TERMS = 512  # inclusion-exclusion terms
FULL = frozenset()  # the empty conjunction: every key


class NoClosedForm(Exception):
    """The derivation can't handle this expression: the analysis measures it instead."""


@dataclass(frozen=True)
class End:
    """An index bound `a * (q // d) + g * N + c` (a key or query index, inclusive)."""

    a: int = 0
    d: int = 1
    g: int = 0
    c: int = 0


@dataclass(frozen=True)
class Lin:
    """`g * N + c`: a parameter that grows with the length."""

    g: int
    c: int

    def __add__(self, o):
        o = o if isinstance(o, Lin) else Lin(0, o)
        return Lin(self.g + o.g, self.c + o.c)

    __radd__ = __add__

    def __neg__(self):
        return Lin(-self.g, -self.c)

    def __sub__(self, o):
        return self + -o

    def __mul__(self, o: int):
        return Lin(self.g * o, self.c * o)

    __rmul__ = __mul__


def end(a: int, d: int, offset) -> End:
    """`a * (q // d) + offset`, the offset an int or a `Lin`."""
    return End(a, d, offset.g, offset.c) if isinstance(offset, Lin) else End(a, d, 0, offset)


def key(lo: End | None, hi: End | None):
    """`lo <= k <= hi` (None: unbounded on that side)."""
    return ("key", lo, hi)


def row(lo: End | None, hi: End | None):
    """`lo <= q <= hi`: the atom holds on these query rows only."""
    return ("row", lo, hi)


def residue(bk: int, m: int, qdiv: int | None, c: int):
    """`(k // bk) % m == ((q // qdiv) + c) % m`, or `== c` when qdiv is None."""
    return ("res", bk, m, qdiv, c)


def sample(family, keys: int, period: int):
    """`keys` keys per query row drawn at random (random's key blocks), so that every key is drawn
    with probability `keys / N` (for N a multiple of `period` and N >= keys), independently of
    the other atoms and of other families' draws; draws of one `family` are nested (the smaller
    inside the larger). The analysis then counts the expected number of keys over the draws."""
    return ("sample", family, keys, period)


def one(*atoms) -> dict:
    """The conjunction of `atoms`, once."""
    return {frozenset(atoms): 1}


def add(*terms) -> dict:
    """`sum(sign * d for d, sign in terms)` of signed sums of conjunctions."""
    out: dict = {}
    for d, sign in terms:
        for conj, c in d.items():
            out[conj] = out.get(conj, 0) + sign * c
    return {k: v for k, v in out.items() if v}


def mul(a: dict, b: dict) -> dict:
    """The product (intersection) of two signed sums of conjunctions."""
    out: dict = {}
    for ca, x in a.items():
        for cb, y in b.items():
            conj = ca | cb
            out[conj] = out.get(conj, 0) + x * y
    if len(out) > MAX_TERMS:
        raise NoClosedForm("too many inclusion-exclusion terms")
    return {k: v for k, v in out.items() if v}


def closed(count, period: int, n0: int, cost: str, note: str = "") -> Derived:
    """A primitive's mean keys per query `count` (an int or a sympy expression in `N`), exact for
    N >= n0 and N a multiple of `period`; `cost` its class (`O(N*w)`, ...), `note` what the basis adds."""
    return Derived("expr", count=sp.sympify(count), period=period, n0=n0, cost=cost, note=note)
