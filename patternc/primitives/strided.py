"""`strided(s)`: `(q - k) % s == 0` (Sparse Transformer's strided pattern).

    #.#.
    .#.#
    #.#.
    .#.#
"""
from __future__ import annotations

from dataclasses import dataclass

from ..ir.expr import Term
from .base import Primitive, param


@dataclass(frozen=True)
class Strided(Primitive):
    name = "strided"
    signature = "strided(stride, block=b)"
    stride: Term = param(doc="distance between visible keys")

    def check(self, p, ctx):
        super().check(p, ctx)
        self.positive(p, "stride")

    def rule(self, p, ctx, q, k):
        return (q - k) % p.stride == 0
