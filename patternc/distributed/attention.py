"""`context_parallel_attention`: self-attention over a sequence sharded across the ranks of a
`torch.distributed` group, each rank exchanging only the key/value tiles the plan says its
queries visit.

Forward, per rank: post the plan's sends (its key/value runs other ranks need, keys and values
packed in one message per peer) and receives in one batched point-to-point call
(`torch.distributed.batch_isend_irecv`), run its own blocks (its queries over its own keys)
while they travel, wait, run the blocks over the received runs, and merge every block's output
by its LSE (online softmax). Backward (a `torch.autograd.Function`): `block_backward` per block
from the merged output and LSE; the blocks over received runs first, their key/value gradients
(float32) sent back to the owners in one batched call, overlapped with the own blocks' backward;
the owner adds what it receives (`_Sum`: no float32 pass over the whole shard). The received
keys and values are kept for the backward (no second exchange).

Every rank of the group must call it with the same pattern, scale and sharding, and (in
training) backpropagate through its output: the exchanges are collective.
"""
from __future__ import annotations

import math
from functools import lru_cache

from ..errors import PatternError
from ..runtime.attention import as_pattern
from ..runtime.blocks import block_backward, block_forward, block_tiles
from .merge import merge_into
from .plan import plan as make_plan
from .sharding import Sharding

_LENGTHS: dict = {}  # (group, local shape or the given sharding, ...) -> every rank's shard length


def context_parallel_attention(q, k, v, pattern, group=None, scale=None, sharding=None, return_lse=False):
    """Attention of the whole sequence for this rank's shard of queries (see the module).

    `q [B, H, S_r, D]`, `k, v [B, H_kv, S_r, D]`: this rank's tokens (GQA: H a multiple of H_kv).
    `sharding`: None or "contiguous" (rank r holds the r-th contiguous piece; lengths may differ
    and are learned with one all_gather of sizes, cached per group and shapes), "zigzag" (the
    layout of `Sharding.zigzag` over the gathered total; shard inputs with
    `patternc.distributed.shard`), every rank's shard length (a list: contiguous shards), or a
    `Sharding` (checked against the ranks' lengths once per sharding). Lengths learned without
    a list or a Sharding are cached per local shape: where the ranks' lengths change between
    calls while a rank's own shape doesn't, name them.
    Every shard boundary but the sequence's end must be a multiple of the kernels' tiles
    (`patternc.runtime.blocks.block_tiles`). Returns the output `[B, H, S_r, D]` (and the LSE
    `[B, H, S_r]`, float32, with `return_lse`); differentiable in q, k, v (and through the LSE).
    """
    import torch
    import torch.distributed as dist

    pattern = as_pattern(pattern)
    if pattern.is_routed:
        raise PatternError("routed patterns (topk) choose their key blocks from every query and key at run time: "
                           "context parallelism can't plan their exchange", pattern.span,
                           "gather the whole sequence on each rank for topk, or use a static pattern")
    if not (dist.is_available() and dist.is_initialized()):
        raise PatternError("context_parallel_attention needs torch.distributed initialized",
                           None, "call torch.distributed.init_process_group (nccl on GPUs, gloo on CPUs) first")
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise PatternError(f"{name} must be a 4-D tensor [batch, heads, shard length, head_dim], "
                               f"got {getattr(x, 'shape', type(x).__name__)}")
    if k.shape[2] != q.shape[2] or v.shape[2] != q.shape[2]:
        raise PatternError(f"q, k, v must be one shard of self-attention: lengths {q.shape[2]}, {k.shape[2]}, "
                           f"{v.shape[2]}")
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    peers = [r if group is None else dist.get_global_rank(group, r) for r in range(world)]
    bm, bn = block_tiles(q.shape[3], q.dtype)
    layout = _sharding(q, k, group, rank, world, sharding, math.lcm(bm, bn))
    layout.check(bm, bn)
    plan = make_plan(pattern, layout, heads=q.shape[1], head_dim=q.shape[3], dtype=q.dtype, kv_heads=k.shape[1],
                     batch=q.shape[0], tiles=(bm, bn))
    out, lse = _function().apply(q, k, v, plan, rank, peers, group, scale)
    return (out, lse) if return_lse else out


def _sharding(q, k, group, rank, world, sharding, tile) -> Sharding:
    if isinstance(sharding, (list, tuple)):
        sharding = Sharding.contiguous(sharding)
    if isinstance(sharding, Sharding):
        if sharding.world != world or sharding.local_length(rank) != q.shape[2]:
            mine = sharding.local_length(rank) if rank < sharding.world else 0
            raise PatternError(f"rank {rank} holds {q.shape[2]} tokens of a group of {world}; the sharding has "
                               f"{sharding.world} ranks and gives this one {mine} tokens")
        _gathered_lengths(q, k, group, world, sharding)  # once per sharding: every rank holds its share
        return sharding
    if sharding not in (None, "contiguous", "zigzag"):
        raise PatternError(f"unknown sharding {sharding!r}", None,
                           "None, 'contiguous', 'zigzag', every rank's length (a list) or a Sharding")
    lengths = _gathered_lengths(q, k, group, world)
    if sharding == "zigzag":
        layout = Sharding.zigzag(sum(lengths), world, tile)
        if layout.lengths != lengths:
            raise PatternError(f"the shards hold {list(lengths)} tokens; a zigzag of {sum(lengths)} tokens over {world} "
                               f"ranks at {tile}-token tiles holds {list(layout.lengths)}", None,
                               "cut the inputs with patternc.distributed.shard(x, Sharding.zigzag(length, world, tile), "
                               "rank)")
        return layout
    return Sharding.contiguous(lengths)


def _gathered_lengths(q, k, group, world, given: Sharding | None = None) -> tuple[int, ...]:
    """Every rank's shard length, with one all_gather of (length, batch, heads, kv heads, head_dim),
    cached per (group, local shapes), or per (group, `given` sharding), whose lengths it checks.
    The collective also makes sure that the group's first NCCL call is one every rank joins (the
    batched point-to-point calls that follow may leave ranks out)."""
    import torch
    import torch.distributed as dist

    key = (group if group is not None else dist.group.WORLD, given if given is not None else tuple(q.shape),
           tuple(q.shape[:2]), tuple(k.shape[1:2]), q.shape[3], q.dtype, q.device)
    if key in _LENGTHS:
        return _LENGTHS[key]
    mine = torch.tensor([q.shape[2], q.shape[0], q.shape[1], k.shape[1], q.shape[3]], dtype=torch.int64,
                        device=q.device)
    rows = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(rows, mine, group=group)
    rows = [r.tolist() for r in rows]
    if len({tuple(r[1:]) for r in rows}) != 1:
        raise PatternError("the ranks' shards differ in batch, heads or head_dim: (length, batch, heads, kv_heads, "
                           f"head_dim) per rank = {rows}")
    lengths = tuple(r[0] for r in rows)
    if given is not None and lengths != given.lengths:
        raise PatternError(f"the ranks hold {list(lengths)} tokens, the sharding gives them {list(given.lengths)}")
    _LENGTHS[key] = lengths
    return lengths


# ------------------------------------------------------------------------------ the exchange


def _exchange(sends, receives, group):
    """Post one batch of point-to-point sends [(tensor, peer)] and receives [(tensor, peer)]."""
    import torch.distributed as dist

    ops = [dist.P2POp(dist.isend, t, peer, group) for t, peer in sends]
    ops += [dist.P2POp(dist.irecv, t, peer, group) for t, peer in receives]
    return dist.batch_isend_irecv(ops) if ops else []


def _wait(works):
    for w in works:
        w.wait()


def _pack(k, v, runs):
    """Keys and values of `runs` of this rank's shard, packed [2, B, H_kv, tokens, D]."""
    import torch

    parts = [torch.stack([k[:, :, r.src_offset:r.src_offset + r.tokens], v[:, :, r.src_offset:r.src_offset + r.tokens]])
             for r in runs]
    return (parts[0] if len(parts) == 1 else torch.cat(parts, 3)).contiguous()


def _forward(q, k, v, plan, rank, peers, group, scale):
    import torch

    B, H, S, D = q.shape
    N = plan.sharding.length
    incoming = [i for i, t in enumerate(plan.transfers) if t.dst == rank]
    buffers = {i: k.new_empty((2, B, k.shape[1], plan.transfers[i].tokens, D)) for i in incoming}
    works = _exchange([(_pack(k, v, t.runs), peers[t.dst]) for t in plan.transfers if t.src == rank],
                      [(buffers[i], peers[plan.transfers[i].src]) for i in incoming], group)
    out = lse = None
    written: list[tuple[int, int]] = []  # row ranges some block wrote: later blocks there merge
    blocks = plan.blocks[rank]
    for waited in (False, True):
        if waited:
            _wait(works)
        for b in blocks:
            if (b.transfer is not None) != waited:
                continue
            kb, vb = _keys(k, v, buffers, b)
            lo, hi = b.q_offset, b.q_offset + b.q_stop - b.q_start
            part_out, part_lse = block_forward(q[:, :, lo:hi], kb, vb, plan.pattern, b.q_start, b.k_start, N, scale,
                                               _order(b))
            if out is None and (lo, hi) == (0, S):  # the first block covers the shard: its output is the start
                out, lse = part_out, part_lse.float()
            else:
                if out is None:
                    out = q.new_zeros((B, H, S, D))
                    lse = torch.full((B, H, S), float("-inf"), dtype=torch.float32, device=q.device)
                if any(lo < w1 and w0 < hi for w0, w1 in written):
                    merge_into(out, lse, lo, hi, part_out, part_lse.float())
                else:
                    out[:, :, lo:hi], lse[:, :, lo:hi] = part_out, part_lse
            written.append((lo, hi))
    if out is None:  # no query of this shard sees any key
        out, lse = q.new_zeros((B, H, S, D)), torch.full((B, H, S), float("-inf"), device=q.device)
    return out, lse, [buffers[i] for i in incoming]


def _order(b) -> str:
    """A rank's queries over its own keys (a diagonal block) may run class by class (dilated and
    strided rules: `block_forward(order="auto")`); the others run in natural order."""
    return "auto" if b.transfer is None and (b.q_start, b.q_stop) == (b.k_start, b.k_stop) else "natural"


def _keys(k, v, buffers, b):
    cols = slice(b.k_offset, b.k_offset + b.k_stop - b.k_start)
    if b.transfer is None:
        return k[:, :, cols], v[:, :, cols]
    buf = buffers[b.transfer]
    return buf[0, :, :, cols], buf[1, :, :, cols]


class _Sum:
    """A shard's gradient from contributions over row ranges: the first one that covers the whole
    shard (a rank's own diagonal block, usually) becomes the result as it is, and the others are
    added into it (in place, each addition rounded once to the dtype); without one, a zero tensor
    takes them all. No float32 copy of the whole shard: at long shards and sparse patterns, such
    element-wise passes would cost a good part of the backward kernels' time."""

    def __init__(self, like):
        self.like, self.total, self.pending = like, None, []

    def add(self, lo: int, hi: int, g):
        if self.total is None and (lo, hi) == (0, self.like.shape[2]) and g.dtype == self.like.dtype:
            self.total = g
            for args in self.pending:
                self._add(*args)
            self.pending = []
        elif self.total is None:
            self.pending.append((lo, hi, g))
        else:
            self._add(lo, hi, g)

    def _add(self, lo, hi, g):
        self.total[:, :, lo:hi] += g

    def result(self):
        if self.total is None:
            self.total = self.like.new_zeros(self.like.shape)
            for args in self.pending:
                self._add(*args)
        return self.total


def _backward(dout, dlse, q, k, v, out, lse, buffers, plan, rank, peers, group, scale):
    import torch

    N = plan.sharding.length
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    dq, dk, dv = _Sum(q), _Sum(k), _Sum(v)
    if dout is None:
        dout = torch.zeros_like(out)
    incoming = [i for i, t in enumerate(plan.transfers) if t.dst == rank]
    # the received keys' gradients, summed over this rank's blocks in float32 and sent home in it
    grads = {i: torch.zeros(buffers[j].shape, dtype=acc, device=q.device) for j, i in enumerate(incoming)}
    kv = dict(zip(incoming, buffers))
    blocks = plan.blocks[rank]
    works, returned = [], []
    for remote in (True, False):
        for b in blocks:
            if (b.transfer is not None) != remote:
                continue
            kb, vb = _keys(k, v, kv, b)
            lo, hi = b.q_offset, b.q_offset + b.q_stop - b.q_start
            gq, gk, gv = block_backward(dout[:, :, lo:hi], q[:, :, lo:hi], kb, vb, out[:, :, lo:hi], lse[:, :, lo:hi],
                                        plan.pattern, b.q_start, b.k_start, N, scale,
                                        None if dlse is None else dlse[:, :, lo:hi], _order(b))
            dq.add(lo, hi, gq)
            k_lo, k_hi = b.k_offset, b.k_offset + b.k_stop - b.k_start
            if remote:
                grads[b.transfer][0, :, :, k_lo:k_hi] += gk
                grads[b.transfer][1, :, :, k_lo:k_hi] += gv
            else:
                dk.add(k_lo, k_hi, gk)
                dv.add(k_lo, k_hi, gv)
        if remote:  # send the received keys' gradients home while the own blocks run
            outgoing = [t for t in plan.transfers if t.src == rank]
            returned = [(t, torch.empty((2, *k.shape[:2], t.tokens, k.shape[3]), dtype=acc, device=q.device))
                        for t in outgoing]
            works = _exchange([(grads[i], peers[plan.transfers[i].src]) for i in incoming],
                              [(buf, peers[t.dst]) for t, buf in returned], group)
    _wait(works)
    for t, buf in returned:
        for r in t.runs:
            dk.add(r.src_offset, r.src_offset + r.tokens, buf[0, :, :, r.offset:r.offset + r.tokens])
            dv.add(r.src_offset, r.src_offset + r.tokens, buf[1, :, :, r.offset:r.offset + r.tokens])
    return dq.result(), dk.result(), dv.result()


@lru_cache(maxsize=1)
def _function():
    import torch

    class ContextParallelAttention(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v, plan, rank, peers, group, scale):
            out, lse, buffers = _forward(q, k, v, plan, rank, peers, group, scale)
            ctx.save_for_backward(q, k, v, out, lse, *buffers)
            ctx.args = (plan, rank, peers, group, scale)
            ctx.set_materialize_grads(False)
            return out, lse

        @staticmethod
        def backward(ctx, dout, dlse):
            q, k, v, out, lse, *buffers = ctx.saved_tensors
            dq, dk, dv = _backward(dout, dlse, q, k, v, out, lse, buffers, *ctx.args)
            return dq, dk, dv, None, None, None, None, None

    return ContextParallelAttention
