"""`causal`: `k <= p`, the query's position (`p = q + N - M` for query row q: bottom-right
aligned when M != N, as FlashAttention). With `block=b` the rule is on blocks of positions,
`k // b <= p // b`: with `b` dividing `N - M` that is `K <= Q + ceil(N/b) - ceil(M/b)` for query
block Q. Only a token-level `causal & ...` makes routed primitives (`topk`) skip future blocks.

    #...
    ##..
    ###.
    ####
"""
from __future__ import annotations

from dataclasses import dataclass

from .base import Primitive


@dataclass(frozen=True)
class Causal(Primitive):
    name = "causal"
    signature = "causal"
    examples = ("causal",)  # the texts the contract tests draw (no parameters to vary)

    def rule(self, p, ctx, q, k):
        return k <= q

    def rule_band(self, p, ctx, q0, q1):
        return [(q0 * 0, q1)]

    def bounds_causally(self):
        return self.block is None

    def distance_only(self):
        return self.block is None

    def count_atoms(self, p, b, atoms):  # k <= q (M = N), on blocks k // b <= q // b
        return atoms.one(atoms.key(None, atoms.End(b, b, 0, b - 1)))
