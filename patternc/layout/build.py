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

import dataclasses
import math

import numpy as np

from ..errors import PatternError
from ..ir.expr import Interval, Truth
from ..ir.intervals import Box
from ..ir.nodes import Difference, Intersect, Node, Union
from ..ir.pattern import Pattern, under_causal
from ..primitives import Context, Primitive
from .box import box_orders, key_tiles
from .layout import FULL, PARTIAL, Layout, expand
from .residue import residue_order
from .routed import pieces, routed_node, static_variants

def candidate_tiles(node: Node, ctx: Context, M: int, N: int, bm: int, bn: int, order=None):
    """(query tile, key tile) pairs that may hold a visible element, as two sorted int64 arrays
    (tile indices in the layout's token order)."""
    return expand(*candidate_runs(node, ctx, M, N, bm, bn, order))


def candidate_runs(node: Node, ctx: Context, M: int, N: int, bm: int, bn: int, order=None, tiles=None):
    """The candidate tiles as runs: (query tile, first key tile, end key tile), sorted, merged;
    of the query tiles `tiles` only where given (then numbered as their entries)."""
    n_qt, n_kt = -(-M // bm), -(-N // bn)
    q0 = (np.arange(n_qt, dtype=np.int64) if tiles is None else tiles) * bm
    q1 = np.minimum(q0 + bm, M)
    x, y = _band_set(node, ctx, q0, q1, N, order)
    # key ranges -> key tile ranges, merged again (neighbouring ranges may share a tile)
    row = x // (N + 1)
    lo, hi = x - row * (N + 1), y - row * (N + 1)
    x, y = _merge(row * (n_kt + 1) + lo // bn, row * (n_kt + 1) - (-hi // bn))
    row = x // (n_kt + 1)
    return row, x - row * (n_kt + 1), y - row * (n_kt + 1)


# Candidate keys as a set of ranges per query tile, in one flat sorted array: the range [lo, hi)
# of query tile i is stored as x = i * (N + 1) + lo, y = i * (N + 1) + hi, so that the ranges of
# all tiles sort, merge and intersect together; a set is sorted, disjoint and merged (no two
# ranges touch), each range non-empty.


def _band_set(node: Node, ctx: Context, q0, q1, N: int, order):
    """The keys `node` may show query tiles [q0, q1): `|` joins its operands' sets, `&`
    intersects them (exactly, range by range), `-` keeps the left one's."""
    if isinstance(node, Union):
        a, b = _band_set(node.a, ctx, q0, q1, N, order), _band_set(node.b, ctx, q0, q1, N, order)
        return _merge(np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]]))
    if isinstance(node, Intersect):
        return _intersect(_band_set(node.a, ctx, q0, q1, N, order), _band_set(node.b, ctx, q0, q1, N, order))
    if isinstance(node, Difference):
        return _band_set(node.a, ctx, q0, q1, N, order)
    bands = order.band(node, ctx, q0, q1) if order is not None else node.band(ctx, q0, q1)
    if not bands:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    lo = np.clip(np.stack([np.broadcast_to(np.asarray(lo, np.int64), q0.shape) for lo, _ in bands]), 0, N)
    hi = np.clip(np.stack([np.broadcast_to(np.asarray(hi, np.int64), q0.shape) for _, hi in bands]), 0, N)
    base = np.arange(len(q0), dtype=np.int64) * (N + 1)
    keep = hi > lo
    return _merge((base + lo)[keep], (base + hi)[keep])


def _merge(x, y):
    """The set of ranges [x, y) (any order, overlapping, empty ones dropped) as a merged set."""
    keep = y > x
    x, y = x[keep], y[keep]
    order = np.argsort(x, kind="stable")
    x, reach = x[order], np.maximum.accumulate(y[order])
    new = np.ones(len(x), bool)
    new[1:] = x[1:] > reach[:-1]  # a gap before this range: a new merged one starts
    starts = np.flatnonzero(new)
    return x[starts], reach[np.append(starts[1:], len(x)) - 1] if len(x) else reach


def _intersect(a, b):
    """The intersection of two merged sets: where both cover, counting range ends before range
    starts at the same point (ranges that only touch don't intersect)."""
    # one sort of 2 * point + (1 for a start): ends before starts at the same point
    events = np.concatenate([a[0] * 2 + 1, a[1] * 2, b[0] * 2 + 1, b[1] * 2])
    events.sort(kind="stable")  # timsort: merges the sets, sorted or in a few sorted pieces
    pos, cover = events >> 1, np.cumsum((events & 1) * 2 - 1)
    both = np.flatnonzero(cover == 2)  # each set is disjoint: 2 means both, until the next point
    x, y = pos[both], pos[both + 1]
    return x[y > x], y[y > x]


def classify(node: Node, ctx: Context, q: Interval, k: Interval, bm: int, bn: int):
    """(Truth, undecided) for each tile: can some/every element be visible, and whether that
    is only an over-approximation that element-wise evaluation should settle."""
    if isinstance(node, Primitive):
        t = Truth.of(node.visible(ctx, q, k))
        shape = np.broadcast(q.lo, k.lo).shape
        t = Truth(np.broadcast_to(t.can_true, shape), np.broadcast_to(t.can_false, shape))
        if isinstance(q, Box):  # box order: exact on whole boxes, for rules that classify boxes
            exact = q.exact & k.exact if node.box_groups(ctx.grid) is not None else False
            return t, t.can_true & t.can_false & ~exact
        strided = np.any(q.step > 1) or np.any(k.step > 1)  # residue order
        loose = strided and not node.exact_on_strided() or not node.exact_tiles(ctx, bm, bn)
        return t, (t.can_true & t.can_false) if loose else np.zeros(shape, bool)
    if not isinstance(q, Box) and all(leaf.distance_only() for leaf in node.walk() if isinstance(leaf, Primitive)):
        t = _distance_truth(node, ctx, q, k)
        if t is not None:
            return t, np.zeros(t.can_true.shape, bool)
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


def _distance_truth(node: Node, ctx: Context, q: Interval, k: Interval) -> Truth | None:
    """Exact truth of a composition of rules of `d = p - k` alone (`Primitive.distance_only`):
    a tile shows it every d from its least to its greatest in steps of g (1 in token order, the
    modulus r in residue order, where tiles are tokens c + r*i), so the rule is evaluated once per
    d over the range the tiles span and counted with prefix sums along each class mod g. None
    where tiles mix steps (then the operands are classified one by one)."""
    if np.ndim(ctx.h):  # one head per tile: the table is the same for all of them, or not used
        if depends_on_head(node):
            return None
        ctx = dataclasses.replace(ctx, h=int(np.ravel(ctx.h)[0]) if np.size(ctx.h) else 0)
    shape = np.broadcast(q.lo, k.lo).shape
    steps = np.concatenate([np.ravel(q.step), np.ravel(k.step)])
    g = max(int(steps.max(initial=0)), 1)
    if np.any((steps != 0) & (steps != g)):
        return None
    lo = np.broadcast_to(ctx.position(q.lo) - k.hi, shape)  # the tile's least and greatest d
    hi = np.broadcast_to(ctx.position(q.hi) - k.lo, shape)
    if not lo.size:
        return Truth(np.zeros(shape, bool), np.zeros(shape, bool))
    d0, d1 = int(lo.min()), int(hi.max())
    d = np.arange(d0, d1 + 1 + (-(d1 + 1 - d0) % g), dtype=np.int64)  # whole rows of g
    visible = np.broadcast_to(np.asarray(node.visible(ctx, d - ctx.position(0), np.zeros_like(d)), bool), d.shape)
    sums = visible.astype(np.int64).reshape(-1, g).cumsum(0).ravel()  # sums[i]: visible d0 + i - g*j, j >= 0
    before = lo - d0 - g
    count = sums[hi - d0] - np.where(before >= 0, sums[np.maximum(before, 0)], 0)
    return Truth(count > 0, count < (hi - lo) // g + 1)


# pieces of at most this many elements are settled element by element (cheaper than splitting
# them down to single elements), in batches of at most BATCH elements
LEAF, BATCH = 256, 1 << 20


def settle(node: Node, ctx: Context, q: Interval, k: Interval, bm: int, bn: int, tokens=lambda iv: iv):
    """Exact (any visible, all visible) for tiles whose classification was undecided, by
    splitting them into quadrants and classifying those, recursively, until every piece is
    decided; pieces of at most LEAF elements are evaluated element by element. A tile stops as
    soon as it is known to be partial. Work grows with the undecided boundary, not the area.
    `ctx.h` may hold one head per tile."""
    n = len(q.lo)
    anyv, notall = np.zeros(n, bool), np.zeros(n, bool)
    owner = np.arange(n)
    q_lo, q_hi, k_lo, k_hi = q.lo.copy(), q.hi.copy(), k.lo.copy(), k.hi.copy()
    while len(owner):
        small = (q_hi - q_lo + 1) * (k_hi - k_lo + 1) <= LEAF
        if small.any():
            _evaluate(node, _heads_of(ctx, owner[small]), owner[small], q_lo[small], q_hi[small], k_lo[small],
                      k_hi[small], tokens, anyv, notall)
            owner, q_lo, q_hi, k_lo, k_hi = owner[~small], q_lo[~small], q_hi[~small], k_lo[~small], k_hi[~small]
        q_mid = (q_lo + q_hi) // 2
        k_mid = (k_lo + k_hi) // 2
        split_q, split_k = q_hi > q_lo, k_hi > k_lo
        parts = []
        for qa, qb, qkeep in ((q_lo, q_mid, np.ones_like(split_q)), (q_mid + 1, q_hi, split_q)):
            for ka, kb, kkeep in ((k_lo, k_mid, np.ones_like(split_k)), (k_mid + 1, k_hi, split_k)):
                keep = qkeep & kkeep
                parts.append((owner[keep], qa[keep], qb[keep], ka[keep], kb[keep]))
        owner, q_lo, q_hi, k_lo, k_hi = (np.concatenate(x) for x in zip(*parts))
        truth, undecided = classify(node, _heads_of(ctx, owner), tokens(Interval(q_lo, q_hi)),
                                    tokens(Interval(k_lo, k_hi)), bm, bn)
        decided = ~undecided
        anyv[owner[decided & truth.can_true]] = True
        notall[owner[decided & truth.can_false]] = True
        # a tile with a visible and an invisible element is partial, whatever its other pieces hold
        keep = undecided & ~(anyv[owner] & notall[owner])
        owner, q_lo, q_hi, k_lo, k_hi = owner[keep], q_lo[keep], q_hi[keep], k_lo[keep], k_hi[keep]
    return anyv, ~notall


def _heads_of(ctx: Context, owner) -> Context:
    """The context of pieces of tiles `owner`: its head per tile where it has one per tile."""
    return ctx if np.ndim(ctx.h) == 0 else dataclasses.replace(ctx, h=ctx.h[owner])


def _evaluate(node: Node, ctx: Context, owner, q_lo, q_hi, k_lo, k_hi, tokens, anyv, notall):
    """Record in anyv / notall (per owner) whether pieces [q_lo, q_hi] x [k_lo, k_hi] of layout
    positions hold a visible / an invisible element, evaluating the rule on every element:
    pieces of one shape at once, as [pieces, rows, keys] tensors."""
    import torch

    height, width = q_hi - q_lo + 1, k_hi - k_lo + 1
    for h, w in {(int(a), int(b)) for a, b in zip(*np.unique(np.stack([height, width]), axis=1))}:
        same = np.flatnonzero((height == h) & (width == w))
        for part in np.array_split(same, -(-len(same) * h * w // BATCH)):
            rows = torch.from_numpy(tokens(Interval(q_lo[part, None] + np.arange(h))).lo)
            keys = torch.from_numpy(tokens(Interval(k_lo[part, None] + np.arange(w))).lo)
            at = ctx if np.ndim(ctx.h) == 0 else dataclasses.replace(ctx, h=torch.from_numpy(ctx.h[part, None, None]))
            visible = torch.as_tensor(node.visible(at, rows[:, :, None], keys[:, None, :]))
            visible = visible.expand(len(part), h, w).reshape(len(part), h * w)
            anyv[owner[part[visible.any(1).numpy()]]] = True
            notall[owner[part[~visible.all(1).numpy()]]] = True


# candidate runs of at least RUN key tiles are classified whole first, and split in halves only
# where they are not all full or all empty: dense regions cost O(log) instead of O(tiles). Tiles
# are classified CHUNK at a time (smaller temporaries are much faster than fresh large ones).
RUN, CHUNK = 8, 1 << 18
# candidate tiles classified by splitting runs, at most (per batch of heads): past it, the work
# and its index arrays (tens of bytes per tile) outgrow seconds and memory
MAX_CANDIDATES = 1 << 28


def heads_tiles(node: Node, heads, M: int, N: int, bm: int, bn: int, grid, data, order=None):
    """([(partial, full)] per head, refined) of several heads at once, each kind's tiles as runs
    (qt, lo, hi) of key tiles [lo, hi), non-empty, sorted by (qt, lo) (`Layout.from_runs`). A row is a (head, query
    tile) pair and the context's head follows the rows, so each step is one batch for all heads
    (rules that look up per-head tables take one head at a time)."""
    n_qt, n_kt = -(-M // bm), -(-N // bn)
    heads = np.asarray(list(heads), dtype=np.int64)
    one = Context(M, N, int(heads[0]), grid, data)
    tokens = order.token_interval if order is not None else (lambda iv: iv)

    def at(row):  # the context of these rows: their heads
        return one if len(heads) == 1 else dataclasses.replace(one, h=heads[row // n_qt])

    def rectangles(row, lo, hi):  # query tile x key tiles [lo, hi), in layout positions
        qt = row % n_qt
        return Interval(qt * bm, np.minimum(qt * bm + bm, M) - 1), Interval(lo * bn, np.minimum(hi * bn, N) - 1)

    def truths(row, kt):  # (visible, full, refined) of single tiles, exact
        return _tile_truths(node, at(row), *rectangles(row, kt, kt + 1), bm, bn, tokens)

    runs = [candidate_runs(node, dataclasses.replace(one, h=int(h)), M, N, bm, bn, order) for h in heads]
    row, lo, hi = (np.concatenate(x) for x in zip(*((r + i * n_qt, a, b) for i, (r, a, b) in enumerate(runs))))
    if order is not None:  # a run of layout positions must stay inside one residue class, or one box
        row, lo, hi = _split(row, lo, hi, order.run_tiles(bn))
    decided, short = [], []  # runs decided whole: (row, lo, hi, kind: one or per run); runs to classify tile by tile
    diagonals = _diagonals(node, one, M, N, bm, bn, row % n_qt * bm - (hi - 1) * bn, row % n_qt * bm - lo * bn) \
        if order is None and len(row) else None
    if diagonals is not None:  # a rule of d alone: whole tiles by their diagonal, the rest one by one
        decided += _by_diagonal(row, lo, hi, diagonals, M, N, bm, bn)
        short.append(_cut_tiles(row, lo, hi, M, N, bm, bn))
        row, lo, hi = row[:0], lo[:0], hi[:0]
    candidates = int((hi - lo).sum())
    if candidates > MAX_CANDIDATES:  # each costs classification work and memory: refuse, not swap
        raise PatternError(
            f"laying out {len(heads)} head(s) of {M} x {N} tokens in {bm}x{bn} tiles means classifying "
            f"{candidates:,} candidate tiles (at most {MAX_CANDIDATES:,}): the rule is not one of distance "
            f"alone and its key bands don't bound the tiles more tightly", None,
            "use larger tiles, rules on blocks (block=) that tiles can follow, or shorter sequences")
    while len(row):
        long = hi - lo >= RUN
        short.append((row[~long], lo[~long], hi[~long]))
        row, lo, hi = row[long], lo[long], hi[long]
        q, k = rectangles(row, lo, hi)
        truth, undecided = classify(node, at(row), tokens(q), tokens(k), bm, bn)
        full = ~undecided & ~truth.can_false
        decided.append((row[full], lo[full], hi[full], FULL))
        split = truth.can_true & ~full  # neither all full nor all empty: halves
        row, lo, hi = row[split], lo[split], hi[split]
        if order is None:  # runs whose tiles all classify alike: their first tile decides
            alike = _alike(node, at(row), *rectangles(row, lo, hi), bn) & (hi * bn <= N)  # whole tiles
            r, a, b = row[alike], lo[alike], hi[alike]
            visible, full, _ = _tile_truths(node, at(r), *rectangles(r, a, a + 1), bm, bn, tokens)
            decided.append((r[visible], a[visible], b[visible], _kinds(visible, full)))
            row, lo, hi = row[~alike], lo[~alike], hi[~alike]
        mid = (lo + hi) // 2  # halves side by side: each level's runs stay sorted
        row, lo, hi = np.repeat(row, 2), np.stack([lo, mid], 1).ravel(), np.stack([mid, hi], 1).ravel()
    if short:
        row, lo, hi = (np.concatenate(x) for x in zip(*short))
        key = row * (n_kt + 1) + lo
        if (key[1:] < key[:-1]).any():  # the levels' runs interleave: sort the runs, not their tiles
            by_row = np.argsort(key, kind="stable")
            row, lo, hi = row[by_row], lo[by_row], hi[by_row]
    qt, kt = expand(row, lo, hi)
    refined, pieces = 0, []
    for start in range(0, len(qt), CHUNK):
        r, k = qt[start:start + CHUNK], kt[start:start + CHUNK]
        visible, full, n = truths(r, k)
        pieces.append((r[visible], k[visible], _kinds(visible, full)))
        refined += n
    if pieces:  # one sorted part: `_sorted_runs` puts the few runs decided whole into it
        r, k, c = (np.concatenate(x) for x in zip(*pieces))
        decided.append((r, k, k + 1, c))
    kinds = []
    for kind in (PARTIAL, FULL):
        parts = [_of_kind(part, kind) for part in decided if np.ndim(part[3]) or part[3] == kind]
        row, lo, hi = _sorted_runs(parts, n_kt)
        bounds = np.searchsorted(row, np.arange(len(heads) + 1) * n_qt)
        kinds.append([(row[a:b] - i * n_qt, lo[a:b], hi[a:b]) for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))])
    return list(zip(*kinds)), refined


def _of_kind(part, kind):
    """A decided part's runs of one kind (its kinds one, or one per run)."""
    r, a, b, c = part
    keep = c == kind
    return (r, a, b) if np.all(keep) else (r[keep], a[keep], b[keep])


def _sorted_runs(parts, n_kt: int):
    """Parts of (row, lo, hi) runs as one set sorted by (row, lo): when the largest part is
    sorted, the others are put into it (no sort of the whole, strides' pieces are many)."""
    parts = sorted((p for p in parts if len(p[0])), key=lambda p: -len(p[0]))
    if not parts:
        return (np.zeros(0, np.int64),) * 3
    key = parts[0][0] * (n_kt + 1) + parts[0][1]
    if len(parts) > 1 and (key[1:] > key[:-1]).all():
        row, lo, hi = (np.concatenate(x) for x in zip(*parts[1:]))
        rest = row * (n_kt + 1) + lo
        by_row = np.argsort(rest, kind="stable")
        at = np.searchsorted(key, rest[by_row])
        return tuple(np.insert(x, at, y[by_row]) for x, y in zip(parts[0], (row, lo, hi)))
    row, lo, hi = (np.concatenate(x) for x in zip(*parts)) if len(parts) > 1 else parts[0]
    key = row * (n_kt + 1) + lo
    if (key[1:] < key[:-1]).any():
        by_row = np.argsort(key, kind="stable")  # timsort: merges the sorted pieces
        row, lo, hi = row[by_row], lo[by_row], hi[by_row]
    return row, lo, hi


def _alike(node: Node, ctx: Context, q: Interval, k: Interval, bn: int):
    """Runs (a query tile x key tiles q x k) whose tiles all have one classification: each
    primitive is empty or full on the whole run, or reads only `k % P` for a P dividing the tile
    width (`Primitive.key_period`). Then every tile's visible set is the first one's, shifted."""
    if isinstance(node, Primitive):
        period = node.key_period(ctx)
        if period is not None and bn % period == 0:
            return np.ones(np.shape(q.lo), bool)
        t = Truth.of(node.visible(ctx, q, k))
        return np.broadcast_to(~(t.can_true & t.can_false), np.shape(q.lo))
    return _alike(node.a, ctx, q, k, bn) & _alike(node.b, ctx, q, k, bn)


def _tile_truths(node: Node, ctx: Context, q: Interval, k: Interval, bm: int, bn: int, tokens):
    """(visible, full, refined) of tiles q x k (layout positions), exact: classified, settled
    where undecided (`refined` of them)."""
    truth, undecided = classify(node, ctx, tokens(q), tokens(k), bm, bn)
    visible, full = truth.can_true.copy(), ~truth.can_false
    idx = np.nonzero(undecided)[0]
    if len(idx):
        visible[idx], full[idx] = settle(node, _heads_of(ctx, idx), Interval(q.lo[idx], q.hi[idx]),
                                         Interval(k.lo[idx], k.hi[idx]), bm, bn, tokens)
    return visible, full, len(idx)


def _kinds(visible, full):
    return np.where(full[visible], FULL, PARTIAL).astype(np.int8)


def _whole(row, lo, hi, M: int, N: int, bm: int, bn: int):
    """The runs cut to their whole tiles (not the short last query tile or key tile)."""
    keep = (row % -(-M // bm)) * bm + bm <= M
    return row[keep], lo[keep], np.minimum(hi[keep], N // bn)


def _cut_tiles(row, lo, hi, M: int, N: int, bm: int, bn: int):
    """The runs' tiles that `_whole` cuts off, as runs."""
    short_row = (row % -(-M // bm)) * bm + bm > M
    last = ~short_row & (hi * bn > N)  # the short last key tile of a whole row
    row, lo, hi = (np.concatenate([a[short_row], a[last]]) for a in (row, np.where(short_row, lo, hi - 1), hi))
    in_order = np.lexsort((lo, row))
    return row[in_order], lo[in_order], hi[in_order]


def _by_diagonal(row, lo, hi, diagonals, M: int, N: int, bm: int, bn: int):
    """[(row, lo, hi, kind)] of the visible whole tiles of runs, for a rule of d alone: a tile's kind
    is its diagonal's (`_diagonals`), so a run holds a piece per stretch of diagonals of one kind
    it crosses, a few per row for windows (one per visible tile for strides); a group per kind, each
    sorted by (row, lo)."""
    first, step, seen, every = diagonals
    kinds = np.where(every, FULL, np.where(seen, PARTIAL, 0)).astype(np.int8)
    row, lo, hi = _whole(row, lo, hi, M, N, bm, bn)
    keep = hi > lo
    row, lo, hi = row[keep], lo[keep], hi[keep]
    top = (row % -(-M // bm)) * bm - first  # key tile kt of the row lies on diagonal (top - kt * bn) // step
    if bn != step:  # consecutive key tiles skip diagonals: tile by tile
        owner, kt = expand(np.arange(len(row)), lo, hi)
        kind = kinds[(top[owner] - kt * bn) // step]
        keep = kind > 0
        return [(row[owner[keep]], kt[keep], kt[keep] + 1, kind[keep])]
    t = top // step  # consecutive key tiles lie on consecutive diagonals, falling: kt on t - kt
    out = []
    for kind in (PARTIAL, FULL):  # each kind's stretches of diagonals [s, e), cut to the runs
        edges = np.diff((kinds == kind).astype(np.int8), prepend=np.int8(0), append=np.int8(0))
        s, e = np.flatnonzero(edges == 1).astype(np.int32), np.flatnonzero(edges == -1).astype(np.int32)
        a = np.searchsorted(e, t - hi + 1, "right")  # the run's diagonals: t - hi + 1 .. t - lo
        b = np.searchsorted(s, t - lo + 1, "left")
        n = b - a
        head = np.cumsum(n) - n
        # one piece per stretch, by falling diagonal; int32 and in place: strides make many pieces
        i = np.repeat((b - 1 + head).astype(np.int32), n)
        i -= np.arange(len(i), dtype=np.int32)
        at = np.repeat((t + 1).astype(np.int32), n)
        starts = np.subtract(at, np.take(e, i), dtype=np.int32)
        ends = np.subtract(at, np.take(s, i, out=i), out=at)
        some = n > 0
        first_piece, last_piece = head[some], head[some] + n[some] - 1
        starts[first_piece] = np.maximum(starts[first_piece], lo[some])
        ends[last_piece] = np.minimum(ends[last_piece], hi[some])
        out.append((np.repeat(row.astype(np.int32), n), starts, ends, kind))
    return out


def _diagonals(node: Node, ctx: Context, M: int, N: int, bm: int, bn: int, least, most):
    """For a rule of d = p - k alone (in token order): whole tiles with the same `q0 - k0` (first
    query row minus first key) see the same d's, so classify alike. (first, step, visible, full)
    for the differences from min(least) to max(most), entry i for first + i * step; None for
    other rules."""
    if not all(leaf.distance_only() and not leaf.depends_on_head() for leaf in node.walk() if isinstance(leaf, Primitive)):
        return None
    step = math.gcd(bm, bn)
    first = int(least.min())  # a multiple of step, as every difference
    q0 = np.arange(first, int(most.max()) + 1, step, dtype=np.int64)
    truth, undecided = classify(node, dataclasses.replace(ctx, h=0), Interval(q0, q0 + bm - 1),
                                Interval(np.zeros_like(q0), np.full_like(q0, bn - 1)), bm, bn)
    if undecided.any():
        return None  # rules of d alone are exact; stay safe
    return first, step, np.asarray(truth.can_true), ~np.asarray(truth.can_false)


def _split(row, lo, hi, period):
    """Runs [lo, hi) cut at the multiples of `period`."""
    first, last = lo // period, (hi - 1) // period
    pieces = last - first + 1
    cls = np.repeat(first, pieces) + np.arange(int(pieces.sum())) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    return (np.repeat(row, pieces), np.maximum(np.repeat(lo, pieces), cls * period),
            np.minimum(np.repeat(hi, pieces), (cls + 1) * period))


def build_layout(pattern: Pattern, M: int, N: int, heads: int | None, block_m: int, block_n: int,
                 q=None, k=None, device="cpu", order: str = "auto") -> Layout:
    per_head, refined, permutation, data = build_runs(pattern, M, N, heads, block_m, block_n, q, k, order)
    return Layout.from_runs(per_head, M, N, block_m, block_n, pattern=pattern, refined_tiles=refined,
                            device=device, permutation=permutation, data=data)


def build_runs(pattern: Pattern, M: int, N: int, heads: int | None, block_m: int, block_n: int,
               q=None, k=None, order: str = "auto"):
    """What `build_layout` lays out, before its tables: (per head `(partial, full)` runs as
    `Layout.from_runs` takes them, refined tiles, the token order (residue, box) or None, run-time
    data)."""
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
    if order not in ("auto", "natural", "box"):
        raise PatternError(f"order must be 'auto', 'natural' or 'box', got {order!r}")
    if data and pattern.is_routed:
        routed = routed_runs(pattern, M, N, H, block_m, block_n, data)
        if routed is not None:
            return (*routed, None, data)
    permutation = None
    if order != "natural" and len(sections) == 1 and not pattern.is_routed:
        permutation = token_order(sections[0].expr, M, N, block_m, block_n, grid, order == "box")
    if order == "box" and permutation is None:
        raise PatternError(
            f"box order needs one section of rules that classify boxes of a 2-D or 3-D grid (neighborhoods), "
            f"M == N == the grid's size and dilation groups that divide into boxes of {block_m} and {block_n} "
            f"tokens (grid {grid}, M = {M}, N = {N})", pattern.span, "use order='auto' or 'natural'")
    per_head = [None] * H
    refined = 0
    for s in sections:
        node = s.expr
        sdata = dict(data, causal=under_causal(node))
        heads = list(range(s.lo, s.hi + 1))
        if not depends_on_head(node):  # one tiling for all heads
            tiles, r = heads_tiles(node, heads[:1], M, N, block_m, block_n, grid, sdata, permutation)
            tiles *= len(heads)
        elif any(n.per_head_tables for n in node.walk() if isinstance(n, Primitive)):  # a head at a time
            tiles, r = [], 0
            for h in heads:
                (t,), rh = heads_tiles(node, [h], M, N, block_m, block_n, grid, sdata, permutation)
                tiles, r = tiles + [t], r + rh
        else:  # the rule reads h in its arithmetic: all heads in one batch
            tiles, r = heads_tiles(node, heads, M, N, block_m, block_n, grid, sdata, permutation)
        per_head[s.lo: s.hi + 1] = tiles
        refined += r
    return per_head, refined, permutation, data


def routed_runs(pattern: Pattern, M: int, N: int, H: int, bm: int, bn: int, data):
    """(per head runs, refined) of a routed pattern choosing per query block in blocks the tiles
    divide, else None. Its rule reads the choice only as one bit per (query block, key block), so
    each tile is what it is in one of the two static variants (`routed.static_variants`): in the
    pattern with every key chosen where its block was chosen, else in the one with none. Both are
    laid out as runs, and their runs are cut by the runs of chosen (not chosen) key blocks of each
    row, not classified tile by tile through the choice's table."""
    try:
        node = routed_node(pattern)
        chosen, nothing, _, block = static_variants(pattern)
    except PatternError:
        return None
    if node.query != "block" or block % bm or block % bn or data["q"].shape[0] != H:
        return None
    a, refined_a, _, _ = build_runs(chosen, M, N, H, bm, bn, order="natural")
    b, refined_b, _, _ = build_runs(nothing, M, N, H, bm, bn, order="natural")
    selection = node.select(data["q"], data["k"], under_causal(pattern.expr)).cpu().numpy()
    n_qt, n_kt = -(-M // bm), -(-N // bn)
    stride = n_kt + 1
    per_head = []
    for h in range(H):
        start, end, cls = pieces(a[h], b[h], stride)
        yes, no = (_block_runs(choice, block // bm, block // bn, n_qt, n_kt)
                   for choice in (selection[h], ~selection[h]))
        ca, cb = cls & 3, cls >> 2
        kinds = []
        for kind in (PARTIAL, FULL):
            same = (ca == kind) & (cb == kind)
            cut_a, cut_b = (ca == kind) & ~same, (cb == kind) & ~same
            parts = ((start[same], end[same]), _intersect((start[cut_a], end[cut_a]), yes),
                     _intersect((start[cut_b], end[cut_b]), no))
            x, y = (np.concatenate(z) for z in zip(*parts))
            order = np.argsort(x, kind="stable")
            row, lo = np.divmod(x[order], stride)
            kinds.append((row, lo, lo + (y[order] - x[order])))
        per_head.append(tuple(kinds))
    return per_head, refined_a + refined_b


def _block_runs(choice, rows_per_block: int, tiles_per_block: int, n_qt: int, n_kt: int):
    """The key tiles of the true runs of a bool `[query blocks, key blocks]` table, in every tile
    row of their query block, as a set of keys `row * (n_kt + 1) + tile` (disjoint, in no
    particular order: `_intersect` sorts)."""
    step = np.diff(choice.astype(np.int8), axis=1, prepend=np.int8(0), append=np.int8(0))
    block, first = np.nonzero(step == 1)
    last = np.nonzero(step == -1)[1]  # the same runs' ends, in the same order
    first, last = first * tiles_per_block, np.minimum(last * tiles_per_block, n_kt)
    x, y = [], []
    for i in range(rows_per_block):
        row = block * rows_per_block + i
        keep = row < n_qt
        key = row[keep] * (n_kt + 1)
        x.append(key + first[keep])
        y.append(key + last[keep])
    return np.concatenate(x), np.concatenate(y)


# query tiles whose candidate key tiles rank the token orders of a pattern (evenly spread)
SAMPLE = 64


def token_order(node: Node, M: int, N: int, bm: int, bn: int, grid, box: bool = False):
    """The permutation `order="auto"` lays `node` out in: residue order where it applies; else,
    of the box orders that apply, the one whose query tiles reach the fewest key tiles (the
    closest to cubes among equals), when they reach fewer than in natural order (a window of 1
    along a dimension, say, cuts boxes that cross it: rows of the grid suit it better); else
    None, natural order. Counted on a sample of query tiles: box orders by their rules' key
    boxes (`box.key_tiles`, summed over the primitives), natural order by its candidates.
    `box` (`order="box"`): that box order whatever natural order would reach (None: none applies)."""
    residue = None if box else residue_order(node, M, N, bm, bn, grid)
    boxes = box_orders(node, M, N, bm, bn, grid) if residue is None else []
    if not boxes:
        return residue
    ctx = Context(M, N, 0, grid, {"causal": under_causal(node)})
    n_qt = -(-M // bm)
    tiles = np.unique(np.linspace(0, n_qt - 1, min(n_qt, SAMPLE)).astype(np.int64))
    p0, p1 = tiles * bm, np.minimum(tiles * bm + bm, M)
    leaves = [leaf for leaf in node.walk() if isinstance(leaf, Primitive)]
    reached = np.sum([key_tiles(boxes, leaf, ctx, p0, p1, bn) for leaf in leaves], axis=0)
    _, lo, hi = candidate_runs(node, ctx, M, N, bm, bn, None, tiles)
    best = int(np.argmin(reached))
    return boxes[best] if box or reached[best] < int((hi - lo).sum()) else None


def depends_on_head(node: Node) -> bool:
    """Does the expression vary with the head index (an `h` parameter, per-head tables)?"""
    return any(n.depends_on_head() for n in node.walk() if isinstance(n, Primitive))
