"""Routed patterns (`topk`) at run time.

A routed pattern's tiles depend on q and k, but only through one bit per (key block, query
block): whether topk chose it. With blocks made of whole tiles, every tile's class is one of
two static layouts, the pattern with topk replaced by `full` (chosen) or by nothing (not
chosen). Both are built analytically once per shape; per call the selection (pool, score,
top-k on the device) picks between them with gathers and a row-wise compaction, all on the
device, without host synchronisation, K/V gathers or N x N buffers. Partial tiles carry the
choice to the kernel in their index entries (bit 30), where the predicate reads it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..errors import PatternError
from ..ir.nodes import Difference, Node
from ..ir.pattern import Pattern, under_causal
from ..layout import FULL, PARTIAL
from ..primitives.full import Full
from ..primitives.topk import TopK, select_blocks

SELECTED_BIT = 1 << 30


def routed_node(pattern: Pattern) -> TopK:
    """The pattern's one topk primitive (several are not supported yet: a clear error)."""
    nodes = [p for p in pattern.primitives() if isinstance(p, TopK)]
    if len(nodes) != 1 or isinstance(pattern.body, tuple):
        raise PatternError("routed patterns with more than one topk, or with per-head sections, are not supported yet",
                           pattern.span)
    return nodes[0]


def _replace(node: Node, target: Node, by: Node) -> Node:
    if node is target:
        return by
    changes = {f.name: _replace(getattr(node, f.name), target, by) for f in dataclasses.fields(node)
               if isinstance(getattr(node, f.name), Node)}
    return dataclasses.replace(node, **changes) if changes else node


def static_variants(pattern: Pattern) -> tuple[Pattern, Pattern, int, int]:
    """(pattern with topk := every key, pattern with topk := no key, k, routing block size)."""
    routed_node(pattern)
    expr = pattern.expr
    target = next(n for n in expr.walk() if isinstance(n, TopK))
    if not (target.block.is_const and target.count.is_const):
        raise PatternError("topk's k and block must be constants at run time", target.span)
    chosen = Pattern(_replace(expr, target, Full()), grid=pattern.grid)
    nothing = Pattern(_replace(expr, target, Difference(Full(), Full())), grid=pattern.grid)
    return chosen, nothing, target.count.value, target.block.value


@dataclass(frozen=True, eq=False)
class RoutedPlan:
    """Per head, the candidate tiles (union of both static layouts) sorted by (query, key) tile,
    with their class when chosen / not chosen: int tensors `[H, P]` on the device."""

    block: int
    block_m: int
    block_n: int
    M: int
    N: int
    cand_qt: object
    cand_kt: object
    class_chosen: object
    class_other: object
    row_start: object  # index of the first candidate of each candidate's row
    width: int  # most candidates in one row: the index tables' width
    row_order: object  # [H, Mt], longest rows first (as static layouts)


@lru_cache(maxsize=64)
def routed_plan(pattern: Pattern, M: int, N: int, heads: int, block_m: int, block_n: int, device: str) -> RoutedPlan:
    import torch

    chosen, nothing, _, block = static_variants(pattern)
    if block % block_m or block % block_n:
        raise PatternError(f"topk(block={block}) needs tiles that divide it, got {block_m}x{block_n}", pattern.span,
                           "pick block_m and block_n dividing the routing block")
    a = chosen.layout(M, N, heads=heads, block_m=block_m, block_n=block_n, order="natural")
    b = nothing.layout(M, N, heads=heads, block_m=block_m, block_n=block_n, order="natural")
    n_kt = -(-N // block_n)
    per_head = []
    for h in range(heads):
        qa, ka, ca = a._tiles[h]
        qb, kb, cb = b._tiles[h]
        keys = np.union1d(qa * n_kt + ka, qb * n_kt + kb)
        cls_a = np.zeros(len(keys), np.int8)
        cls_b = np.zeros(len(keys), np.int8)
        cls_a[np.searchsorted(keys, qa * n_kt + ka)] = ca
        cls_b[np.searchsorted(keys, qb * n_kt + kb)] = cb
        per_head.append((keys // n_kt, keys % n_kt, cls_a, cls_b))
    P = max(len(t[0]) for t in per_head) or 1
    Mt = -(-M // block_m)
    qt = np.full((heads, P), Mt, np.int64)  # padding: a row past the end, never chosen
    kt = np.zeros((heads, P), np.int64)
    ca = np.zeros((heads, P), np.int8)
    cb = np.zeros((heads, P), np.int8)
    start = np.zeros((heads, P), np.int64)
    width = 1
    for h, (q_, k_, a_, b_) in enumerate(per_head):
        n = len(q_)
        qt[h, :n], kt[h, :n], ca[h, :n], cb[h, :n] = q_, k_, a_, b_
        first = np.searchsorted(q_, q_, side="left")
        start[h, :n] = first
        start[h, n:] = n
        if n:
            width = max(width, int(np.bincount(q_).max()))
    t = lambda x: torch.as_tensor(x, device=device)  # noqa: E731
    return RoutedPlan(block, block_m, block_n, M, N, t(qt), t(kt), t(ca), t(cb), t(start), width, a.row_order.to(device))


def select(q, k, pattern: Pattern):
    """The routed choice: bool `[B, H, ceil(M/b), ceil(N/b)]`, key blocks chosen per query block
    (q `[B, H, M, D]`, k `[B, Hkv, N, D]`), on q's device."""
    import torch

    _, _, count, block = static_variants(pattern)
    causal = under_causal(pattern.expr)
    return torch.stack([select_blocks(q[b], k[b], count, block, causal) for b in range(q.shape[0])])


@dataclass(frozen=True, eq=False)
class RoutedLayout:
    """Index tables per (batch x head) in the static Layout's format (`[B*H, Mt]`,
    `[B*H, Mt, W]`), the choice they came from (`selection [B, H, nQ, nK]`) and `row_order`."""

    kv_num_blocks: object
    kv_indices: object
    full_kv_num_blocks: object
    full_kv_indices: object
    row_order: object
    selection: object
    key_tiles: int

    def block_map(self):
        """int8 `[B*H, Mt, Nt]`: 0 skipped, 1 partial, 2 full (for plots and checks)."""
        import torch

        BH, Mt, _ = self.kv_indices.shape
        out = torch.zeros(BH, Mt, self.key_tiles, dtype=torch.int8)
        for table, counts, kind in ((self.kv_indices, self.kv_num_blocks, PARTIAL),
                                    (self.full_kv_indices, self.full_kv_num_blocks, FULL)):
            table, counts = table.cpu(), counts.cpu()
            b, r, c = (torch.arange(table.shape[2]) < counts[..., None]).nonzero(as_tuple=True)
            out[b, r, (table[b, r, c] & (SELECTED_BIT - 1)).long()] = kind
        return out


def routed_layout(plan: RoutedPlan, selection) -> RoutedLayout:
    """Pick each candidate tile's class by the choice and compact the rows (device-side)."""
    import torch

    B, H = selection.shape[:2]
    Mt = -(-plan.M // plan.block_m)
    heads = torch.arange(H, device=selection.device)[:, None]
    q_block = (plan.cand_qt * plan.block_m // plan.block).clamp(max=selection.shape[2] - 1)
    k_block = plan.cand_kt * plan.block_n // plan.block
    bits = selection[:, heads, q_block, k_block]  # [B, H, P]
    kind = torch.where(bits, plan.class_chosen, plan.class_other)
    rows = plan.cand_qt.expand(B, H, -1)
    out = []
    for want in (PARTIAL, FULL):
        keep = (kind == want) & (rows < Mt)
        before = torch.cumsum(keep, dim=2) - keep.long()
        pos = before - before.gather(2, plan.row_start.expand(B, H, -1).clamp(max=keep.shape[2] - 1))
        counts = torch.zeros(B, H, Mt + 1, dtype=torch.int32, device=selection.device)
        counts.scatter_add_(2, rows.clamp(max=Mt), keep.int())
        value = plan.cand_kt.expand(B, H, -1).to(torch.int32)
        if want == PARTIAL:
            value = value | (bits.int() << 30)
        # dropped candidates land in a spare column (index width) of a spare row (Mt)
        slot_row = torch.where(keep, rows, Mt)
        slot_col = torch.where(keep, pos, plan.width)
        table = torch.zeros(B, H, Mt + 1, plan.width + 1, dtype=torch.int32, device=selection.device)
        flat = (slot_row * (plan.width + 1) + slot_col).view(B, H, -1)
        table.view(B, H, -1).scatter_(2, flat, value)
        out.append((counts[:, :, :Mt].reshape(B * H, Mt).contiguous(),
                    table[:, :, :Mt, :plan.width].reshape(B * H, Mt, plan.width).contiguous()))
    (pn, pi), (fn, fi) = out
    return RoutedLayout(pn, pi, fn, fi, plan.row_order, selection, -(-plan.N // plan.block_n))
