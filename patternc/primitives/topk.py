"""`topk(k, block=b, threshold=x, shared=head|group, query=block|token)`: routed attention (MoBA,
BiFormer). Per query block, the `k` key blocks whose mean key scores highest against the block's
mean query (fp32 dot product). The query's own block is always kept and counts toward `k`; under
`causal` (the pattern is `causal & ...`) blocks in the future are never chosen (MoBA). Ties go
to the lower block index. Resolved at run time from q and k.

Blocks are `block` tokens from 0 (the last one possibly short; its mean is over its tokens).
Query blocks are blocks of query rows from row 0 (not of positions); with M != N the own block
of query block Q is `Q + ceil(N/b) - ceil(M/b)` (bottom-right: the last query block's is the
last key block). k may have fewer heads than q (GQA/MQA: each key head serves `H // Hkv` query
heads).

The options:

- `threshold=x` (0 < x <= 1): instead of a fixed count, the fewest best blocks whose share of
  the routing softmax (over the eligible blocks, scores scaled by `head_dim**-0.5`, fp32) reaches
  `x`, at least one. With `k` too, at most `k - 1` of them. The own block comes on top.
- `shared=group`: the `H // Hkv` query heads of a GQA group choose together, from the mean of
  their query representations, and all see the same blocks (`head`, the default: each its own).
- `query=token`: every query token routes by itself (not by its block's mean). Its own block is
  `(t + N - M) // b` (none when that is negative); under `causal` it chooses only blocks before
  it, so tokens of one block may see different blocks.

Eligible blocks: `0 <= j < own` under causal, every `j != own` otherwise.

    causal & topk(2, block=2)   causal & topk(2, block=2, query=token)
    #.....                      #.....
    ##....                      ##....
    ###...                      ###...
    ####..                      ####..
    ##..#.                      ##..#.
    ##..##                      ..####   rows 4 and 5 (one block) chose differently
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import PatternError
from ..ir.expr import Term
from ..ir.nodes import Difference
from .base import CHOICE, FLOAT, Primitive, format_value, param
from .full import Full
from .tables import lookup


def select_blocks(q, k, count: int | None, block: int, causal: bool, threshold: float | None = None,
                  shared: str = "head", query: str = "block"):
    """The chosen key blocks, from q [H, M, D] and k [Hkv, N, D] (torch, any device): bool
    [H, ceil(M/b), ceil(N/b)] (`query="block"`) or [H, M, ceil(N/b)] (`query="token"`).
    `count` (own block included) or `threshold` may be None; see the module docstring."""
    import torch

    H, M, D = q.shape
    Hkv, N, _ = k.shape
    n_k, group = -(-N // block), H // Hkv

    def pool(x, n):  # block means in fp32, the last block possibly short
        if x.shape[1] == n * block:  # whole blocks: the same sums without a zeroed copy
            padded = x.float().contiguous()
        else:
            padded = torch.zeros(x.shape[0], n * block, x.shape[2], dtype=torch.float32, device=x.device)
            padded[:, : x.shape[1]] = x.float()
        counts = torch.full((n,), float(block), device=x.device)
        counts[-1] = x.shape[1] - (n - 1) * block
        return padded.view(x.shape[0], n, block, -1).sum(2) / counts[None, :, None]

    kbar = pool(k, n_k)
    if query == "block":
        n_q = -(-M // block)
        rows, own = pool(q, n_q), torch.arange(n_q, device=q.device) + (n_k - n_q)
    else:
        rows, own = q.float(), torch.div(torch.arange(M, device=q.device) + (N - M), block, rounding_mode="floor")
    if shared == "group":  # one query representation per KV head: the group's mean
        rows = rows.reshape(Hkv, group, *rows.shape[1:]).mean(1)
    else:
        kbar = kbar.repeat_interleave(group, dim=0)
    K = torch.arange(n_k, device=q.device)[None, :]

    def choose(rows, own):  # rows [choosers, r, D], own [r] -> bool [choosers, r, nK]
        own = own[:, None]
        eligible = (K < own) if causal else (K != own)
        scores = (rows @ kbar.transpose(1, 2)).masked_fill(~eligible, float("-inf"))
        ranked, order = torch.sort(scores, dim=-1, descending=True, stable=True)
        rank = torch.arange(n_k, device=q.device).expand_as(order)
        take = rank < (n_k if count is None else max(count - 1, 0))
        if threshold is not None:
            # mass ranked ahead of each block: take it while that is short of the threshold (rows
            # without eligible blocks get NaN here and take nothing)
            p = torch.softmax(ranked * D ** -0.5, dim=-1)
            ahead = torch.nn.functional.pad(p.cumsum(-1)[..., :-1], (1, 0))
            take &= ahead < threshold
        chosen = torch.empty_like(take).scatter_(-1, order, take)
        chosen &= eligible  # fewer eligible blocks than asked: the -inf picks drop out
        return chosen | ((K == own) & (own >= 0) & (own < n_k))

    # in slices of rows, so that per-token scores of long sequences stay small
    step = max(1, (1 << 24) // max(1, rows.shape[0] * n_k))
    chosen = torch.cat([choose(rows[:, i:i + step], own[i:i + step]) for i in range(0, rows.shape[1], step)], dim=1)
    return chosen.repeat_interleave(group, dim=0) if shared == "group" else chosen


@dataclass(frozen=True)
class TopK(Primitive):
    name = "topk"
    per_head_tables = True
    routed = True
    positional_options = ("count",)
    signature = "topk(k, block=b, threshold=x, shared=head|group, query=block|token)"
    # for the kernel contract: routing blocks that 16-token tiles divide (`strategy` draws any)
    examples = ("topk(2, block=16)", "topk(3, block=16, threshold=0.6, shared=group, query=token)")
    head_invariant = ("block", "count", "threshold", "shared", "query")
    count: Term | None = param(None, doc="key blocks per query block (or token), the own block included")
    threshold: float | None = param(None, kind=FLOAT, doc="the share of the routing softmax the chosen blocks reach")
    shared: str = param("head", kind=CHOICE, choices=("head", "group"), doc="choose per query head or per GQA group")
    query: str = param("block", kind=CHOICE, choices=("block", "token"), doc="route query blocks or query tokens")

    @classmethod
    def make(cls, count=None, span=None, arg_spans=(), block=None, threshold=None, **params):
        if block is None:
            raise PatternError("topk() needs block=b (the routing block size in tokens)", span,
                               "e.g. topk(4, block=512), as MoBA")
        if count is None and threshold is None:
            raise PatternError("topk() needs k or threshold=...", span,
                               "e.g. topk(4, block=512) or topk(threshold=0.9, block=512)")
        return cls(count, span=span, arg_spans=arg_spans, block=block, threshold=threshold, **params)

    def check(self, p, ctx):
        super().check(p, ctx)
        self.positive(p, "count")
        if p.threshold is not None and not 0 < p.threshold <= 1:
            self.fail("threshold", f"threshold must be in (0, 1], got {format_value(p.threshold)}",
                      "the share of the routing softmax to keep, e.g. threshold=0.9")

    def routed_variants(self):
        return Full(), Difference(Full(), Full())

    def select(self, q, k, causal: bool):
        count = None if self.count is None else int(self.count.value)
        return select_blocks(q, k, count, int(self.block.value), causal, self.threshold, self.shared, self.query)

    def visible(self, ctx, q, k):
        # query rows, not positions: the choice is per block of rows from row 0 (or per row), and
        # aligns its own block itself (`Q + ceil(N/b) - ceil(M/b)`, `(t + N - M) // b`)
        q = ctx.row(q)
        p = self.params(ctx)
        if self.query == "block":
            return self.rule(p, ctx.blocked(p.block), q // p.block, k // p.block)
        return self.rule(p, ctx, q, k // p.block)  # rows are query tokens, columns key blocks

    @classmethod
    def strategy(cls, grid=None):
        from hypothesis import strategies as st  # a test dependency only

        return st.tuples(st.integers(1, 4), st.integers(4, 64)).map(lambda t: f"topk({t[0]}, block={t[1]})")

    def rule(self, p, ctx, q, k):
        data = ctx.data
        if "q" not in data or "k" not in data:
            raise PatternError("topk is routed: its blocks depend on q and k", self.span,
                               "pass q= and k= (tensors [heads, length, head_dim]) to mask() or layout()")
        key = ("topk", self)
        if key not in data:
            count = None if p.count is None else int(p.count)
            data[key] = select_blocks(data["q"], data["k"], count, int(p.block), data.get("causal", False),
                                      threshold=p.threshold, shared=p.shared, query=p.query).cpu().numpy()
        chosen = data[key]
        return lookup(lambda head: chosen[head], ctx.h, q, k)

    def count_alone(self, p, atoms):
        if p.threshold is not None:
            return None  # as many blocks as the routing softmax needs: no count without the data
        return atoms.closed(p.count * p.block, period=p.block, n0=p.count * p.block, cost="O(N*w)",
                            note="routed: any q, k")

    def count_under_causal(self, p, atoms):
        """MoBA: whatever q and k are, a query in block Qb sees its own block up to itself and
        min(k - 1, Qb) whole earlier blocks. Over N = b * nb, nb >= k - 1:
        S = nb * b(b+1)/2 + b^2 * ((k-1)(k-2)/2 + (k-1)(nb - k + 1))."""
        if p.threshold is not None:
            return None
        import sympy as sp

        k, b, N = p.count, p.block, atoms.N
        nb = N / b
        S = nb * sp.Rational(b * (b + 1), 2) + b * b * (sp.Rational((k - 1) * (k - 2), 2) + (k - 1) * (nb - k + 1))
        return atoms.closed(sp.expand(S / N), period=b, n0=max(1, k - 1) * b, cost="O(N*w)", note="routed: any q, k")

    def __str__(self):  # k positionally when given, then the keywords that differ from their defaults
        args = [] if self.count is None else [format_value(self.count)]
        args += [f"{f.name}={format_value(getattr(self, f.name))}" for f in self.params_spec()
                 if f.name != "count" and getattr(self, f.name) != f.default]
        return f"topk({', '.join(args)})"
