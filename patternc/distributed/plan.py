"""The exchange plan of context-parallel attention, from the pattern's layout.

For every ordered rank pair (src, dst): the key tiles of src's shard that some query tile of
dst's shard visits, on any head, merged into runs of tiles contiguous in src's local tensor
(`Transfer.runs`). src sends them once, keys and values packed in one message; dst receives them
into one buffer. Then, per rank, the blocks it runs (`Block`): each of its query ranges against
each of its own key ranges and each received run that the layout pairs with it (a block covers
only the query tiles of the range that visit those keys), with the tiles it visits. Gradients of
the received keys and values go back along the same transfers.

Natural token order only (blocks are cut from the natural-order layout): residue-class layouts
(`order="auto"` for dilated and strided rules) are not used across ranks.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..errors import PatternError
from .sharding import Sharding

_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}


@dataclass(frozen=True)
class Run:
    """Key tokens `start..stop-1` (global positions) of the sender, at `src_offset` in its local
    tensor and `offset` in the packed message."""

    start: int
    stop: int
    src_offset: int
    offset: int

    @property
    def tokens(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Transfer:
    """The key/value runs `src` sends `dst` (and `dst` sends back as gradients)."""

    src: int
    dst: int
    runs: tuple[Run, ...]

    @property
    def tokens(self) -> int:
        return sum(r.tokens for r in self.runs)


@dataclass(frozen=True)
class Block:
    """One `block_forward` call of a rank: queries `q_start..q_stop-1` (at `q_offset` in the
    rank's shard: the tiles of one of its ranges that visit these keys) over keys `k_start..k_stop-1`, which are the rank's own (`transfer` None, at
    `k_offset` in its shard) or a received run (`transfer`: index into `Plan.transfers`, at
    `k_offset` in that message); `tiles`: the tiles it visits, summed over heads."""

    q_start: int
    q_stop: int
    q_offset: int
    k_start: int
    k_stop: int
    k_offset: int
    transfer: int | None
    tiles: int


@dataclass(frozen=True)
class Plan:
    """See the module. Sizes per token of keys and values: `kv_heads * head_dim * element_bytes`
    each, times `batch`; gradients go back in `grad_bytes` per element (float32 accumulators)."""

    pattern: object
    sharding: Sharding
    heads: int
    kv_heads: int
    head_dim: int
    element_bytes: int
    batch: int
    block_m: int
    block_n: int
    transfers: tuple[Transfer, ...]
    blocks: tuple[tuple[Block, ...], ...]
    grad_bytes: int = 4

    @property
    def world(self) -> int:
        return self.sharding.world

    @property
    def token_bytes(self) -> int:
        """Bytes of one token's key and value (all kv heads, the whole batch)."""
        return 2 * self.batch * self.kv_heads * self.head_dim * self.element_bytes

    def tokens_received(self, rank: int) -> int:
        return sum(t.tokens for t in self.transfers if t.dst == rank)

    def tokens_sent(self, rank: int) -> int:
        return sum(t.tokens for t in self.transfers if t.src == rank)

    def bytes_received(self, rank: int) -> int:
        """Forward: keys and values this rank receives."""
        return self.tokens_received(rank) * self.token_bytes

    def bytes_sent(self, rank: int) -> int:
        """Forward: keys and values this rank sends."""
        return self.tokens_sent(rank) * self.token_bytes

    def backward_bytes_sent(self, rank: int) -> int:
        """Backward: gradients of received keys and values sent back to their owners."""
        return self.tokens_received(rank) * self.token_bytes // self.element_bytes * self.grad_bytes

    def backward_bytes_received(self, rank: int) -> int:
        return self.tokens_sent(rank) * self.token_bytes // self.element_bytes * self.grad_bytes

    def ring_bytes_received(self, rank: int) -> int:
        """What ring attention moves into this rank in the forward: every other shard's keys and values."""
        return (self.sharding.length - self.sharding.local_length(rank)) * self.token_bytes

    def tiles(self, rank: int) -> int:
        """Tiles this rank's blocks visit (summed over heads): its compute."""
        return sum(b.tiles for b in self.blocks[rank])

    def transfer(self, src: int, dst: int) -> Transfer | None:
        for t in self.transfers:
            if t.src == src and t.dst == dst:
                return t
        return None

    def summary(self) -> dict:
        """Per rank: tokens and bytes moved (forward), tiles and blocks; and the totals."""
        ranks = [{"rank": r, "tokens": self.sharding.local_length(r), "ranges": [list(x) for x in self.sharding.ranges[r]],
                  "tokens_received": self.tokens_received(r), "bytes_received": self.bytes_received(r),
                  "bytes_sent": self.bytes_sent(r), "backward_bytes_sent": self.backward_bytes_sent(r),
                  "ring_bytes_received": self.ring_bytes_received(r), "tiles": self.tiles(r),
                  "blocks": len(self.blocks[r]), "peers": sorted({t.src for t in self.transfers if t.dst == r})}
                 for r in range(self.world)]
        return {"length": self.sharding.length, "world": self.world, "order": self.sharding.order,
                "tiles": [self.block_m, self.block_n], "heads": self.heads, "kv_heads": self.kv_heads,
                "head_dim": self.head_dim, "element_bytes": self.element_bytes, "batch": self.batch,
                "bytes_moved": sum(r["bytes_received"] for r in ranks), "ranks": ranks}


def dtype_name(dtype) -> str:
    """"bfloat16", "float16", "float32" or "float64" from a torch dtype or its name ("bf16", ...)."""
    name = str(dtype).removeprefix("torch.")
    name = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}.get(name, name)
    if name not in _BYTES:
        raise PatternError(f"unknown dtype {dtype!r}", None, "bfloat16, float16 or float32")
    return name


def dtype_bytes(dtype) -> int:
    return _BYTES[dtype_name(dtype)]


def plan(pattern, lengths, heads: int | None = None, head_dim: int = 128, dtype="bfloat16", kv_heads: int | None = None,
         batch: int = 1, tiles: tuple[int, int] | None = None) -> Plan:
    """The exchange plan (see the module) of `pattern` over shards: `lengths` (one contiguous
    shard per rank, in rank order) or a `Sharding`. `tiles` = (block_m, block_n), by default the
    kernels' (`patternc.runtime.blocks.block_tiles(head_dim, dtype)`)."""
    from ..runtime.attention import as_pattern

    pattern = as_pattern(pattern)
    if pattern.is_routed:
        raise PatternError("routed patterns (topk) choose their key blocks from every query and key at run time: "
                           "context parallelism can't plan their exchange", pattern.span,
                           "gather the whole sequence on each rank for topk (torch.distributed.all_gather), or use a "
                           "static pattern")
    sharding = lengths if isinstance(lengths, Sharding) else Sharding.contiguous(lengths)
    if sharding.length < 1:
        raise PatternError("the sharded sequence is empty")
    heads = pattern.default_heads if heads is None else int(heads)
    kv_heads = heads if kv_heads is None else int(kv_heads)
    if tiles is None:
        import torch

        from ..runtime.blocks import block_tiles

        tiles = block_tiles(head_dim, getattr(torch, dtype_name(dtype)))
    block_m, block_n = (int(t) for t in tiles)
    sharding.check(block_m, block_n)
    transfers, blocks = _plan(pattern, sharding, heads, block_m, block_n)
    return Plan(pattern, sharding, heads, kv_heads, head_dim, dtype_bytes(dtype), batch, block_m, block_n, transfers,
                blocks, 8 if dtype_bytes(dtype) == 8 else 4)


@lru_cache(maxsize=64)
def _plan(pattern, sharding: Sharding, heads: int, bm: int, bn: int):
    from ..layout.cache import cached_layout

    N, P = sharding.length, sharding.world
    layout = cached_layout(pattern, N, N, heads, bm, bn, "natural", "cpu")
    segs = list(sharding.segments())  # (rank, start, stop, offset)
    n_qt, n_kt = -(-N // bm), -(-N // bn)
    qseg, kseg = np.full(n_qt, -1, np.int64), np.full(n_kt, -1, np.int64)
    for s, (_, a, b, _) in enumerate(segs):
        qseg[a // bm: -(-b // bm)] = s
        kseg[a // bn: -(-b // bn)] = s
    seg_rank = np.array([s[0] for s in segs] or [0], np.int64)
    seg_start = np.array([s[1] for s in segs] or [0], np.int64)
    seg_offset = np.array([s[3] for s in segs] or [0], np.int64)

    # every visited tile once per head that has it (heads sharing a tiling share its arrays)
    weight: dict[int, list] = {}
    for tiles in layout._tiles:
        weight.setdefault(id(tiles), [tiles, 0])[1] += 1
    qts, kts, ws = [], [], []
    for tiles, w in weight.values():
        qts.append(tiles[0].astype(np.int64))
        kts.append(tiles[1].astype(np.int64))
        ws.append(np.full(len(tiles[0]), w, np.int64))
    qt, kt, w = (np.concatenate(x) if x else np.zeros(0, np.int64) for x in (qts, kts, ws))
    qs, ks = qseg[qt], kseg[kt]
    dst, src = seg_rank[qs], seg_rank[ks]
    S = len(segs)

    # local blocks: (query segment, key segment) of one rank
    own = dst == src
    local = np.bincount(qs[own] * S + ks[own], weights=w[own], minlength=S * S).reshape(S, S)
    local_rows = _row_span(qs[own] * S + ks[own], qt[own], S * S)

    # transfers: per (src, dst), the needed key tiles, in runs contiguous in src's local tensor
    remote = ~own
    key = np.unique((src[remote] * P + dst[remote]) * n_kt + kt[remote])
    pair, need_kt = key // n_kt, key % n_kt
    lookup = np.full(P * n_kt, -1, np.int64)  # dst * n_kt + kt -> global run index
    transfers, run_index = [], []  # run_index[g] = (transfer index, run index within it)
    for p in np.unique(pair):
        s_rank, d_rank = divmod(int(p), P)
        kts = need_kt[pair == p]
        pos = seg_offset[kseg[kts]] + kts * bn - seg_start[kseg[kts]]  # in src's local tensor
        breaks = np.flatnonzero((np.diff(kts) != 1) | (np.diff(pos) != bn)) + 1
        firsts, lasts = np.concatenate([[0], breaks]), np.concatenate([breaks, [len(kts)]]) - 1
        runs, offset = [], 0
        for f, last in zip(firsts.tolist(), lasts.tolist()):
            start, stop = int(kts[f]) * bn, min(int(kts[last] + 1) * bn, N)
            lookup[d_rank * n_kt + kts[f:last + 1]] = len(run_index)
            run_index.append((len(transfers), len(runs)))
            runs.append(Run(start, stop, int(pos[f]), offset))
            offset += stop - start
        transfers.append(Transfer(s_rank, d_rank, tuple(runs)))

    # remote blocks: (query segment, run)
    R = max(len(run_index), 1)
    gr = lookup[dst[remote] * n_kt + kt[remote]]
    far = np.bincount(qs[remote] * R + gr, weights=w[remote], minlength=S * R).reshape(S, R)
    far_rows = _row_span(qs[remote] * R + gr, qt[remote], S * R)

    def block(s, index, k_start, k_stop, k_offset, transfer, tiles):
        """A block over only the query tiles of segment s that visit its keys."""
        _, a, b, off = segs[s]
        lo, hi = max(a, int(index[0]) * bm), min(b, (int(index[1]) + 1) * bm)
        return Block(lo, hi, off + lo - a, k_start, k_stop, k_offset, transfer, int(tiles))

    blocks: list[list[Block]] = [[] for _ in range(P)]
    for s, (rank, a, b, off) in enumerate(segs):
        for s2, (rank2, a2, b2, off2) in enumerate(segs):
            if rank2 == rank and local[s, s2] > 0:
                blocks[rank].append(block(s, local_rows[:, s * S + s2], a2, b2, off2, None, local[s, s2]))
    for s, (rank, a, b, off) in enumerate(segs):
        for g, (ti, ri) in enumerate(run_index):
            if far[s, g] > 0:
                run = transfers[ti].runs[ri]
                blocks[rank].append(block(s, far_rows[:, s * R + g], run.start, run.stop, run.offset, ti, far[s, g]))
    return tuple(transfers), tuple(tuple(b) for b in blocks)


def _row_span(group, rows, n):
    """[2, n]: the first and last of `rows` per group index (unset where a group has none)."""
    span = np.stack([np.full(n, np.iinfo(np.int64).max), np.full(n, -1)])
    np.minimum.at(span[0], group, rows)
    np.maximum.at(span[1], group, rows)
    return span

