"""Blocks of a longer self-attention: the tiles of queries `q_start..q_start+M` over keys
`k_start..k_start+N` of a sequence of `length` tokens, cut from the whole sequence's layout
(natural order), so a kernel run on the block with its positions (`launch(..., positions=...)`)
visits exactly the whole kernel's tiles there. Blocks start on tile boundaries.

`order="auto"`: a diagonal block (the same tokens as queries and keys) of a pattern the whole
sequence is laid out class by class for (`layout/residue.py`: dilated and strided rules) keeps
that order, its own classes cut from the whole's, when its tokens split into whole tiles per
class; other blocks stay in natural order."""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..errors import PatternError
from .cache import cached_layout
from .layout import Layout
from .residue import ResidueOrder


@lru_cache(maxsize=256)
def block_layout(pattern, length: int, heads: int, block_m: int, block_n: int, q_start: int, M: int, k_start: int,
                 N: int, device: str = "cpu", order: str = "natural") -> Layout:
    """The layout of one block (see the module); heads that share the whole layout's tiles share
    the block's, and rules that read tables read the whole sequence's."""
    if q_start % block_m or k_start % block_n:
        raise PatternError(f"a block starts at query {q_start} and key {k_start}, not on {block_m} x {block_n} tile "
                           "boundaries", None, "cut the sequence at multiples of the tile sizes")
    if not (0 <= q_start and q_start + M <= length and 0 <= k_start and k_start + N <= length):
        raise PatternError(f"the block of queries {q_start}..{q_start + M - 1} and keys {k_start}..{k_start + N - 1} "
                           f"passes the sequence's {length} tokens")
    if order == "auto" and q_start == k_start and M == N:
        layout = _residue_block(pattern, length, heads, block_m, block_n, q_start, M, device)
        if layout is not None:
            return layout
    whole = cached_layout(pattern, length, length, heads, block_m, block_n, "natural", "cpu")
    q0, k0 = q_start // block_m, k_start // block_n
    rows, cols = -(-M // block_m), -(-N // block_n)
    cut: dict[int, tuple] = {}
    for tiles in whole._tiles:
        if id(tiles) not in cut:
            qt, kt, kind = tiles
            keep = (qt >= q0) & (qt < q0 + rows) & (kt >= k0) & (kt < k0 + cols)
            cut[id(tiles)] = (qt[keep] - q0, kt[keep] - k0, kind[keep])
    layout = Layout.from_tiles([cut[id(t)] for t in whole._tiles], M, N, block_m, block_n, pattern=pattern,
                               device=device)
    if whole.block_tables():  # tables are indexed by positions: the whole sequence's serve every block
        layout._runs_cache["tables"] = tuple(t.to(device) for t in whole.block_tables())
    return layout


def _residue_block(pattern, length, heads, bm, bn, start, M, device) -> Layout | None:
    """The diagonal block's tiles in the whole layout's residue order (class by class), or None
    when the whole isn't in one or the block's classes don't split into whole tiles."""
    whole = cached_layout(pattern, length, length, heads, bm, bn, "auto", "cpu")
    order = whole.permutation
    if not isinstance(order, ResidueOrder) or whole.block_tables():
        return None
    r, L = order.modulus, order.class_len
    if start % (r * bm) or start % (r * bn) or M % (r * bm) or M % (r * bn):
        return None
    first, S = start // r, M // r  # the block's class indices, in every class: first..first+S-1

    def local(pos, block):  # whole layout positions of tiles -> the block's positions (-1: outside)
        cls, index = pos // L, pos % L - first
        inside = (index >= 0) & (index < S)
        return np.where(inside, (cls * S + index) // block, -1)

    cut: dict[int, tuple] = {}
    for tiles in whole._tiles:
        if id(tiles) not in cut:
            qt, kt, kind = tiles
            q, k = local(qt.astype(np.int64) * bm, bm), local(kt.astype(np.int64) * bn, bn)
            keep = (q >= 0) & (k >= 0)
            q, k, kind = q[keep], k[keep], kind[keep]
            sort = np.lexsort((k, q))
            cut[id(tiles)] = (q[sort].astype(qt.dtype), k[sort].astype(kt.dtype), kind[sort])
    return Layout.from_tiles([cut[id(t)] for t in whole._tiles], M, M, bm, bn, pattern=pattern, device=device,
                             permutation=ResidueOrder(r, S))
