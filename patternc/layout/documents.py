"""Packed documents on the host: the layout of a packed sequence in absolute tiles, and the
FlexAttention `mask_mod` that goes with it (semantics: `patternc.ir.documents`).

Kernels don't need this: they walk the pattern's own layout in document-relative tiles, from a
table built on the device (`codegen/programs.py`). This is for inspection and for comparing with
FlexAttention: `pattern.layout(N, documents=cu).to_flex_block_mask()`.

Each document's tiles are its own layout's (at the packed length: a document is never longer)
moved to where the document starts, so a document tile covers up to 2 x 2 absolute tiles. Those
absolute tiles are the candidates; each one's share of the document is classified by the rule
as the layout builder classifies tiles (interval arithmetic, refined where undecided), so the
layout is exact: a tile is visited if a pair in it is visible, full if every pair is (only
within one document: pairs across documents are hidden).
"""
from __future__ import annotations

import numpy as np

from ..ir.context import Context
from ..ir.documents import boundaries, check_pattern
from ..ir.expr import Interval
from ..ir.pattern import Pattern, under_causal
from .build import classify, settle
from .cache import cached_layout
from .layout import FULL, PARTIAL, Layout


def document_layout(pattern: Pattern, N: int, heads: int | None, block_m: int, block_n: int, documents,
                    device="cpu") -> Layout:
    """`Pattern.layout(N, documents=...)`: the packed sequence's layout in absolute tiles."""
    import torch

    check_pattern(pattern, heads)
    bounds = boundaries(documents, N)
    sections = pattern.sections(heads)
    H = sections[-1].hi + 1
    own = cached_layout(pattern, N, N, H, block_m, block_n, "natural", "cpu")
    moved: dict[int, tuple] = {}
    per_head = []
    for h, tiles in enumerate(own._tiles):
        if id(tiles) not in moved:  # heads that share their tiles share the rule
            node = next(s.expr for s in sections if s.lo <= h <= s.hi)
            ctx = Context(N, N, h, None, {"causal": under_causal(node)})
            moved[id(tiles)] = _absolute(tiles, node, ctx, bounds, N, block_m, block_n)
        per_head.append(moved[id(tiles)])
    return Layout.from_tiles(per_head, N, N, block_m, block_n, pattern=pattern, device=device,
                             data={"documents": torch.tensor(bounds, dtype=torch.int32)})


def _absolute(tiles, node, ctx, bounds: list[int], N: int, bm: int, bn: int):
    """(qt, kt, kind) in absolute tiles from one head's document-relative tiles: the absolute
    tiles each document's tiles cover, then each one's share of the document classified by the
    rule (intervals, refined where undecided), as the layout builder does."""
    qt, kt, kind = tiles
    n_kt = -(-N // bn)
    keys, visible, full = [], [], []
    for start, end in zip(bounds[:-1], bounds[1:]):
        length = end - start
        inside = (qt * bm < length) & (kt * bn < length)
        if not inside.any():
            continue
        q0, k0 = start + qt[inside] * bm, start + kt[inside] * bn
        q1, k1 = np.minimum(q0 + bm, end), np.minimum(k0 + bn, end)
        covered = []
        for dq in (0, 1):  # the up to 2 x 2 absolute tiles a document tile covers
            for dk in (0, 1):
                Q, K = q0 // bm + dq, k0 // bn + dk
                covered.append((Q * n_kt + K)[(Q * bm < q1) & (K * bn < k1)])
        tile_keys = np.unique(np.concatenate(covered))
        Q, K = tile_keys // n_kt, tile_keys % n_kt
        # the tile's share of the document, in document positions (inclusive ends)
        q = Interval(np.maximum(Q * bm, start) - start, np.minimum((Q + 1) * bm, end) - 1 - start)
        k = Interval(np.maximum(K * bn, start) - start, np.minimum((K + 1) * bn, end) - 1 - start)
        truth, undecided = classify(node, ctx, q, k, bm, bn)
        anyv, allv = truth.can_true.copy(), ~truth.can_false
        if undecided.any():
            idx = np.nonzero(undecided)[0]
            anyv[idx], allv[idx] = settle(node, ctx, Interval(q.lo[idx], q.hi[idx]), Interval(k.lo[idx], k.hi[idx]),
                                          bm, bn)
        # (tiles are clipped at N, as the layout builder's)
        within = ((Q * bm >= start) & (np.minimum((Q + 1) * bm, N) <= end) & (K * bn >= start)
                  & (np.minimum((K + 1) * bn, N) <= end))
        keys.append(tile_keys)
        visible.append(anyv)
        full.append(allv & within)
    if not keys:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int8)
    all_keys, all_visible, all_full = np.concatenate(keys), np.concatenate(visible), np.concatenate(full)
    tile_keys, inverse = np.unique(all_keys, return_inverse=True)
    seen = np.bincount(inverse, weights=all_visible, minlength=len(tile_keys)) > 0
    # a tile touched by two documents is never full (pairs across them are hidden)
    is_full = np.bincount(inverse, weights=all_full, minlength=len(tile_keys)) == np.bincount(inverse)
    kinds = np.where(is_full, FULL, PARTIAL).astype(np.int8)[seen]
    return tile_keys[seen] // n_kt, tile_keys[seen] % n_kt, kinds


def document_mask_mod(pattern: Pattern, N: int, heads: int | None, documents):
    """A FlexAttention `mask_mod` over packed documents: same document, and the pattern's rule
    at positions from the document's first token."""
    import torch

    check_pattern(pattern, heads)
    bounds = torch.tensor(boundaries(documents, N), dtype=torch.int64)
    tokens = torch.arange(N)
    doc_of = torch.searchsorted(bounds[1:], tokens, right=True)
    # made on every device a mask_mod may be traced on (it can't move tensors while traced)
    starts = {kind: bounds[doc_of].to(kind) for kind in ("cpu", "cuda")[:1 + torch.cuda.is_available()]}
    docs = {kind: doc_of.to(kind) for kind in starts}
    inner = pattern.mask_mod(N, N, heads)

    def mask_mod(b, h, q_idx, kv_idx):
        doc, start = docs[q_idx.device.type], starts[q_idx.device.type]
        first = start[q_idx]
        return (doc[q_idx] == doc[kv_idx]) & inner(b, h, q_idx - first, kv_idx - first)

    return mask_mod


def document_programs(layout: Layout, bounds: list[int]):
    """(full, partial) int64 `[H x programs]`: the tiles each program of a packed-documents kernel
    visits, one program per (head, document, document tile), from `layout` (the pattern's own,
    in document-relative tiles, natural order): its row's tiles before the document's end."""
    bm, bn = layout.block_m, layout.block_n
    full, partial = [], []
    for qt, kt, kind in layout._tiles:
        for start, end in zip(bounds[:-1], bounds[1:]):
            rows, cols = -(-(end - start) // bm), -(-(end - start) // bn)
            keep = (qt < rows) & (kt < cols)
            full.append(np.bincount(qt[keep & (kind == FULL)], minlength=rows))
            partial.append(np.bincount(qt[keep & (kind == PARTIAL)], minlength=rows))
    if not full:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(full).astype(np.int64), np.concatenate(partial).astype(np.int64)
