"""Which tokens of a self-attention sequence each rank holds (`Sharding`), and the helpers that
cut a whole tensor into the ranks' shards and put shards back together in token order.

A rank holds one or more contiguous token ranges of the sequence; its local tensor is their
concatenation, in the order listed. `Sharding.contiguous(lengths)`: one range per rank, rank 0
first (ragged lengths allowed). `Sharding.zigzag(length, world, tile)`: the sequence cut into
`2 * world` chunks of whole tiles, rank r holding chunks r and 2*world-1-r (the usual load
balance for causal attention: each rank gets an early and a late chunk, so its visited tiles
even out). `Sharding.balanced(pattern, ...)` (layout-derived): contiguous ranges cut where the
pattern's visited tiles reach 1/world, 2/world, ... of their total.

Every range starts on a multiple of `tile` (the least common multiple of the kernels' query and
key tiles), so a query tile and a key tile never straddle two ranks; only the sequence's end may
fall inside a tile.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import PatternError


@dataclass(frozen=True)
class Sharding:
    """Per rank, the `(start, stop)` token ranges it holds, in local order (see the module)."""

    length: int
    ranges: tuple[tuple[tuple[int, int], ...], ...]
    order: str = "custom"  # contiguous | zigzag | balanced | custom

    # ------------------------------------------------------------------ constructors

    @classmethod
    def contiguous(cls, lengths) -> Sharding:
        """One range per rank, in rank order, of the given lengths (a rank may hold none)."""
        lengths = [int(n) for n in lengths]
        if not lengths or any(n < 0 for n in lengths):
            raise PatternError(f"shard lengths must be integers >= 0, got {lengths}")
        starts = np.concatenate([[0], np.cumsum(lengths)]).tolist()
        return cls(int(starts[-1]), tuple(((a, b),) if b > a else () for a, b in zip(starts, starts[1:])),
                   "contiguous")

    @classmethod
    def zigzag(cls, length: int, world: int, tile: int) -> Sharding:
        """`2 * world` chunks of whole tiles (as equal as tiles allow, the sequence's ragged end in
        the last), rank r holding chunks r and 2*world-1-r."""
        _positive("length", length), _positive("world", world), _positive("tile", tile)
        tiles = -(-length // tile)
        cuts = [min(length, (2 * c * tiles + 2 * world) // (4 * world) * tile) for c in range(2 * world + 1)]
        chunks = [(a, b) for a, b in zip(cuts, cuts[1:])]
        ranges = tuple(_merged([chunks[r], chunks[2 * world - 1 - r]]) for r in range(world))
        return cls(length, ranges, "zigzag")

    @classmethod
    def balanced(cls, pattern, length: int, world: int, tile: int, heads: int | None = None,
                 block_m: int | None = None, block_n: int | None = None) -> Sharding:
        """Contiguous ranges that split the pattern's visited tiles (natural order, over all heads)
        evenly: cut at whole `tile`s where their running total reaches r/world of the total."""
        _positive("length", length), _positive("world", world), _positive("tile", tile)
        from ..layout.cache import cached_layout

        bm, bn = block_m or tile, block_n or tile
        heads = pattern.default_heads if heads is None else heads
        layout = cached_layout(pattern, length, length, heads, bm, bn, "natural", "cpu")
        per_row = (layout.kv_num_blocks + layout.full_kv_num_blocks).sum(0).numpy().astype(np.float64)
        work = np.repeat(per_row / bm, bm)[:length] + 1e-9  # per token; every token costs a little
        cum = np.concatenate([[0.0], np.cumsum(work)])
        cut_tiles = np.arange(0, length, tile)
        cuts = [0]
        for r in range(1, world):
            i = int(np.searchsorted(cum[cut_tiles], cum[-1] * r / world))
            c = int(cut_tiles[min(i, len(cut_tiles) - 1)])
            cuts.append(max(c, cuts[-1]))
        cuts.append(length)
        return cls(length, tuple(((a, b),) if b > a else () for a, b in zip(cuts, cuts[1:])), "balanced")

    # ------------------------------------------------------------------ queries

    @property
    def world(self) -> int:
        return len(self.ranges)

    def local_length(self, rank: int) -> int:
        return sum(b - a for a, b in self.ranges[rank])

    @property
    def lengths(self) -> tuple[int, ...]:
        return tuple(self.local_length(r) for r in range(self.world))

    def segments(self):
        """(rank, start, stop, local offset) of every range, rank by rank."""
        for rank, ranges in enumerate(self.ranges):
            offset = 0
            for a, b in ranges:
                yield rank, a, b, offset
                offset += b - a

    def check(self, block_m: int, block_n: int) -> Sharding:
        """Ranges that cover the sequence once, each starting on a multiple of both tiles (only the
        sequence's end may fall inside a tile); else a PatternError saying which boundary."""
        tile = math.lcm(block_m, block_n)
        covered = sorted((a, b) for _, a, b, _ in self.segments())
        at = 0
        for a, b in covered:
            if a != at:
                raise PatternError(f"the shards {'overlap' if a < at else 'leave a gap'} at token {min(a, at)} of "
                                   f"{self.length}", None, "every token belongs to exactly one rank")
            if a % tile:
                raise PatternError(
                    f"a shard boundary at token {a} is not on a multiple of the {block_m} x {block_n} kernel tiles "
                    f"(shard lengths {list(self.lengths)})", None,
                    f"make every shard but the sequence's last a multiple of {tile} tokens (e.g. pad the sequence)")
            at = b
        if at != self.length:
            raise PatternError(f"the shards cover {at} of {self.length} tokens")
        return self

    def order_index(self):
        """int64 [length]: the token at each position of the ranks' concatenated shards."""
        return np.concatenate([np.arange(a, b) for _, a, b, _ in self.segments()] or [np.zeros(0, np.int64)])


def _merged(ranges) -> tuple:
    """Non-empty ranges, a range that starts where the previous one stops joined to it."""
    out: list[tuple[int, int]] = []
    for a, b in ranges:
        if b > a:
            if out and out[-1][1] == a:
                out[-1] = (out[-1][0], b)
            else:
                out.append((a, b))
    return tuple(out)


def _positive(name, value):
    if not isinstance(value, (int, np.integer)) or value < 1:
        raise PatternError(f"{name} must be an integer >= 1, got {value!r}")


def shard(x, sharding: Sharding, rank: int, dim: int = 2):
    """Rank `rank`'s shard of a whole tensor `x` (tokens along `dim`), in the sharding's order."""
    _check_length(x, sharding, dim)
    parts = [x.narrow(dim, a, b - a) for a, b in sharding.ranges[rank]]
    if len(parts) == 1:
        return parts[0].contiguous()
    if not parts:
        return x.narrow(dim, 0, 0).contiguous()
    import torch

    return torch.cat(parts, dim)


def unshard(parts, sharding: Sharding, dim: int = 2):
    """The whole tensor, tokens in order, from every rank's shard (`parts[r]`: rank r's)."""
    import torch

    if len(parts) != sharding.world:
        raise PatternError(f"unshard takes one part per rank: {len(parts)} parts for {sharding.world} ranks")
    pieces = []
    for (rank, a, b, offset) in sharding.segments():
        if parts[rank].shape[dim] != sharding.local_length(rank):
            raise PatternError(f"rank {rank}'s part has {parts[rank].shape[dim]} tokens along dim {dim}, its shard "
                               f"{sharding.local_length(rank)}")
        pieces.append((a, parts[rank].narrow(dim, offset, b - a)))
    return torch.cat([p for _, p in sorted(pieces, key=lambda t: t[0])], dim)


def gather(x, sharding: Sharding, group=None, dim: int = 2):
    """Every rank's shard all-gathered (one collective; no gradient) and unsharded: the whole
    tensor in token order, on every rank."""
    import torch
    import torch.distributed as dist

    longest = max(sharding.lengths)
    pad = list(x.shape)
    pad[dim] = longest - x.shape[dim]
    padded = torch.cat([x, x.new_zeros(pad)], dim).contiguous()
    parts = [torch.empty_like(padded) for _ in range(sharding.world)]
    dist.all_gather(parts, padded, group=group)
    return unshard([p.narrow(dim, 0, n) for p, n in zip(parts, sharding.lengths)], sharding, dim)


def _check_length(x, sharding, dim):
    if x.shape[dim] != sharding.length:
        raise PatternError(f"the tensor has {x.shape[dim]} tokens along dim {dim}, the sharding {sharding.length}")
