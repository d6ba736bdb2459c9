"""Residue decomposition: a pattern that only ever pairs tokens of one residue class
(`visible(q, k)` implies `q % r == k % r`, e.g. `window(w, dilation=r)`, `strided(r)`) is r
interleaved dense problems over the tokens `i = c, c + r, c + 2r, ...`.

The layout then orders tokens class by class (layout position p is token
`(p % L) * r + p // L` with `L = N / r`); a tile of that order is `BLOCK` tokens of one class,
which the kernel reads with a row stride of r: no copy, and no tile is spent on the r - 1 other
classes that a tile of consecutive tokens would mostly hold.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..ir.expr import Interval
from ..ir.nodes import Difference, Intersect, Node, Union
from ..primitives import Primitive


def residue_modulus(node: Node, grid=None) -> int:
    """The largest r known to keep every visible pair inside one residue class (1: none)."""
    if isinstance(node, Primitive):
        return node.residue_modulus(grid)
    if isinstance(node, Intersect):
        a, b = residue_modulus(node.a, grid), residue_modulus(node.b, grid)
        return math.lcm(a, b) if a > 1 and b > 1 else max(a, b)
    if isinstance(node, Union):
        a, b = residue_modulus(node.a, grid), residue_modulus(node.b, grid)
        return math.gcd(a, b) if a > 1 and b > 1 else 1
    if isinstance(node, Difference):
        return residue_modulus(node.a, grid)
    return 1


@dataclass(frozen=True)
class ResidueOrder:
    """Tokens ordered by residue class modulo `modulus`; each class has `class_len` tokens."""

    modulus: int
    class_len: int
    tma = True  # a class is a column of R-strided rows: TMA descriptors copy its tiles

    def tokens(self, p):
        """Token index of layout position(s) p (ints, numpy or torch)."""
        return (p % self.class_len) * self.modulus + p // self.class_len

    def order(self):
        """int64 tensor [N]: the token at each layout position."""
        import torch

        return self.tokens(torch.arange(self.modulus * self.class_len))

    def token_interval(self, p: Interval) -> Interval:
        """Tokens of layout ranges that stay inside one class: `c + r*i`, a strided interval."""
        cls = p.lo // self.class_len
        first = p.lo - cls * self.class_len
        last = p.hi - cls * self.class_len
        return Interval(cls + self.modulus * first, cls + self.modulus * last, step=self.modulus)

    @property
    def kernel_order(self) -> dict:
        """`codegen.make_spec`'s token-order argument."""
        return {"residue": self.modulus}

    @property
    def name(self) -> str:
        return f"residue order mod {self.modulus}"

    def describe(self) -> str:
        """The order in words, for module headers and reports."""
        r = self.modulus
        return f"residue order: {r} classes of {self.class_len} tokens (a tile reads rows {r} apart)"

    def run_tiles(self, block: int) -> int:
        """The most key tiles of a run classified whole: a class's (runs stay inside one)."""
        return self.class_len // block

    def band(self, node: Node, ctx, p0, p1):
        """Candidate key ranges (layout positions) for query tiles [p0, p1) of one class each."""
        cls = p0 // self.class_len
        t0 = cls + self.modulus * (p0 - cls * self.class_len)
        t1 = cls + self.modulus * (p1 - 1 - cls * self.class_len) + 1
        out = []
        for lo, hi in node.band(ctx, t0, t1):
            lo = np.broadcast_to(np.asarray(lo, dtype=np.int64), p0.shape)
            hi = np.broadcast_to(np.asarray(hi, dtype=np.int64), p0.shape)
            j_lo = np.clip(-(-(lo - cls) // self.modulus), 0, self.class_len)
            j_hi = np.clip(-(-(hi - cls) // self.modulus), 0, self.class_len)
            base = cls * self.class_len
            out.append((base + j_lo, base + np.maximum(j_hi, j_lo)))
        return out


def residue_order(node: Node, M: int, N: int, block_m: int, block_n: int, grid=None) -> ResidueOrder | None:
    """The residue order to lay `node` out in, when it applies: an r-closed pattern, M == N,
    and classes that split into whole tiles."""
    r = residue_modulus(node, grid)
    if r <= 1 or M != N or N % r:
        return None
    length = N // r
    if length % block_m or length % block_n:
        return None
    return ResidueOrder(r, length)


def natural_order_reason(pattern, M: int, N: int, heads: int | None, block_m: int, block_n: int) -> str | None:
    """Why `order="auto"` keeps tokens in natural order although some section is r-closed (a
    residue order would visit about r times fewer tiles); None when no section is."""
    sections = pattern.sections(heads)
    grid = pattern.grid_shape(M, N)
    closed = [(s, residue_modulus(s.expr, grid)) for s in sections]
    closed = [(s, r) for s, r in closed if r > 1]
    if not closed:
        return None
    s, r = closed[0]
    if len(sections) > 1:
        heads_text = f"heads {s.lo}..{s.hi}" if s.hi > s.lo else f"head {s.lo}"
        return (f"{heads_text} pair only tokens of one residue class mod {r}, but a layout has one token order "
                f"for all heads and the other sections need natural order: lay such heads out as a pattern of "
                f"their own to visit about {r}x fewer tiles")
    if pattern.is_routed:
        return "routed patterns are laid out in natural order"
    if M != N:
        return f"residue classes mod {r} need M == N (got M={M}, N={N})"
    if N % r or (N // r) % block_m or (N // r) % block_n:
        return (f"residue classes mod {r} need N / {r} to be a multiple of both tile sides "
                f"({block_m} x {block_n}); N = {N}")
    return None
