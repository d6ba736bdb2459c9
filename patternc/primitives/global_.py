"""`global(i, j, a..b, ...)`: global tokens (Longformer, BigBird): a query that is global sees
every key, and every query sees the global keys. Ranges `a..b` include both ends. With
`block=b` the indices are blocks of b tokens: `global(0, block=64)` makes the first 64 tokens
global, as BigBird's global blocks.

    global(1)
    .#..
    ####
    .#..
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ..errors import PatternError
from ..ir.expr import Term, in_range
from .base import Primitive, _coerce, describe, format_value


@dataclass(frozen=True)
class Global(Primitive):
    name = "global"
    signature = "global(i, j, a..b, ..., block=b)"
    tokens: tuple = ()  # Terms and ("range", lo, hi) items

    @classmethod
    def from_call(cls, args, kwargs, span=None):
        block, block_span = None, None
        for name, (value, sp) in kwargs.items():
            if name != "block":
                raise PatternError(f"global() takes no keyword argument '{name}', only block=", sp or span,
                                   f"usage: {cls.signature}")
            field = next(f for f in dataclasses.fields(cls) if f.name == "block")
            block, block_span = _coerce(cls, field, value, sp or span), sp
            if "h" in block.free_vars():
                raise PatternError("global(): 'block' can't depend on the head index h", sp or span,
                                   "block must be the same on every head; use per-head sections for different ones")
        if not args:
            raise PatternError("global() needs at least one token index or range", span, f"usage: {cls.signature}")
        items = []
        for value, sp in args:
            ok = isinstance(value, Term) and not (value.is_const and isinstance(value.value, bool))
            ok |= isinstance(value, tuple) and len(value) == 3 and value[0] == "range"
            if not ok:
                raise PatternError(f"global(): expected a token index or a range a..b, got {describe(value)}",
                                   sp or span, f"usage: {cls.signature}")
            cls((value,), span=sp or span).check(cls((value,)).constant_params(), None)  # located at the item
            items.append(value)
        node = cls(tuple(items), block=block, span=span, arg_spans=(("block", block_span),) if block_span else ())
        node.check(node.constant_params(), None)
        return node

    def constant_params(self):
        from types import SimpleNamespace

        def const(t):
            return t.value if t.is_const else None

        return SimpleNamespace(tokens=tuple(("range", const(i[1]), const(i[2])) if isinstance(i, tuple) else const(i)
                                            for i in self.tokens),
                               block=None if self.block is None else const(self.block))

    def check(self, p, ctx):
        super().check(p, ctx)
        for item in p.tokens:
            lo, hi = (item[1], item[2]) if isinstance(item, tuple) else (item, item)
            if isinstance(lo, int) and lo < 0 or isinstance(hi, int) and hi < 0:
                shown = f"{lo}..{hi}" if isinstance(item, tuple) else format_value(item)
                self.fail(None, f"token indices must be >= 0, got {shown}")
            if isinstance(lo, int) and isinstance(hi, int) and hi < lo:
                self.fail(None, f"empty range {lo}..{hi}", "ranges a..b include both ends and need a <= b")

    def _ranges(self, p):
        """(lo, hi, single) per item; constant items sorted and merged where they touch, so that a
        tile inside their union is seen to be (interval arithmetic can't join `q == 12` to
        `q in 0..11`)."""
        items = [(i[1], i[2]) if isinstance(i, tuple) else (i, i) for i in p.tokens]
        if all(isinstance(x, (int, np.integer)) for item in items for x in item):
            merged: list[list[int]] = []
            for lo, hi in sorted(items):
                if merged and lo <= merged[-1][1] + 1:
                    merged[-1][1] = max(merged[-1][1], hi)
                else:
                    merged.append([lo, hi])
            return [(lo, hi, lo == hi) for lo, hi in merged]
        return [(lo, hi, isinstance(i, Term) or not isinstance(i, tuple)) for (lo, hi), i in zip(items, p.tokens)]

    @classmethod
    def strategy(cls, grid=None):
        from hypothesis import strategies as st  # a test dependency only

        # one to three tokens or ranges, some past the end of short sequences
        item = st.one_of(st.integers(0, 300).map(str),
                         st.tuples(st.integers(0, 300), st.integers(0, 40)).map(lambda t: f"{t[0]}..{t[0] + t[1]}"))
        return st.lists(item, min_size=1, max_size=3).map(lambda items: f"global({', '.join(items)})")

    def rule(self, p, ctx, q, k):
        hit = False
        for lo, hi, single in self._ranges(p):
            if single:
                hit = hit | (q == lo) | (k == lo)
            else:
                hit = hit | in_range(q, lo, hi) | in_range(k, lo, hi)
        return hit

    def rule_band(self, p, ctx, q0, q1):
        bands, rows_global = [], np.zeros_like(q0, dtype=bool)
        for lo, hi, _ in self._ranges(p):
            bands.append((np.full_like(q0, lo), np.full_like(q0, hi + 1)))
            rows_global |= (q0 <= hi) & (q1 > lo)
        bands.append((np.zeros_like(q0), np.where(rows_global, ctx.N, 0)))
        return bands

    def count_atoms(self, p, b, atoms):  # global rows or global keys, item by item
        out: dict = {}
        for item in p.tokens:
            lo, hi = (item[1], item[2]) if isinstance(item, tuple) else (item, item)
            ends = (atoms.End(0, 1, 0, lo * b), atoms.End(0, 1, 0, hi * b + b - 1))
            rows, keys = atoms.row(*ends), atoms.key(*ends)
            one = atoms.add((atoms.one(rows), 1), (atoms.one(keys), 1), (atoms.one(rows, keys), -1))
            out = atoms.add((out, 1), (one, 1), (atoms.mul(out, one), -1)) if out else one
        return out

    def __str__(self):
        items = [format_value(i) if not isinstance(i, tuple) else f"{i[1]}..{i[2]}" for i in self.tokens]
        if self.block is not None:
            items.append(f"block={self.block}")
        return f"global({', '.join(items)})"
