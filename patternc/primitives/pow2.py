"""`pow2(block=b)`: distance `D = q//b - k//b` in {0, 1, 2, 4, 8, ...} (PowerAttention).

    #.......
    ##......
    ###.....
    .###....
    #.###...
"""
from __future__ import annotations

from dataclasses import dataclass


from .base import Primitive


@dataclass(frozen=True)
class Pow2(Primitive):
    name = "pow2"
    signature = "pow2(block=b)"
    examples = ("pow2",)  # the texts the contract tests draw (no parameters to vary)

    def rule(self, p, ctx, q, k):
        d = q - k
        return (d == 0) | (d > 0) & ((d & (d - 1)) == 0)

    def exact_tiles(self, ctx, block_m, block_n):
        return False  # D & (D - 1) over a range of D is not tight

    def rule_band(self, p, ctx, q0, q1):
        bands = [(q0, q1)]
        step = 1
        while step < max(int(ctx.M), int(ctx.N)) + 1:
            bands.append((q0 - step, q1 - step))
            step *= 2
        return bands

    def count_alone(self, p, atoms):
        # per query block: distances 0, 1, 2, 4, ... back to block 0; over N = b * 2^m the row sum
        # is b^2 * ((N/b) * log2(N/b) + 1)
        import sympy as sp

        b, N = p.block or 1, atoms.N
        return atoms.closed(b * sp.log(N / b, 2) + sp.Rational(b * b) / N, period=b, n0=b, cost="O(N log N)",
                            note="N / block a power of two")
