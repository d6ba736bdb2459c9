"""Merging a block's (out, lse) into rows of the running output by their LSE (online softmax):

    lse' = logaddexp(lse, lse_b)      out' = exp(lse - lse') * out + exp(lse_b - lse') * out_b

rows that no block has seen yet (lse = -inf) take the block's, rows no block sees stay 0 / -inf.
On a GPU (and under `TRITON_INTERPRET=1`) one Triton kernel reads both outputs once and writes
the merged one (a handful of torch element-wise ops would pass over the rows about eight times,
which costs as much as the attention of a sparse block over a long shard); elsewhere torch ops.
"""
from __future__ import annotations

import os
from functools import lru_cache


def merge_into(out, lse, lo: int, hi: int, part_out, part_lse):
    """Merge `part_out [B, H, hi-lo, D]`, `part_lse [B, H, hi-lo]` (float32) into rows lo..hi-1
    of `out [B, H, S, D]` and `lse [B, H, S]` (float32), in place."""
    if (out.is_cuda or os.environ.get("TRITON_INTERPRET") == "1") and out.stride(3) == 1 and part_out.stride(3) == 1:
        return _merge_triton(out[:, :, lo:hi], lse[:, :, lo:hi], part_out, part_lse)
    _merge_torch(out[:, :, lo:hi], lse[:, :, lo:hi], part_out, part_lse)


def _merge_torch(out, lse, part_out, part_lse):
    import torch

    new = torch.logaddexp(lse, part_lse)
    base = torch.where(torch.isinf(new), 0.0, new)
    a, b = torch.exp(lse - base)[..., None], torch.exp(part_lse - base)[..., None]
    compute = torch.float64 if out.dtype == torch.float64 else torch.float32
    out.copy_(out.to(compute) * a + part_out.to(compute) * b)
    lse.copy_(new)


def _merge_triton(out, lse, part_out, part_lse):
    import triton

    B, H, M, D = out.shape
    if M == 0:
        return
    rows = 32
    grid = (B * H, triton.cdiv(M, rows))
    _kernel()[grid](out, lse, part_out, part_lse, H, M, D, *out.stride()[:3], *lse.stride(), *part_out.stride()[:3],
                    *part_lse.stride(), ROWS=rows, DP=triton.next_power_of_2(D))


@lru_cache(maxsize=1)
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def merge_rows(Out, Lse, Part, PartLse, H, M, D, so_b, so_h, so_m, sl_b, sl_h, sl_m, sp_b, sp_h, sp_m,
                   spl_b, spl_h, spl_m, ROWS: tl.constexpr, DP: tl.constexpr):
        bh = tl.program_id(0)
        b, h = bh // H, bh % H
        rows = tl.program_id(1) * ROWS + tl.arange(0, ROWS)
        cols = tl.arange(0, DP)
        in_rows = rows < M
        inside = in_rows[:, None] & (cols[None, :] < D)
        la = tl.load(Lse + b * sl_b + h * sl_h + rows * sl_m, mask=in_rows, other=float("-inf"))
        lb = tl.load(PartLse + b * spl_b + h * spl_h + rows * spl_m, mask=in_rows, other=float("-inf"))
        top = tl.maximum(la, lb)
        base = tl.where(top == float("-inf"), 0.0, top)
        wa, wb = tl.exp(la - base), tl.exp(lb - base)
        total = wa + wb
        seen = total > 0
        new = tl.where(seen, base + tl.log(tl.where(seen, total, 1.0)), float("-inf"))
        ca, cb = wa / tl.where(seen, total, 1.0), wb / tl.where(seen, total, 1.0)
        o_ptr = Out + b * so_b + h * so_h + rows[:, None] * so_m + cols[None, :]
        p_ptr = Part + b * sp_b + h * sp_h + rows[:, None] * sp_m + cols[None, :]
        o = tl.load(o_ptr, mask=inside, other=0.0).to(tl.float32)
        p = tl.load(p_ptr, mask=inside, other=0.0).to(tl.float32)
        tl.store(o_ptr, (o * ca[:, None] + p * cb[:, None]).to(Out.dtype.element_ty), mask=inside)
        tl.store(Lse + b * sl_b + h * sl_h + rows * sl_m, new, mask=in_rows)

    return merge_rows
