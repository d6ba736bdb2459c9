"""Blocks of a longer self-attention: the tiles of queries `q_start..q_start+M` over keys
`k_start..k_start+N` of a sequence of `length` tokens, cut from the whole sequence's layout
(natural order), so a kernel run on the block with its positions (`launch(..., positions=...)`)
visits exactly the whole kernel's tiles there. Blocks start on tile boundaries."""
from __future__ import annotations

from functools import lru_cache

from ..errors import PatternError
from .cache import cached_layout
from .layout import Layout


@lru_cache(maxsize=256)
def block_layout(pattern, length: int, heads: int, block_m: int, block_n: int, q_start: int, M: int, k_start: int,
                 N: int, device: str = "cpu") -> Layout:
    """The layout of one block (see the module); heads that share the whole layout's tiles share
    the block's, and rules that read tables read the whole sequence's."""
    if q_start % block_m or k_start % block_n:
        raise PatternError(f"a block starts at query {q_start} and key {k_start}, not on {block_m} x {block_n} tile "
                           "boundaries", None, "cut the sequence at multiples of the tile sizes")
    if not (0 <= q_start and q_start + M <= length and 0 <= k_start and k_start + N <= length):
        raise PatternError(f"the block of queries {q_start}..{q_start + M - 1} and keys {k_start}..{k_start + N - 1} "
                           f"passes the sequence's {length} tokens")
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
