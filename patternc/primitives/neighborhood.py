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

from ..ir.expr import Interval, Term, Truth, clamp, maximum, minimum
from .base import BOOLS, INTS, Primitive, format_value, param
from .tables import _prefix_sums, rectangle_truth

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

    def exact_tiles(self, ctx, block_m, block_n):
        # tight when every tile of flattened tokens is a box of the grid (see _tile_truth)
        return all(_tiles_are_boxes(self.grid(ctx), b) for b in (block_m, block_n))

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

    def _dimension_sums(self, p, ctx, i, L):
        """Prefix sums of dimension i's visibility table [L, L] (query coordinate, key coordinate)."""
        key = (i, L, *(_per_dim(getattr(p, n), len(self.grid(ctx)))[i] for n in PER_DIM))
        cache = self.__dict__.setdefault("_sums_cache", {})
        if key not in cache:
            x, y = np.arange(L)[:, None], np.arange(L)[None, :]
            group, start, stop = self._window(p, ctx, i, L, x)
            r = key[4]
            table = (y % r == group) & (y // r >= start) & (y // r < stop)
            cache[key] = _prefix_sums(np.broadcast_to(table, (L, L)))
        return cache[key]

    def _tile_truth(self, p, ctx, q: Interval, k: Interval) -> Truth:
        """Tile classification: the window is a product over dimensions, so on a box of the grid
        a pair is visible somewhere (everywhere) iff it is in every dimension; each dimension is
        settled exactly from its small visibility table. Non-box tiles get their bounding box."""
        truth = Truth(True, False)
        for i, L, xq, xk in _coordinates(self.grid(ctx), q, k):
            truth = truth & rectangle_truth(self._dimension_sums(p, ctx, i, L), xq, xk)
        return truth

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
        # keys whose outermost coordinate can be in the window of any query in [q0, q1)
        grid = self.grid(ctx)
        outer = math.prod(grid[1:])
        x = Interval(q0 // outer, (q1 - 1) // outer)
        r = _per_dim(p.dilation, len(grid))[0]
        group, start, stop = self._window(p, ctx, 0, grid[0], x)
        lo = Interval.of(start).lo * r + (Interval.of(group).lo if r != 1 else 0)
        hi = (Interval.of(stop).hi - 1) * r + (Interval.of(group).hi if r != 1 else 0) + 1
        return [(lo * outer, hi * outer)]

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


def _tiles_are_boxes(grid, b) -> bool:
    """Is every run [i*b, (i+1)*b) of row-major tokens a box of the grid?"""
    for length in reversed(grid):
        if b <= length:
            return length % b == 0
        if b % length:
            return False
        b //= length
    return True

