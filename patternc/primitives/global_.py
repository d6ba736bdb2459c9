"""`global(i, j, a..b, ...)`: global tokens (Longformer, BigBird): a query that is global sees
every key, and every query sees the global keys. Ranges `a..b` include both ends.

    global(1)
    .#..
    ####
    .#..
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import PatternError
from ..ir.expr import Term
from .base import Primitive, describe, format_value


@dataclass(frozen=True)
class Global(Primitive):
    name = "global"
    signature = "global(i, j, a..b, ...)"
    tokens: tuple = ()  # Terms and ("range", lo, hi) items

    @classmethod
    def params_spec(cls):
        return [f for f in super().params_spec() if f.name == "tokens"]

    @classmethod
    def from_call(cls, args, kwargs, span=None):
        for name, (_, sp) in kwargs.items():
            raise PatternError(f"global() takes no keyword arguments, got '{name}'", sp or span,
                               f"usage: {cls.signature}")
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
        node = cls(tuple(items), span=span)
        node.check(node.constant_params(), None)
        return node

    def constant_params(self):
        from types import SimpleNamespace

        def const(t):
            return t.value if t.is_const else None

        return SimpleNamespace(tokens=tuple(("range", const(i[1]), const(i[2])) if isinstance(i, tuple) else const(i)
                                            for i in self.tokens))

    def check(self, p, ctx):
        for item in p.tokens:
            lo, hi = (item[1], item[2]) if isinstance(item, tuple) else (item, item)
            if isinstance(lo, int) and lo < 0 or isinstance(hi, int) and hi < 0:
                self.fail(None, f"token indices must be >= 0, got {format_value(item) if not isinstance(item, tuple) else f'{lo}..{hi}'}")
            if isinstance(lo, int) and isinstance(hi, int) and hi < lo:
                self.fail(None, f"empty range {lo}..{hi}", "ranges a..b include both ends and need a <= b")

    def _ranges(self, p):
        return [(i[1], i[2], False) if isinstance(i, tuple) else (i, i, True) for i in p.tokens]

    def rule(self, p, ctx, q, k):
        hit = False
        for lo, hi, single in self._ranges(p):
            if single:
                hit = hit | (q == lo) | (k == lo)
            else:
                hit = hit | (q >= lo) & (q <= hi) | (k >= lo) & (k <= hi)
        return hit

    def rule_band(self, p, ctx, q0, q1):
        bands, rows_global = [], np.zeros_like(q0, dtype=bool)
        for lo, hi, _ in self._ranges(p):
            bands.append((np.full_like(q0, lo), np.full_like(q0, hi + 1)))
            rows_global |= (q0 <= hi) & (q1 > lo)
        bands.append((np.zeros_like(q0), np.where(rows_global, ctx.N, 0)))
        return bands

    def __str__(self):
        return f"global({', '.join(format_value(i) if not isinstance(i, tuple) else f'{i[1]}..{i[2]}' for i in self.tokens)})"
