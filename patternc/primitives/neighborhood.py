"""`neighborhood(size, stride=1, dilation=1, causal=false)`: neighborhood attention with NATTEN /
GNA semantics over the pattern's `grid(d0, d1, ...)` (row-major tokens; 1-D without a grid).

Every argument is a scalar or one entry per grid dimension (`causal=(true, false, false)`: causal
in time only). Per dimension of length L, with window K, stride s and dilation r, exactly as
NATTEN's own mask code computes it (natten 0.21.7, `backends/flex.py`, `get_na_flex_mask`):
- the coordinates split into r interleaved groups `x % r`; a query sees only its group, in which
  it has position `i = x // r` among `Lg = ceil((L - x % r) / r)` positions;
- queries are grouped by s positions, and the group's leader `l` places their window;
- non-causal: `l = min(s*(i//s) + s//2, Lg - 1)` (the centre; right of centre for even s), and
  exactly K keys from `start = clamp(l - K//2, 0, Lg - K)`: windows shift inward at borders,
  even K take one key more before the leader than after;
- causal: `l = min(s*(i//s) + s - 1, Lg - 1)` (the group's last), and the keys `l-K+1 .. i`: the
  leader's window, cut at the query itself (K keys for a leader, fewer for the others).
A key is visible if it is inside the window in every dimension. Needs M == N == prod(grid);
`stride <= size` and `size * dilation <= length` per dimension. Parameters can't depend on `h`.

    neighborhood(3)     neighborhood(3, dilation=2)     neighborhood(3, stride=2, causal=true)
    ###...              #.#.#.                          #......
    ###...              .#.#.#                          ##.....
    .###..              #.#.#.                          .##....
    ..###.              .#.#.#                          .###...
    ...###              #.#.#.                          ...##..
    ...###              .#.#.#                          ...###.
                                                        ....###
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..ir.context import Context
from ..ir.expr import Interval, Term, Truth, clamp, maximum, minimum
from ..ir.intervals import Box
from .base import BOOLS, INTS, MAX_INTERVALS, Primitive, format_value, param

PER_DIM = ("size", "stride", "dilation", "causal")


def _per_dim(value, ndim):
    return value if isinstance(value, tuple) else (value,) * ndim


@dataclass(frozen=True)
class Neighborhood(Primitive):
    name = "neighborhood"
    blockable = False
    needs_grid = True
    signature = "neighborhood(size, stride=1, dilation=1, causal=false); tuples over grid(...) dimensions"
    head_invariant = ("size", "stride", "dilation")
    size: Term = param(kind=INTS, doc="window size (per dimension)")
    stride: Term = param(Term.const(1), kind=INTS, doc="queries sharing one window (per dimension)")
    dilation: Term = param(Term.const(1), kind=INTS, doc="dilation (per dimension)")
    causal: bool | tuple = param(False, kind=BOOLS, doc="causal (per dimension)")

    def grid(self, ctx):
        return ctx.grid if ctx.grid is not None else (int(ctx.N),)

    def check(self, p, ctx):
        self.positive(p, "size", "stride", "dilation")
        ndim = first = None
        for name in PER_DIM:
            v = getattr(p, name)
            if isinstance(v, tuple):
                if ndim is not None and len(v) != ndim:
                    self.fail(name, f"'{name}' has {len(v)} dimensions but '{first}' has {ndim}")
                ndim, first = len(v), first or name
        for i in range(ndim or 1):  # stride > size is wrong on any grid: say so while parsing
            K, s = (_per_dim(getattr(p, n), ndim or 1)[i] for n in ("size", "stride"))
            if isinstance(K, (int, np.integer)) and isinstance(s, (int, np.integer)) and s > K:
                self.fail("stride", f"stride {s} > window size {K}" + (f" in dimension {i}" if ndim else ""),
                          "queries sharing a window can't be further apart than the window")
        if ctx is None:
            return
        grid = self.grid(ctx)
        if ndim is not None and ndim != len(grid):
            self.fail("size", f"{ndim}-D window on a {len(grid)}-D grid {grid}",
                      "declare the grid with grid(d0, d1, ...) before the expression" if ctx.grid is None else None)
        if int(ctx.M) != int(ctx.N) or math.prod(grid) != int(ctx.N):
            self.fail(None, f"needs M == N == {' * '.join(map(str, grid))} tokens (the grid), got M={ctx.M}, N={ctx.N}")
        for i, L in enumerate(grid):
            K, s, r = (_per_dim(getattr(p, n), len(grid))[i] for n in ("size", "stride", "dilation"))
            if not all(isinstance(x, (int, np.integer)) for x in (K, s, r)):
                continue
            if s > K:
                self.fail("stride", f"stride {s} > window size {K} in dimension {i}",
                          "queries sharing a window can't be further apart than the window")
            if K * r > L:
                self.fail("size", f"window {K} x dilation {r} = {K * r} exceeds the length {L} of dimension {i}",
                          "use a smaller window or dilation")

    def _window(self, p, ctx, i, L, x):
        """(group, start, stop) of dimension i's window for coordinate x, stop exclusive, in
        positions within the dilation group (NATTEN's rule, see the module docstring)."""
        K, s, r, causal = (_per_dim(getattr(p, n), len(self.grid(ctx)))[i] for n in PER_DIM)
        one = lambda v: isinstance(v, int) and v == 1
        group, pos, length = (0, x, L) if one(r) else (x % r, x // r, (L - x % r + r - 1) // r)
        lead = pos  # the leader of pos's stride group: its last query (causal) or its centre
        if not one(s):
            lead = minimum(pos // s * s + (s - 1 if causal else s // 2), length - 1)
        if causal:  # the leader's window, ending at the query itself
            return group, maximum(lead - K + 1, 0), pos + 1
        start = clamp(lead - K // 2, 0, length - K)
        return group, start, start + K

    def exact_on_strided(self):
        return False  # its rule divides token indices

    def residue_modulus(self, grid):
        if grid is not None and len(grid) > 1:
            return 1  # dilation groups of a multi-dimensional grid are not token residues
        return self.constant_step("dilation")

    def box_groups(self, grid):
        if grid is None or len(grid) < 2:
            return None  # a 1-D window cuts ranges, not boxes (residue order takes its dilation)
        N = math.prod(grid)
        return tuple(int(r) for r in _per_dim(self.params(Context(N, N, 0, grid)).dilation, len(grid)))

    def box_band(self, ctx, lo, hi):
        p, grid = self.params(ctx), self.grid(ctx)
        return [self._key_range(p, ctx, d, L, lo[d], hi[d]) for d, L in enumerate(grid)]

    def _dims(self, p):
        """(size, stride, dilation, causal) per dimension, from the parameters alone."""
        ndim = max((len(getattr(p, n)) for n in PER_DIM if isinstance(getattr(p, n), tuple)), default=1)
        return list(zip(*(_per_dim(getattr(p, n), ndim) for n in PER_DIM)))

    def min_length(self, p):
        return math.prod(K * r for K, _, r, _ in self._dims(p))  # size * dilation <= length

    def count_atoms(self, p, b, atoms):
        dims = self._dims(p)
        if len(dims) != 1 or dims[0][1:3] != (1, 1):
            raise atoms.NoClosedForm("neighborhood with stride, dilation or several dimensions")
        (K, _, _, causal), End, key, row = dims[0], atoms.End, atoms.key, atoms.row
        if causal:  # the K keys up to the query
            return atoms.one(key(End(1, 1, 0, 1 - K), End(1, 1, 0, 0)))
        half = K // 2
        # the window shifts inward at both borders: three disjoint row ranges, summed
        first = atoms.one(row(None, End(0, 1, 0, half - 1)), key(None, End(0, 1, 0, K - 1)))
        middle = atoms.one(row(End(0, 1, 0, half), End(0, 1, 1, half - K)),
                           key(End(1, 1, 0, -half), End(1, 1, 0, K - 1 - half)))
        last = atoms.one(row(End(0, 1, 1, half - K + 1), None), key(End(0, 1, 1, -K), None))
        return atoms.add((first, 1), (middle, 1), (last, 1))

    def count_alone(self, p, atoms):
        dims = self._dims(p)
        if any(causal for *_, causal in dims):
            return None  # causal dimensions see fewer keys near their start
        return atoms.closed(math.prod(K for K, *_ in dims), period=1, n0=self.min_length(p), cost="O(N*w)",
                            note="exactly the window per query, NATTEN semantics")

    def _dimension_windows(self, p, ctx, i, L):
        """Dimension i's windows in O(L): (r, start, stop, offsets, shift, last_of, first_of),
        where the query at position `pos` of dilation group g (coordinate g + r*pos) sees group
        g's key positions start[offsets[g] + pos] <= j < stop[offsets[g] + pos]. Within a group
        both ends are nondecreasing in pos; group g's values are shifted by g * (L + 2), so each
        array is sorted as a whole and one search serves every group, tabled for every value v
        at v + 1 (-1: a group without the key). Cached per parameters."""
        key = (i, L, *(_per_dim(getattr(p, n), len(self.grid(ctx)))[i] for n in PER_DIM))
        cache = self.__dict__.setdefault("_windows_cache", {})
        if key not in cache:
            x = np.arange(L)
            _, start, stop = (np.broadcast_to(np.asarray(v, np.int64), x.shape) for v in self._window(p, ctx, i, L, x))
            r = int(key[4])
            shift = np.arange(r, dtype=np.int64) * (L + 2)
            offsets = np.cumsum([0] + [len(range(g, L, r)) for g in range(r)])
            start = np.concatenate([start[g::r] + shift[g] for g in range(r)])
            stop = np.concatenate([stop[g::r] + shift[g] for g in range(r)])
            values = np.arange(-1, r * (L + 2))
            last_of = np.searchsorted(start, values, "right") - 1  # the last query whose window starts <= v
            first_of = np.searchsorted(stop, values, "right")  # the first whose window ends past v
            cache[key] = (r, start, stop, offsets, shift, last_of, first_of)
        return cache[key]

    def _dimension_truth(self, p, ctx, i, L, qa, qb, ka, kb, step=1):
        """(some, every): is some / every (query, key) coordinate pair of [qa, qb] x [ka, kb]
        (non-empty, inside 0..L-1; `step` apart: 1, or the dilation r, one group's coordinates
        in box order) inside dimension i's window? Some pair is, iff for a dilation group held by
        both ranges some query position has a window reaching the group's key positions: by
        monotonicity those queries are a range, looked up."""
        r, start, stop, offsets, shift, last_of, first_of = self._dimension_windows(p, ctx, i, L)
        if r == 1:
            last, first = last_of[kb + 1], first_of[ka + 1]
            some = np.maximum(qa, first) <= np.minimum(qb, last)
            # every window holds every key: the last query's window starts, the first's ends
            return some, (start[qb] <= ka) & (stop[qa] > kb)
        if step == r:  # the query positions qa // r .. qb // r of group qa % r, as above in that group
            g = qa % r
            at, moved = offsets[g], shift[g]
            last, first = last_of[kb // r + moved + 1] - at, first_of[ka // r + moved + 1] - at
            some = (ka % r == g) & (np.maximum(qa // r, first) <= np.minimum(qb // r, last))
            return some, some & (start[at + qb // r] - moved <= ka // r) & (stop[at + qa // r] - moved > kb // r)
        if step != 1:
            raise ValueError(f"coordinates {step} apart on a window of dilation {r}: box order groups by the rule's")
        # the query groups g = (qa + t) % r each range pair holds, t <= qb - qa, t < r: a pass per t
        some, extent = np.zeros(len(qa), bool), qb - qa
        for t in range(min(r, int(extent.max(initial=0)) + 1)):
            x = qa + t
            g = x - x // r * r  # (`%` is slower than a division by a constant)
            pa, pb = -(-(qa - g) // r), (qb - g) // r  # the query positions in group g
            ja, jb = -(-(ka - g) // r), (kb - g) // r  # ... and the key positions
            last = last_of[jb + shift[g] + 1] - offsets[g]
            first = first_of[ja + shift[g] + 1] - offsets[g]
            some |= (t <= extent) & (ja <= jb) & (np.maximum(pa, first) <= np.minimum(pb, last))
        return some, (qa == qb) & (ka == kb) & some  # two groups of keys or of queries: never all

    def _tile_truth(self, p, ctx, q: Interval, k: Interval) -> Truth:
        """Tile classification, exact on any range of tokens: a range is the union of at most
        2 * ndim - 1 boxes of the grid (`_boxes`), and on a pair of boxes the window, a product
        over dimensions, holds somewhere (everywhere) iff it does in every dimension
        (`_box_truth`). Tokens outside the grid see nothing; strided ranges (residue order) get
        their bounding range."""
        if isinstance(q, Box) and isinstance(k, Box):
            return self._boxes_truth(p, ctx, q, k)
        grid = self.grid(ctx)
        N = math.prod(grid)
        shape = np.broadcast(q.lo, k.lo).shape
        q_lo, q_hi, k_lo, k_hi = (np.broadcast_to(x, shape).ravel() for x in (q.lo, q.hi, k.lo, k.hi))
        nonempty = (q_lo <= q_hi) & (k_lo <= k_hi)
        inside = (q_lo >= 0) & (q_hi < N) & (k_lo >= 0) & (k_hi < N)
        q_lo, k_lo, q_hi, k_hi = np.maximum(q_lo, 0), np.maximum(k_lo, 0), np.minimum(q_hi, N - 1), np.minimum(k_hi, N - 1)
        some, every = np.zeros(len(q_lo), bool), np.zeros(len(q_lo), bool)
        digits = [_digits(grid, x) for x in (q_lo, q_hi, k_lo, k_hi)]
        boxes = _is_box(q_lo, q_hi, *digits[:2]) & _is_box(k_lo, k_hi, *digits[2:])
        if boxes.all():  # tiles inside rows of the grid, say: no copies
            some[:], every[:] = self._box_truth(p, ctx, *digits)
        else:
            some[boxes], every[boxes] = self._box_truth(p, ctx, *([d[boxes] for d in x] for x in digits))
        rest = np.flatnonzero(~boxes)
        if len(rest):  # every pair of non-empty pieces, flattened: (range pair, query piece, key piece)
            (ql, qh), (kl, kh) = (np.stack(_boxes(grid, lo[rest], hi[rest]), -1) for lo, hi in ((q_lo, q_hi), (k_lo, k_hi)))
            pair, i, j = np.nonzero((ql <= qh)[:, :, None] & (kl <= kh)[:, None, :])
            s, e = self._box_truth(p, ctx, *(_digits(grid, x) for x in (ql[pair, i], qh[pair, i], kl[pair, j], kh[pair, j])))
            some[rest] = np.bincount(pair[s], minlength=len(rest)) > 0
            every[rest] = np.bincount(pair[~e], minlength=len(rest)) == 0
        return Truth(some.reshape(shape), (nonempty & ~(every & inside)).reshape(shape))

    def _boxes_truth(self, p, ctx, q: Box, k: Box) -> Truth:
        """Tile classification in box order: exact where both token sets are boxes (of one
        dilation group each where the order groups them), unknown (some visible, some not:
        the layout settles those) elsewhere."""
        shape = np.broadcast(q.lo, k.lo).shape
        q_lo, q_hi, k_lo, k_hi = ([np.broadcast_to(x, shape).ravel() for x in digits]
                                  for digits in (q.lo_digits, q.hi_digits, k.lo_digits, k.hi_digits))
        some, every = self._box_truth(p, ctx, q_lo, q_hi, k_lo, k_hi, q.steps)
        exact = np.broadcast_to(q.exact & k.exact, shape).ravel()
        return Truth((some | ~exact).reshape(shape), (~every | ~exact).reshape(shape))

    def _box_truth(self, p, ctx, q_lo, q_hi, k_lo, k_hi, steps=None):
        """(some, every) visible over boxes of tokens, given as the `_digits` of their corners
        [q_lo, q_hi] x [k_lo, k_hi] (a box's coordinate ranges, `steps` apart per dimension,
        innermost first; None: 1): in every dimension."""
        grid = self.grid(ctx)
        some, every = True, True
        steps = steps or (1,) * len(grid)
        for d, qa, qb, ka, kb, step in zip(reversed(range(len(grid))), q_lo, q_hi, k_lo, k_hi, steps):
            s, e = self._dimension_truth(p, ctx, d, grid[d], qa, qb, ka, kb, step)
            some, every = some & s, every & e
        return np.broadcast_to(some, q_lo[0].shape), np.broadcast_to(every, q_lo[0].shape)

    @classmethod
    def strategy(cls, grid=None):
        if grid is None:
            raise ValueError("neighborhood's parameters depend on the grid: pass strategy(grid=(d0, d1, ...))")
        from hypothesis import strategies as st  # a test dependency only

        @st.composite
        def texts(draw):  # per dimension: size <= length, stride <= size, size * dilation <= length
            sizes, strides, dilations = [], [], []
            for L in grid:
                K = draw(st.integers(1, L))
                dilations.append(draw(st.integers(1, max(1, L // K))))
                strides.append(draw(st.integers(1, K)))
                sizes.append(K)

            def fmt(v):  # a scalar on 1-D grids sometimes, else a tuple
                if len(v) == 1 and draw(st.booleans()):
                    return str(v[0])
                return f"({', '.join(map(str, v))}{',' if len(v) == 1 else ''})"

            args = [fmt(sizes)]
            if any(s != 1 for s in strides) or draw(st.booleans()):
                args.append(f"stride={fmt(strides)}")
            if any(r != 1 for r in dilations) or draw(st.booleans()):
                args.append(f"dilation={fmt(dilations)}")
            causal = [draw(st.booleans()) for _ in grid]  # per dimension, with any stride
            if len(set(causal)) == 1 and draw(st.booleans()):
                if causal[0] or draw(st.booleans()):
                    args.append(f"causal={'true' if causal[0] else 'false'}")
            else:
                args.append(f"causal={format_value(tuple(causal))}")
            return f"neighborhood({', '.join(args)})"

        return texts()

    def rule(self, p, ctx, q, k):
        if isinstance(q, Interval) or isinstance(k, Interval):
            return self._tile_truth(p, ctx, Interval.of(q), Interval.of(k))
        grid = self.grid(ctx)
        r_all = _per_dim(p.dilation, len(grid))
        visible = True
        for i, L, xq, xk in _coordinates(grid, q, k):
            group, start, stop = self._window(p, ctx, i, L, xq)
            r = r_all[i]
            if isinstance(r, int) and r == 1:
                visible = visible & (xk >= start) & (xk < stop)
            else:
                pk = xk // r
                visible = visible & (xk % r == group) & (pk >= start) & (pk < stop)
        return visible

    def rule_band(self, p, ctx, q0, q1):
        # keys whose outermost coordinate can be in the window of a query in [q0, q1) and, row by
        # row of that dimension, whose second coordinate can too
        grid = self.grid(ctx)
        outer = math.prod(grid[1:])
        lo0, hi0 = self._key_range(p, ctx, 0, grid[0], q0 // outer, (q1 - 1) // outer)
        rows = int(np.max(hi0 - lo0, initial=0))
        if len(grid) == 1 or rows > MAX_INTERVALS:
            return [(lo0 * outer, hi0 * outer)]
        inner = outer // grid[1]
        lo1, hi1 = self._key_range(p, ctx, 1, grid[1], *_coordinate(q0, q1 - 1, inner, grid[1]))
        bands = []
        for j in range(rows):
            row = lo0 + j
            bands.append((np.where(row < hi0, row * outer + lo1 * inner, 0), np.where(row < hi0, row * outer + hi1 * inner, 0)))
        return bands

    def _key_range(self, p, ctx, i, L, x_lo, x_hi):
        """Key coordinates [lo, hi) of dimension i that queries at coordinates x_lo..x_hi may see."""
        r = _per_dim(p.dilation, len(self.grid(ctx)))[i]
        group, start, stop = (Interval.of(v) for v in self._window(p, ctx, i, L, Interval(x_lo, x_hi)))
        return start.lo * r + group.lo, (stop.hi - 1) * r + group.hi + 1

    def __str__(self):
        args = [format_value(self.size)]
        for n, default in (("stride", Term.const(1)), ("dilation", Term.const(1)), ("causal", False)):
            v = getattr(self, n)
            if v != default:
                args.append(f"{n}={format_value(v)}")
        return f"neighborhood({', '.join(args)})"


def _coordinates(grid, q, k):
    """(dimension, its length, query coordinate, key coordinate) of row-major token indices,
    innermost dimension first."""
    inner = 1
    for i in reversed(range(len(grid))):
        L = grid[i]
        yield i, L, (q // inner if i == 0 else q // inner % L), (k // inner if i == 0 else k // inner % L)
        inner *= L


def _coordinate(lo, hi, inner, length):
    """The range of one dimension's coordinate (`token // inner % length`) over boxes of tokens
    [lo, hi]: the whole dimension where a box spans several rows of the dimension above."""
    a, b = lo // inner, hi // inner
    wrap = a // length != b // length
    return np.where(wrap, 0, a % length), np.where(wrap, length - 1, b % length)


def _digits(grid, x) -> list:
    """The row-major coordinates of tokens x, innermost dimension first (a floor division by a
    constant and a product per dimension: cheaper than `%`)."""
    out = []
    for length in reversed(grid[1:]):
        upper = x // length
        out.append(x - upper * length)
        x = upper
    return out + [x]


def _is_box(lo, hi, lo_digits, hi_digits):
    """Is each token range [lo, hi] a box of the row-major grid? The box spanned by its ends'
    coordinates holds lo and hi and no token outside [lo, hi]: it is the range when it holds as
    many tokens."""
    box, tokens = lo <= hi, 1
    for a, b in zip(lo_digits, hi_digits):
        box &= a <= b
        tokens = tokens * (b - a + 1)
    return box & (tokens == hi - lo + 1)


def _boxes(grid, lo, hi) -> list:
    """Token ranges [lo, hi] (arrays) of the row-major grid as at most 2 * ndim - 1 ranges
    [lo_i, hi_i] that are boxes of it (empty where lo_i > hi_i): level by level from the
    innermost, the part before the first and after the last whole slice of that level, then the
    whole slices in between."""
    end, pieces, size = hi + 1, [], 1
    for length in reversed(grid[1:]):
        size *= length
        cut_lo = np.minimum(-(-lo // size) * size, end)  # where the first whole slice starts
        cut_hi = np.maximum(end // size * size, cut_lo)  # where the last whole slice ends
        pieces += [np.stack([lo, cut_lo - 1]), np.stack([cut_hi, end - 1])]
        lo, end = cut_lo, cut_hi
    return pieces + [np.stack([lo, end - 1])]
