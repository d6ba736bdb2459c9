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
        sums = _prefix_sums(table_for_head(head))
        Q, K = Interval.of(Q), Interval.of(K)
        nQ, nK = sums.shape[0] - 1, sums.shape[1] - 1
        q0, q1 = np.clip(Q.lo, 0, nQ), np.clip(Q.hi + 1, 0, nQ)
        k0, k1 = np.clip(K.lo, 0, nK), np.clip(K.hi + 1, 0, nK)
        count = sums[q1, k1] - sums[q0, k1] - sums[q1, k0] + sums[q0, k0]
        area = np.maximum(q1 - q0, 0) * np.maximum(k1 - k0, 0)
        return Truth(count > 0, count < area)
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


def _prefix_sums(table: np.ndarray) -> np.ndarray:
    sums = np.zeros((table.shape[0] + 1, table.shape[1] + 1), dtype=np.int64)
    sums[1:, 1:] = table.astype(np.int64).cumsum(0).cumsum(1)
    return sums
