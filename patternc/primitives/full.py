"""`full`: every query sees every key.

    q\\k ####
        ####
        ####
"""
from __future__ import annotations

from dataclasses import dataclass

from .base import Primitive


@dataclass(frozen=True)
class Full(Primitive):
    name = "full"
    signature = "full"
    examples = ("full",)  # the texts the contract tests draw (no parameters to vary)

    def rule(self, p, ctx, q, k):
        return True

    def count_atoms(self, p, b, atoms):
        return {atoms.FULL: 1}
