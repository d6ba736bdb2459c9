"""Box order: a pattern on a `grid(d0, d1, ...)` whose rules classify boxes of the grid exactly
(`Primitive.box_groups`: multi-dimensional neighborhoods) is laid out box by box, so that a
tile of BLOCK tokens is a box of the grid (64 tokens: 8 x 8, or 4 x 4 x 4) instead of a piece of
one row: a query box's neighborhood then covers whole key boxes, full tiles, and cuts only
those on its border (as GNA and NATTEN do with their token permutation).

Positions go dilation group by dilation group (coordinate `x = g + r * s` per dimension, r the
rule's dilation: tokens of one group only see each other), then box by box over the group's
sub-grid of coordinates s, row-major, then row-major inside a box. When the two tile sides
differ (128 x 64), the larger tile is a box of whole smaller boxes (8 x 16 of two 8 x 8), so
both sides' tiles are boxes. Every level is a digit of the position, and a digit moves the
token by a fixed amount: the token of a position is the sum of its digits' moves, so the token
of `first + i` (first a tile's first position, i < BLOCK) is `token(first) + token(i)`, which
the kernel uses (`codegen.order.Boxes`). Which box shapes: `layout.build.token_order` ranks
those that divide the grid by the key tiles their query tiles reach (8 x 8 for a 13 x 13 window,
a row of 64 of each dilation group for a dilated 7 x 7 one), and keeps natural order where
that reaches fewer.
"""
from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import numpy as np

from ..ir.intervals import Box, Interval
from ..ir.nodes import Node
from ..primitives import Primitive


def box_groups(node: Node, grid) -> tuple[int, ...] | None:
    """Per grid dimension, the dilation its coordinates are grouped by: the rules' own where they
    all agree, else 1; None where some rule can't classify boxes of the grid exactly."""
    groups = [leaf.box_groups(grid) for leaf in node.walk() if isinstance(leaf, Primitive)]
    if not groups or any(g is None for g in groups):
        return None
    return tuple(r[0] if len(set(r)) == 1 else 1 for r in zip(*groups))


def box_shapes(sub: tuple[int, ...], tokens: int, start: tuple[int, ...] | None = None) -> list[tuple[int, ...]]:
    """Every box of `tokens` tokens whose sides are powers of two dividing the sub-grid `sub` and
    multiples of `start`'s (1 x ... x 1 by default), the closest to a cube first (then the one
    longest in the innermost dimensions)."""
    start = start or (1,) * len(sub)
    if tokens & (tokens - 1) or tokens % math.prod(start):
        return []
    sides = [[s << e for e in range(max(L // s, 1).bit_length()) if L % (s << e) == 0] for L, s in zip(sub, start)]
    shapes = [shape for shape in itertools.product(*sides) if math.prod(shape) == tokens]
    return sorted(shapes, key=lambda b: (max(b) // min(b), tuple(-x for x in reversed(b))))


@dataclass(frozen=True)
class BoxOrder:
    """Tokens of `grid` ordered by dilation group (`dilation` per dimension), then by boxes;
    `boxes`: the box shapes, smaller tile's first, each a multiple of the one before."""

    grid: tuple[int, ...]
    dilation: tuple[int, ...]
    boxes: tuple[tuple[int, ...], ...]
    name = "box order"

    @property
    def sub(self) -> tuple[int, ...]:
        """The sub-grid of one dilation group."""
        return tuple(L // r for L, r in zip(self.grid, self.dilation))

    def describe(self) -> str:
        """The order in words, for module headers and reports."""
        groups = "" if set(self.dilation) == {1} else f" in its {' x '.join(map(str, self.dilation))} dilation groups"
        shapes = " and ".join(" x ".join(map(str, b)) for b in self.boxes)
        return f"box order: tiles are {shapes} boxes of the grid {' x '.join(map(str, self.grid))}{groups}"

    @property
    def kernel_order(self) -> dict:
        """`codegen.make_spec`'s token-order argument."""
        return {"box": self}

    @property
    def tma(self) -> bool:
        """Can TMA descriptors copy its tiles? Where both tile sides are one box shape and there
        are no dilation groups: a tile is then a box of a view [batch, heads, *grid, D] (at most
        5 dimensions: 2-D grids; a 3-D grid's view would need batch and heads merged, which
        tensors sliced from one projection can't). A box of a dilation group, or two boxes side
        by side, is no TMA box."""
        return len(self.boxes) == 1 and set(self.dilation) == {1} and len(self.grid) <= 2

    @functools.cache  # per order: orders are few, and their layouts keep them anyway
    def units(self) -> list[tuple[int, ...]]:
        """Per digit level below the groups, the sub-grid coordinates one unit of it moves."""
        return [(1,) * len(self.grid), *self.boxes]

    @functools.cache  # per order: orders are few, and their layouts keep them anyway
    def digits(self) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
        """The position's digits, least significant first: per level (a box's cells, the boxes of
        the larger box, the group's boxes, the groups), (count per dimension, token move per unit)."""
        inner = [math.prod(self.grid[d + 1:]) for d in range(len(self.grid))]
        levels = [(tuple(s // u for s, u in zip(shape, unit)),
                   tuple(u * r * i for u, r, i in zip(unit, self.dilation, inner)))
                  for unit, shape in zip(self.units(), (*self.boxes, self.sub))]
        levels.append((self.dilation, tuple(inner)))
        return levels

    def tokens(self, p):
        """Token index of layout position(s) p (ints, numpy or torch)."""
        token = 0
        for counts, moves in self.digits():
            size = math.prod(counts)
            digit, p = p % size, p // size
            for c, move in zip(reversed(counts), reversed(moves)):
                if c > 1:
                    token = token + digit % c * move
                    digit = digit // c
        return token

    def order(self):
        """int64 tensor [N]: the token at each layout position."""
        import torch

        return torch.as_tensor(self.tokens(np.arange(math.prod(self.grid), dtype=np.int64)))

    def coordinates(self, p) -> tuple[list, list]:
        """(group, sub-grid coordinate) per dimension, outermost first, of positions p (numpy)."""
        groups, coords = [np.zeros_like(p) for _ in self.grid], [np.zeros_like(p) for _ in self.grid]
        levels, units = self.digits(), self.units()
        for level, (counts, _) in enumerate(levels):
            size = math.prod(counts)
            digit, p = p % size, p // size
            for d in reversed(range(len(counts))):
                value = digit % counts[d]
                digit = digit // counts[d]
                if level == len(levels) - 1:
                    groups[d] = value
                else:
                    coords[d] = coords[d] + value * units[level][d]
        return groups, coords

    def position(self, groups, coords):
        """Layout positions of tokens given by (group, sub-grid coordinate) per dimension."""
        p, weight, units = 0, 1, self.units()
        for level, (counts, _) in enumerate(self.digits()):
            digit = 0
            for d, c in enumerate(counts):
                value = groups[d] if level == len(units) else coords[d] // units[level][d] % c
                digit = digit * c + value
            p, weight = p + digit * weight, weight * math.prod(counts)
        return p

    def token_interval(self, p: Interval) -> Box:
        """The tokens of layout ranges [p.lo, p.hi]: a box where the range is one (its ends'
        coordinates span a box of as many tokens, in one group: positions grow with every
        coordinate, so that box lies inside the range), else the whole grid."""
        (g_lo, lo), (g_hi, hi) = self.coordinates(p.lo), self.coordinates(p.hi)
        exact, cells = np.ones(np.shape(p.lo), bool), 1
        for d in range(len(self.grid)):
            exact &= (g_lo[d] == g_hi[d]) & (lo[d] <= hi[d])
            cells = cells * (hi[d] - lo[d] + 1)
        exact &= cells == p.hi - p.lo + 1
        x_lo = [g + r * s for g, r, s in zip(g_lo, self.dilation, lo)]
        x_hi = [g + r * s for g, r, s in zip(g_hi, self.dilation, hi)]
        first, last = self.tokens(p.lo), self.tokens(p.hi)
        return Box(np.where(exact, first, 0), np.where(exact, last, math.prod(self.grid) - 1),
                   x_lo[::-1], x_hi[::-1], self.dilation[::-1], exact)

    def run_tiles(self, block: int) -> int:
        """The most key tiles of a run classified whole: one box (consecutive boxes are mostly not one)."""
        return 1

    def band(self, node: Node, ctx, p0, p1):
        """Candidate key ranges (layout positions) for query tiles [p0, p1), boxes: every box of
        the smaller tile shape inside the key coordinates the rule's `box_band` gives, a range
        each (empty ranges where a query tile has fewer; boxes of a larger key tile merge)."""
        shape, block = self.boxes[0], math.prod(self.boxes[0])
        groups, lo, hi = self.query_boxes(p0, p1)
        first, count = self.key_boxes(groups, node.box_band(ctx, lo, hi), shape)
        out = []
        for offsets in np.ndindex(*(int(c.max(initial=0)) for c in count)):
            inside = np.all([o < c for o, c in zip(offsets, count)], axis=0)
            start = self.position(groups, [(f + o) * s for f, o, s in zip(first, offsets, shape)])
            out.append((np.where(inside, start, 0), np.where(inside, start + block, 0)))
        return out

    def query_boxes(self, p0, p1):
        """(group, first coordinate, last coordinate) per dimension of the tiles [p0, p1)."""
        (groups, lo), (_, hi) = self.coordinates(p0), self.coordinates(p1 - 1)
        return groups, *([g + r * s for g, r, s in zip(groups, self.dilation, c)] for c in (lo, hi))

    def key_boxes(self, groups, keys, shape):
        """(first key box, how many) per dimension, in boxes of `shape` along it, inside the key
        coordinates `keys` ([lo, hi) per dimension; None: any) of query tiles of `groups`."""
        first, count = [], []
        for d, r in enumerate(self.dilation):
            if keys is None:
                a, b = np.zeros_like(groups[d]), np.full_like(groups[d], self.sub[d] - 1)
            else:  # the group's coordinates s with g + r*s in [lo, hi)
                a = np.maximum(-(-(keys[d][0] - groups[d]) // r), 0)
                b = np.minimum((keys[d][1] - 1 - groups[d]) // r, self.sub[d] - 1)
            first.append(a // shape[d])
            count.append(np.where(b >= a, b // shape[d] - a // shape[d] + 1, 0))
        return first, count


def key_tiles(orders: list[BoxOrder], leaf: Primitive, ctx, p0, p1, block: int) -> list[int]:
    """Per order, how many key tiles of `block` tokens `leaf`'s band reaches from the query tiles
    [p0, p1) (summed over them), with one `box_band` call for every order."""
    queries = [order.query_boxes(p0, p1) for order in orders]
    keys = leaf.box_band(ctx, *([np.concatenate(x) for x in zip(*(q[i] for q in queries))] for i in (1, 2)))
    n, out = len(p0), []
    for j, (order, (groups, _, _)) in enumerate(zip(orders, queries)):
        mine = None if keys is None else [(lo[j * n:(j + 1) * n], hi[j * n:(j + 1) * n]) for lo, hi in keys]
        shape = next(b for b in order.boxes if math.prod(b) == block)
        out.append(int(np.prod(order.key_boxes(groups, mine, shape)[1], axis=0).sum()))
    return out


def box_orders(node: Node, M: int, N: int, block_m: int, block_n: int, grid) -> list[BoxOrder]:
    """The box orders `node` may be laid out in, the closest to cubes first: a grid of 2 or more
    dimensions, rules that classify its boxes exactly, M == N, tiles of powers of two and
    dilation groups that divide into boxes of both tile sizes (none otherwise)."""
    if grid is None or len(grid) < 2 or M != N or N != math.prod(grid):
        return []
    dilation = box_groups(node, grid)
    if dilation is None or any(L % r for L, r in zip(grid, dilation)):
        return []
    sub = tuple(L // r for L, r in zip(grid, dilation))
    small, large = sorted((block_m, block_n))
    return [BoxOrder(tuple(grid), dilation, (s,) if small == large else (s, b))
            for s in box_shapes(sub, small) for b in box_shapes(sub, large, s)]
