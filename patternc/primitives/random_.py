"""`random(r, block=b, seed=s)`: BigBird's random attention: every query block sees `r` key
blocks drawn without replacement (`min(r, ceil(N/b))` of them), deterministically from `seed`, the
head index and the key length in blocks `ceil(N/b)`: a different key length draws afresh. Query
blocks are blocks of positions (`p // b`, `p = q + N - M` for query row q) and the table is keyed
by them, one row per block of positions 0..N-1: the last M queries over N keys draw what the last
M rows of N x N attention draw (chunked prefill). Key blocks are taken whole, the last one
possibly short. `count`, `seed` and `block` can't use `h`.

    random(1, block=2)
    ..##..
    ..##..
    ##....
    ##....
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..ir.expr import Term
from .base import MAX_INTERVALS, Primitive, param
from .tables import lookup, table_slot


@lru_cache(maxsize=256)
def random_table(count: int, seed: int, head: int, n_q: int, n_k: int) -> np.ndarray:
    """bool [n_q, n_k]: `count` distinct key blocks per query block."""
    rng = np.random.default_rng([seed, head])
    chosen = np.argsort(rng.random((n_q, n_k)), axis=1)[:, : min(count, n_k)]
    table = np.zeros((n_q, n_k), dtype=bool)
    np.put_along_axis(table, chosen, True, axis=1)
    table.flags.writeable = False
    return table


@dataclass(frozen=True)
class Random(Primitive):
    name = "random"
    per_head_tables = True
    signature = "random(count, block=b, seed=0)"
    head_invariant = ("block", "count", "seed")
    count: Term = param(doc="random key blocks per query block")
    seed: Term = param(Term.const(0), doc="random seed")

    def check(self, p, ctx):
        super().check(p, ctx)
        self.positive(p, "count")
        self.positive(p, "seed", allow_zero=True)

    @classmethod
    def strategy(cls, grid=None):
        from hypothesis import strategies as st  # a test dependency only

        @st.composite
        def texts(draw):
            count, seed = draw(st.integers(1, 4)), draw(st.integers(0, 9))
            if draw(st.integers(0, 3)) == 0:  # on tokens: `count` random keys per query
                return f"random({count}, seed={seed})"
            return f"random({count}, block={draw(st.integers(4, 64))}, seed={seed})"

        return texts()

    def rule(self, p, ctx, q, k):
        return lookup(self.table(p, ctx), ctx.h, q, k, slot=table_slot(self, ctx))

    def table(self, p, ctx):
        # lazy: a kernel's traced predicate has no lengths yet, and reads the table as an argument
        # rows: blocks of query positions, which run over the keys' (0..N-1), whatever M is
        return lambda head: random_table(int(p.count), int(p.seed), head, int(ctx.N), int(ctx.N))

    def rule_band(self, p, ctx, q0, q1):
        # the key blocks drawn for each query block of the range (one interval per draw)
        table = self.table(p, ctx)(int(ctx.h))
        n_q, n_k = table.shape
        per_row = min(int(p.count), n_k)
        span = int(np.max(q1 - q0, initial=1))
        if span * per_row > MAX_INTERVALS:
            return super().rule_band(p, ctx, q0, q1)
        drawn = np.nonzero(table)[1].reshape(n_q, per_row)  # each row's key blocks
        bands = []
        for j in range(span):
            row = q0 + j
            inside = (row < q1) & (row >= 0) & (row < n_q)  # positions before key 0 draw nothing
            for key in drawn[np.clip(row, 0, n_q - 1)].T:
                bands.append((np.where(inside, key, 0), np.where(inside, key + 1, 0)))
        return bands

    def count_atoms(self, p, b, atoms):
        # in expectation: a key block is one of the row's draws with probability count / (N / b)
        return atoms.one(atoms.sample((b, p.seed), p.count * b, b))

    def count_alone(self, p, atoms):
        b = p.block or 1
        return atoms.closed(p.count * b, period=b, n0=p.count * b, cost="O(N*w)", note=f"seed {p.seed}")
