"""`topk(k, block=b)`: routed attention (MoBA, BiFormer): per query block, the `k` key blocks whose
mean key scores highest against the block's mean query (fp32 dot product). The query's own
block is always kept and counts toward `k`; under `causal` (the pattern is `causal & ...`)
blocks in the future are never chosen (MoBA). Ties go to the lower block index. Resolved at run
time from q and k.

Blocks are `block` tokens from 0 (the last one possibly short; its mean is over its tokens).
With M != N the own block of query block Q is `Q + ceil(N/b) - ceil(M/b)` (bottom-right, as
causal). k may have fewer heads than q (GQA/MQA: each key head serves `H // Hkv` query heads).

    causal & topk(2, block=2)
    #.....
    ##....
    ###...   own block + the best earlier block
    ####..
    ##..#.
    ##..##
"""
from __future__ import annotations

from dataclasses import dataclass


from ..errors import PatternError
from ..ir.expr import Term
from .base import Primitive, param
from .tables import lookup


def select_blocks(q, k, count: int, block: int, causal: bool):
    """bool [H, nQ, nK] block selection from q [H, M, D] and k [Hkv, N, D] (torch, any device)."""
    import torch

    H, M, _ = q.shape
    Hkv, N, _ = k.shape
    n_q, n_k = -(-M // block), -(-N // block)

    def pool(x, n):
        padded = torch.zeros(x.shape[0], n * block, x.shape[2], dtype=torch.float32, device=x.device)
        padded[:, : x.shape[1]] = x.float()
        counts = torch.full((n,), float(block), device=x.device)
        counts[-1] = x.shape[1] - (n - 1) * block
        return padded.view(x.shape[0], n, block, -1).sum(2) / counts[None, :, None]

    qbar, kbar = pool(q, n_q), pool(k, n_k)
    kbar = kbar.repeat_interleave(H // Hkv, dim=0)
    scores = qbar @ kbar.transpose(1, 2)  # [H, nQ, nK]
    own = torch.arange(n_q, device=q.device)[:, None] + (n_k - n_q)
    K = torch.arange(n_k, device=q.device)[None, :]
    eligible = (K < own) if causal else (K != own)
    scores = scores.masked_fill(~eligible, float("-inf"))
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., : max(count - 1, 0)]
    chosen = torch.zeros(H, n_q, n_k, dtype=torch.bool, device=q.device)
    chosen.scatter_(-1, order, torch.ones_like(order, dtype=torch.bool))
    chosen &= eligible.expand_as(chosen)  # fewer eligible blocks than k-1: the -inf picks drop out
    chosen |= (K == own).expand_as(chosen) & (own >= 0) & (own < n_k)
    return chosen


@dataclass(frozen=True)
class TopK(Primitive):
    name = "topk"
    per_head_tables = True
    signature = "topk(k, block=b)"
    head_invariant = ("block", "count")
    count: Term = param(doc="key blocks per query block, the own block included")

    @classmethod
    def make(cls, count, span=None, arg_spans=(), block=None):
        if block is None:
            raise PatternError("topk() needs block=b (the routing block size in tokens)", span,
                               "e.g. topk(4, block=512), as MoBA")
        return cls(count, span=span, arg_spans=arg_spans, block=block)

    def check(self, p, ctx):
        super().check(p, ctx)
        self.positive(p, "count")

    def rule(self, p, ctx, q, k):
        data = ctx.data
        if "q" not in data or "k" not in data:
            raise PatternError("topk is routed: its blocks depend on q and k", self.span,
                               "pass q= and k= (tensors [heads, length, head_dim]) to mask() or layout()")
        key = ("topk", self)
        if key not in data:
            data[key] = select_blocks(data["q"], data["k"], int(p.count), int(p.block), data.get("causal", False))
        chosen = data[key].cpu().numpy()
        return lookup(lambda head: chosen[head], ctx.h, q, k)
