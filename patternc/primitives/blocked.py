"""`blocked(b)`: `q // b == k // b` (block-diagonal, chunked attention).

    ##..
    ##..
    ..##
    ..##
"""
from __future__ import annotations

from dataclasses import dataclass

from ..ir.expr import Term
from .base import Primitive, param


@dataclass(frozen=True)
class Blocked(Primitive):
    name = "blocked"
    signature = "blocked(size, block=b)"
    size: Term = param(doc="tokens per diagonal block")

    def check(self, p, ctx):
        super().check(p, ctx)
        self.positive(p, "size")

    def exact_on_strided(self):
        return False  # its rule divides token indices

    @classmethod
    def strategy(cls, grid=None):
        from hypothesis import strategies as st  # a test dependency only

        return st.integers(1, 128).map(lambda b: f"blocked({b})")

    def rule(self, p, ctx, q, k):
        return q // p.size == k // p.size

    def rule_band(self, p, ctx, q0, q1):
        return [(q0 // p.size * p.size, ((q1 - 1) // p.size + 1) * p.size)]

    def count_atoms(self, p, b, atoms):
        s = p.size * b
        return atoms.one(atoms.key(atoms.End(s, s, 0, 0), atoms.End(s, s, 0, s - 1)))
