"""Pattern -> Layout, analytically.

For every (head, query tile) the key tiles come from three steps, none of which looks at the
M x N mask:
1. candidates: each primitive bounds the keys a query range can see (`band`, key intervals);
   `|` concatenates, `&` intersects, `-` keeps the left side; only candidate tiles are visited.
2. classification: the rule is evaluated by interval arithmetic over each candidate tile
   (`patternc.ir.expr.Interval`), giving empty / partial / full; `| & -` combine the children's
   classifications, and mark the tiles where the combination can't be decided from them
   (two partial operands of `&` or `-`, or of `|` that might fill the tile), as can primitives
   whose interval rule is not tight.
3. refinement: only those undecided tiles are split into quadrants and classified again,
   recursively, until decided; the layout says how many there were (`Layout.refined_tiles`).
Cost: O(candidate tiles) plus, per undecided tile, work along its undecided boundary.
"""
from __future__ import annotations

import numpy as np

from ..errors import PatternError
from ..ir.expr import Interval, Truth
from ..ir.nodes import Difference, Intersect, Node, Union
from ..ir.pattern import Pattern, under_causal
from ..primitives import Context, Primitive
from .layout import FULL, PARTIAL, Layout
from .residue import residue_order

def candidate_tiles(node: Node, ctx: Context, M: int, N: int, bm: int, bn: int, order=None):
    """(query tile, key tile) pairs that may hold a visible element, as two sorted int64 arrays
    (tile indices in the layout's token order)."""
    n_qt, n_kt = -(-M // bm), -(-N // bn)
    q0 = np.arange(n_qt, dtype=np.int64) * bm
    q1 = np.minimum(q0 + bm, M)
    qts, kts = [], []
    bands = order.band(node, ctx, q0, q1) if order is not None else node.band(ctx, q0, q1)
    for lo, hi in bands:
        lo = np.clip(np.broadcast_to(np.asarray(lo, dtype=np.int64), q0.shape), 0, N)
        hi = np.clip(np.broadcast_to(np.asarray(hi, dtype=np.int64), q0.shape), 0, N)
        t_lo = lo // bn
        t_hi = np.where(hi > lo, -(-hi // bn), t_lo)
        counts = t_hi - t_lo
        total = int(counts.sum())
        if total == 0:
            continue
        qt = np.repeat(np.arange(n_qt, dtype=np.int64), counts)
        starts = np.cumsum(counts) - counts
        kt = t_lo[qt] + np.arange(total, dtype=np.int64) - starts[qt]
        qts.append(qt)
        kts.append(kt)
    if not qts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    keys = np.unique(np.concatenate(qts) * n_kt + np.concatenate(kts))
    return keys // n_kt, keys % n_kt


def classify(node: Node, ctx: Context, q: Interval, k: Interval, bm: int, bn: int):
    """(Truth, undecided) for each tile: can some/every element be visible, and whether that
    is only an over-approximation that element-wise evaluation should settle."""
    if isinstance(node, Primitive):
        t = Truth.of(node.visible(ctx, q, k))
        shape = np.broadcast(q.lo, k.lo).shape
        t = Truth(np.broadcast_to(t.can_true, shape), np.broadcast_to(t.can_false, shape))
        strided = np.any(q.step > 1) or np.any(k.step > 1)  # residue order
        loose = strided and not node.exact_on_strided() or not node.exact_tiles(ctx, bm, bn)
        return t, (t.can_true & t.can_false) if loose else np.zeros(shape, bool)
    (a, ua), (b, ub) = classify(node.a, ctx, q, k, bm, bn), classify(node.b, ctx, q, k, bm, bn)
    pa, pb = a.can_true & a.can_false, b.can_true & b.can_false
    if isinstance(node, Union):
        t = a | b
        undecided = ua | ub | pa & pb  # two partial operands may cover the tile together
    elif isinstance(node, Intersect):
        t = a & b
        undecided = ua | ub | pa & pb  # ... or miss each other
    elif isinstance(node, Difference):
        t = a & ~b
        undecided = ua | ub | pa & pb
    else:
        raise TypeError(f"can't classify {type(node).__name__}")
    return t, undecided & t.can_true & t.can_false


def settle(node: Node, ctx: Context, q: Interval, k: Interval, bm: int, bn: int, tokens=lambda iv: iv):
    """Exact (any visible, all visible) for tiles whose classification was undecided, by
    splitting them into quadrants and classifying those, recursively, until every piece is
    decided (single elements always are). Work grows with the undecided boundary, not the area."""
    n = len(q.lo)
    anyv, notall = np.zeros(n, bool), np.zeros(n, bool)
    owner = np.arange(n)
    q_lo, q_hi, k_lo, k_hi = q.lo.copy(), q.hi.copy(), k.lo.copy(), k.hi.copy()
    while len(owner):
        q_mid = (q_lo + q_hi) // 2
        k_mid = (k_lo + k_hi) // 2
        split_q, split_k = q_hi > q_lo, k_hi > k_lo
        parts = []
        for qa, qb, qkeep in ((q_lo, q_mid, np.ones_like(split_q)), (q_mid + 1, q_hi, split_q)):
            for ka, kb, kkeep in ((k_lo, k_mid, np.ones_like(split_k)), (k_mid + 1, k_hi, split_k)):
                keep = qkeep & kkeep
                parts.append((owner[keep], qa[keep], qb[keep], ka[keep], kb[keep]))
        owner, q_lo, q_hi, k_lo, k_hi = (np.concatenate(x) for x in zip(*parts))
        truth, undecided = classify(node, ctx, tokens(Interval(q_lo, q_hi)), tokens(Interval(k_lo, k_hi)), bm, bn)
        decided = ~undecided
        np.logical_or.at(anyv, owner[decided], truth.can_true[decided])
        np.logical_or.at(notall, owner[decided], truth.can_false[decided])
        owner, q_lo, q_hi, k_lo, k_hi = owner[undecided], q_lo[undecided], q_hi[undecided], k_lo[undecided], k_hi[undecided]
    return anyv, ~notall


def head_tiles(node: Node, head: int, M: int, N: int, bm: int, bn: int, grid, data, order=None):
    """(qt, kt, kind, refined) of one head: visited tiles with kind PARTIAL or FULL."""
    ctx = Context(M, N, head, grid, data)
    tokens = order.token_interval if order is not None else (lambda iv: iv)
    qt, kt = candidate_tiles(node, ctx, M, N, bm, bn, order)
    q = Interval(qt * bm, np.minimum(qt * bm + bm, M) - 1)
    k = Interval(kt * bn, np.minimum(kt * bn + bn, N) - 1)
    truth, undecided = classify(node, ctx, tokens(q), tokens(k), bm, bn)
    visible, full = truth.can_true.copy(), ~truth.can_false
    refined = int(undecided.sum())
    if refined:
        idx = np.nonzero(undecided)[0]
        anyv, allv = settle(node, ctx, Interval(q.lo[idx], q.hi[idx]), Interval(k.lo[idx], k.hi[idx]), bm, bn, tokens)
        visible[idx], full[idx] = anyv, allv
    keep = visible
    kind = np.where(full[keep], FULL, PARTIAL).astype(np.int8)
    return qt[keep], kt[keep], kind, refined


def build_layout(pattern: Pattern, M: int, N: int, heads: int | None, block_m: int, block_n: int,
                 q=None, k=None, device="cpu", order: str = "auto") -> Layout:
    for name, v in (("block_m", block_m), ("block_n", block_n)):
        if not isinstance(v, int) or v < 1:
            raise PatternError(f"{name} must be a positive integer, got {v!r}")
    for name, v in (("M", M), ("N", N)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise PatternError(f"length {name} must be a positive integer, got {v!r}")
    sections = pattern.sections(heads)
    H = sections[-1].hi + 1
    grid = pattern.grid_shape(M, N)
    data = {}
    if q is not None:
        from ..ir.pattern import _heads_first

        data = {"q": _heads_first(q, "q"), "k": _heads_first(k, "k")}
    if order not in ("auto", "natural"):
        raise PatternError(f"order must be 'auto' or 'natural', got {order!r}")
    residue = None
    if order == "auto" and len(sections) == 1 and not pattern.is_routed:
        residue = residue_order(sections[0].expr, M, N, block_m, block_n, grid)
    per_head = [None] * H
    refined = 0
    for s in sections:
        node = s.expr
        sdata = dict(data, causal=under_causal(node))
        shared = not depends_on_head(node)
        for h in range(s.lo, s.hi + 1):
            if shared and h > s.lo:
                per_head[h] = per_head[s.lo]
                continue
            qt, kt, kind, r = head_tiles(node, h, M, N, block_m, block_n, grid, sdata, residue)
            per_head[h] = (qt, kt, kind)
            refined += r
    return Layout.from_tiles(per_head, M, N, block_m, block_n, pattern=pattern, refined_tiles=refined,
                             device=device, permutation=residue, data=data)


def depends_on_head(node: Node) -> bool:
    """Does the expression vary with the head index (an `h` parameter, per-head tables)?"""
    return any(n.depends_on_head() for n in node.walk() if isinstance(n, Primitive))
