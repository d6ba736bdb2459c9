"""`segments(w, dilation=r, offset=o)`: LongNet's dilated attention. The sequence is cut into
segments of `w` tokens; inside a segment only the tokens at `(i % w) % r == o` take part, and
they see each other:

    q // w == k // w  and  (q % w) % r == o  and  (k % w) % r == o

`dilation=1`, `offset=0` by default; `offset` may use the head index (`offset=h % r`: LongNet
gives each head its own phase) and must be in `0..r-1` on every head. LongNet's mixture of
segment lengths is a union:

    causal & (segments(2048) | segments(4096, dilation=2, offset=h % 2)
              | segments(8192, dilation=4, offset=h % 4))

When `r` divides `w` a segment's tokens are one residue class modulo `r`, so layouts put the
tokens in residue order (see layout/residue.py) and skip the classes that see nothing.

    segments(4)     segments(4, dilation=2)   segments(4, dilation=2, offset=1)
    ####....        #.#.....                  ........
    ####....        ........                  .#.#....
    ####....        #.#.....                  ........
    ####....        ........                  .#.#....
    ....####        ....#.#.                  ........
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir.expr import Term
from .base import Primitive, as_numpy, param, smallest


@dataclass(frozen=True)
class Segments(Primitive):
    name = "segments"
    signature = "segments(w, dilation=1, offset=0, block=b)"
    head_invariant = ("block", "length", "dilation")
    length: Term = param(doc="tokens per segment")
    dilation: Term = param(Term.const(1), doc="keep every r-th token of a segment")
    offset: Term = param(Term.const(0), doc="which token of each r takes part (0..r-1; may use h)")

    def check(self, p, ctx):
        super().check(p, ctx)
        self.positive(p, "length", "dilation")
        self.positive(p, "offset", allow_zero=True)
        if smallest(p.offset) is None or smallest(p.dilation) is None:
            return  # not known yet (symbolic)
        offset, dilation = np.broadcast_arrays(as_numpy(p.offset), as_numpy(p.dilation))  # per head with h
        bad = np.flatnonzero(offset >= dilation)
        if bad.size:
            self.fail("offset", f"offset must be in 0..{int(dilation.flat[bad[0]]) - 1}, got {int(offset.flat[bad[0]])}",
                      "use an offset like h % r")

    def exact_on_strided(self):
        return False  # its rule divides token indices

    def exact_tiles(self, ctx, block_m, block_n):
        # `(i % w) % r == o` on an interval of tokens can't tell a tile holding no such token
        return self.dilation == Term.const(1)

    def rule(self, p, ctx, q, k):
        same = q // p.length == k // p.length
        if isinstance(p.dilation, int) and p.dilation == 1:
            return same
        return same & ((q % p.length) % p.dilation == p.offset) & ((k % p.length) % p.dilation == p.offset)

    def rule_band(self, p, ctx, q0, q1):
        return [(q0 // p.length * p.length, ((q1 - 1) // p.length + 1) * p.length)]

    def residue_modulus(self, grid):
        r, w = self.constant_step("dilation"), self.constant_step("length")
        return r if r > 1 and w % r == 0 else 1

    def count_atoms(self, p, b, atoms):
        s = p.length * b
        parts = [atoms.key(atoms.End(s, s, 0, 0), atoms.End(s, s, 0, s - 1))]
        if p.dilation > 1:
            if p.length % p.dilation:
                raise atoms.NoClosedForm("segments whose dilation does not divide the length")
            # (i % w) % r == i % r when r divides w: the key's class is the query's, and it is `offset`
            parts += [atoms.residue(b, p.dilation, b, 0), atoms.residue(b, p.dilation, None, p.offset)]
        return atoms.one(*parts)

    @classmethod
    def strategy(cls, grid=None):
        from hypothesis import strategies as st  # a test dependency only

        @st.composite
        def text(draw):  # plain segments, or dilated ones with a constant or per-head offset
            w = draw(st.integers(1, 96))
            r = draw(st.sampled_from([1, 1, 2, 3, 4]))
            if r == 1:
                return f"segments({w})"
            offset = draw(st.sampled_from([str(draw(st.integers(0, r - 1))), f"h % {r}"]))
            return f"segments({w}, dilation={r}, offset={offset})"

        return text()
