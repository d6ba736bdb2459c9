"""`window(left, right)`: `q - left <= k <= q + right` (FlashAttention's `window_size`);
`window(w)` is `window(w-1, w-1)`. With `dilation=r`: only `d % r == 0`, `-right*r <= d <= left*r`
(`d = q - k`), so `window(w, dilation=r)` is `d % r == 0 and abs(d) <= (w-1)*r`.

`q` is the query's position (`q + N - M` for query row q when M != N, as every primitive reads
it): with 2048 new queries over 16384 keys, `causal & window(1024)` sees the 1024 keys up to each
query. `window(w)` checks `w >= 1` (also per head, for `window(1 + h)`).

    window(2)       window(2, dilation=2)
    ##....          #.#...
    ###...          .#.#..
    .###..          #.#.#.
    ..###.          .#.#.#
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import PatternError
from ..ir.expr import Sym, Term
from .base import Primitive, param, smallest


@dataclass(frozen=True)
class Window(Primitive):
    name = "window"
    signature = "window(w) or window(left, right), with dilation=1, block=b"
    positional_options = ("right",)
    left: Term = param(doc="keys before the query (or the window size w when right is omitted)")
    right: Term | None = param(None, doc="keys after the query")
    dilation: Term = param(Term.const(1), doc="keep every r-th key only")
    linear_params = {"left": 0, "right": 0}  # @jit makes window(N - M + 1023, M - 1) of q - k < 1024

    @classmethod
    def make(cls, left, right=None, span=None, arg_spans=(), **params):
        if right is None:  # window(w) = window(w-1, w-1)
            if left.is_const and left.value < 1:
                raise PatternError(f"window: size must be >= 1, got {left.value}",
                                   dict(arg_spans).get("left") or span, "window(w) sees w-1 keys on each side")
            left = right = (Sym(left) - 1).term
        return cls(left, right, span=span, arg_spans=arg_spans, **params)

    def check(self, p, ctx):
        super().check(p, ctx)
        smallest_left = smallest(p.left)
        if self.left == self.right and smallest_left is not None and smallest_left < 0:  # written window(w)
            self.fail("left", f"size must be >= 1, got {smallest_left + 1}", "window(w) sees w-1 keys on each side")
        self.positive(p, "left", "right", allow_zero=True)
        self.positive(p, "dilation")

    @classmethod
    def strategy(cls, grid=None):
        from hypothesis import strategies as st  # a test dependency only

        @st.composite
        def texts(draw):  # reaches for lengths up to a few hundred tokens; mostly undilated
            r = draw(st.sampled_from([1, 1, 1, 2, 3, 4, 8]))
            dil = f", dilation={r}" if r != 1 else ""
            if draw(st.booleans()):
                return f"window({draw(st.integers(1, 96))}{dil})"
            return f"window({draw(st.integers(0, 96))}, {draw(st.integers(0, 96))}{dil})"

        return texts()

    def rule(self, p, ctx, q, k):
        d = q - k
        visible = (d <= p.left * p.dilation) & (d >= -(p.right * p.dilation))
        if isinstance(p.dilation, int) and p.dilation == 1:
            return visible
        return visible & (d % p.dilation == 0)

    def rule_band(self, p, ctx, q0, q1):
        return [(q0 - p.left * p.dilation, q1 + p.right * p.dilation)]

    def residue_modulus(self, grid):
        return self.constant_step("dilation")

    def distance_only(self):
        return self.block is None

    def count_atoms(self, p, b, atoms):
        r = p.dilation
        lo, hi = atoms.end(b, b, -p.left * r * b), atoms.end(b, b, p.right * r * b + b - 1)
        return atoms.one(atoms.key(lo, hi), *([atoms.residue(b, r, b, 0)] if r > 1 else []))

    def __str__(self):
        args = [str((Sym(self.left) + 1).term)] if self.left == self.right else [str(self.left), str(self.right)]
        if self.dilation != Term.const(1):
            args.append(f"dilation={self.dilation}")
        if self.block is not None:
            args.append(f"block={self.block}")
        return f"window({', '.join(args)})"
