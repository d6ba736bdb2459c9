"""`columns(s, phase=s-1)`: `k % s == phase` (Sparse Transformer's "fixed" summary columns;
`phase=h % s` gives every head its own columns, as S2-Attention). The phase must be in
`0..s-1` on every head: `columns(4, phase=h)` is an error from head 4 on, not an empty mask.

    ...#...#
    ...#...#
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir.expr import Sym, Term
from .base import MAX_INTERVALS, Primitive, as_numpy, param, smallest


@dataclass(frozen=True)
class Columns(Primitive):
    name = "columns"
    signature = "columns(s, phase=s-1, block=b)"
    period: Term = param(doc="distance between visible columns")
    phase: Term | None = param(None, doc="which column of each period is visible")

    @classmethod
    def make(cls, period, phase=None, span=None, arg_spans=(), **params):
        if phase is None:
            phase = (Sym(period) - 1).term
        return cls(period, phase, span=span, arg_spans=arg_spans, **params)

    def check(self, p, ctx):
        super().check(p, ctx)
        self.positive(p, "period")
        if smallest(p.phase) is None or smallest(p.period) is None:
            return  # not known yet (symbolic)
        phase, period = np.broadcast_arrays(as_numpy(p.phase), as_numpy(p.period))  # per head with h
        bad = np.flatnonzero((phase < 0) | (phase >= period))
        if bad.size:
            phase, period = int(phase.flat[bad[0]]), int(period.flat[bad[0]])
            self.fail("phase", f"phase must be in 0..{period - 1}, got {phase}", "use a phase like h % s")

    @classmethod
    def strategy(cls, grid=None):
        from hypothesis import strategies as st  # a test dependency only

        @st.composite
        def texts(draw):  # the default phase, a constant one, or one per head (S2-Attention)
            s = draw(st.integers(1, 40))
            phase = draw(st.sampled_from(["", f", phase={draw(st.integers(0, s - 1))}", f", phase=h % {s}"]))
            return f"columns({s}{phase})"

        return texts()

    def rule(self, p, ctx, q, k):
        return k % p.period == p.phase

    def key_period(self, ctx):
        p = self.params(ctx)
        if np.ndim(p.period):
            return None  # a period per head
        return int(p.period) * (1 if p.block is None else int(p.block))  # reads k // block % period

    def rule_band(self, p, ctx, q0, q1):
        # one key interval per visible column; a plain band when there are too many to list
        starts = np.arange(int(p.phase), int(ctx.N), int(p.period))
        if len(starts) > MAX_INTERVALS:
            return super().rule_band(p, ctx, q0, q1)
        return [(np.full_like(q0, c), np.full_like(q0, c + 1)) for c in starts]

    def count_atoms(self, p, b, atoms):
        if not 0 <= p.phase < p.period:
            return {}
        return atoms.one(atoms.residue(b, p.period, None, p.phase))

    def __str__(self):
        default = (Sym(self.period) - 1).term
        phase = "" if self.phase == default else f", phase={self.phase}"
        block = "" if self.block is None else f", block={self.block}"
        return f"columns({self.period}{phase}{block})"
