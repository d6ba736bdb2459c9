"""Block tables: primitives whose rule is a lookup `table[h, Q, K]` (random, topk).

`lookup` evaluates the lookup in every domain: torch index tensors (the reference mask),
intervals (exact tile classification through 2-D prefix sums) and plain ints.
"""
from __future__ import annotations

import numpy as np

from ..ir.expr import Interval, Sym, Truth, _is_torch


def lookup(table_for_head, h, Q, K):
    """`table[h, Q, K]` for `table_for_head(head) -> bool ndarray [nQ, nK]`."""
    if isinstance(Q, Interval) or isinstance(K, Interval):
        head = int(Interval.of(h).lo.reshape(-1)[0])
        return rectangle_truth(_prefix_sums(table_for_head(head)), Interval.of(Q), Interval.of(K))
    if isinstance(Q, Sym) or isinstance(K, Sym):
        raise NotImplementedError("table lookups are not emitted into kernels")
    if _is_torch(Q) or _is_torch(K):
        import torch

        ref = Q if _is_torch(Q) else K
        hs = range(int(h.max()) + 1) if _is_torch(h) else [int(h)]
        table = torch.as_tensor(np.stack([table_for_head(i) for i in hs]), device=ref.device)
        nQ, nK = table.shape[1:]
        hidx = h if _is_torch(h) else 0
        inside = (Q < nQ) & (K < nK)
        return table[hidx, Q.clamp(max=nQ - 1), K.clamp(max=nK - 1)] & inside
    t = table_for_head(int(h))
    return bool(t[Q, K]) if Q < t.shape[0] and K < t.shape[1] else False


def rectangle_truth(sums: np.ndarray, rows: Interval, cols: Interval) -> Truth:
    """Is some / every entry of a bool table true over rectangles rows x cols (exactly, from its
    prefix sums `_prefix_sums(table)`)? Ranges are clipped to the table."""
    n_rows, n_cols = sums.shape[0] - 1, sums.shape[1] - 1
    r0, r1 = np.clip(rows.lo, 0, n_rows), np.clip(rows.hi + 1, 0, n_rows)
    c0, c1 = np.clip(cols.lo, 0, n_cols), np.clip(cols.hi + 1, 0, n_cols)
    count = sums[r1, c1] - sums[r0, c1] - sums[r1, c0] + sums[r0, c0]
    area = np.maximum(r1 - r0, 0) * np.maximum(c1 - c0, 0)
    return Truth(count > 0, count < area)


def _prefix_sums(table: np.ndarray) -> np.ndarray:
    sums = np.zeros((table.shape[0] + 1, table.shape[1] + 1), dtype=np.int64)
    sums[1:, 1:] = table.astype(np.int64).cumsum(0).cumsum(1)
    return sums
