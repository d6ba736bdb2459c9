"""`strided(s)`: `(q - k) % s == 0` (Sparse Transformer's strided pattern).

    #.#.
    .#.#
    #.#.
    .#.#
"""
from __future__ import annotations

from dataclasses import dataclass


from ..ir.expr import Term
from .base import MAX_INTERVALS, Primitive, param


@dataclass(frozen=True)
class Strided(Primitive):
    name = "strided"
    signature = "strided(stride, block=b)"
    stride: Term = param(doc="distance between visible keys")

    def check(self, p, ctx):
        super().check(p, ctx)
        self.positive(p, "stride")

    @classmethod
    def strategy(cls, grid=None):
        from hypothesis import strategies as st  # a test dependency only

        return st.integers(1, 40).map(lambda s: f"strided({s})")

    def rule(self, p, ctx, q, k):
        return (q - k) % p.stride == 0

    def residue_modulus(self, grid):
        return self.constant_step("stride")

    def distance_only(self):
        return self.block is None

    def count_atoms(self, p, b, atoms):
        return atoms.one(atoms.residue(b, p.stride, b, 0))

    def rule_band(self, p, ctx, q0, q1):
        # keys at distances j * stride: one interval per j, or a plain band when there are many
        s = int(p.stride)
        reach = max(int(ctx.M), int(ctx.N))
        if 2 * reach // s + 1 > MAX_INTERVALS:
            return super().rule_band(p, ctx, q0, q1)
        return [(q0 - j * s, q1 - j * s) for j in range(-(reach // s) - 1, reach // s + 2)]
