"""`sink(n)`: `k < n` (attention sinks, StreamingLLM).

    ##..
    ##..
    ##..
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir.expr import Term
from .base import Primitive, param


@dataclass(frozen=True)
class Sink(Primitive):
    name = "sink"
    signature = "sink(n, block=b)"
    count: Term = param(doc="number of leading keys every query sees")
    linear_params = {"count": 1}

    def check(self, p, ctx):
        super().check(p, ctx)
        self.positive(p, "count")

    @classmethod
    def strategy(cls, grid=None):
        from hypothesis import strategies as st  # a test dependency only

        return st.integers(1, 300).map(lambda n: f"sink({n})")

    def rule(self, p, ctx, q, k):
        return k < p.count

    def rule_band(self, p, ctx, q0, q1):
        return [(np.zeros_like(q0), np.full_like(q0, p.count))]

    def count_atoms(self, p, b, atoms):
        return atoms.one(atoms.key(None, atoms.end(0, 1, p.count * b - 1)))
