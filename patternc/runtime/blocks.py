"""Blocks of a longer self-attention, for context parallelism: queries at positions
`q_start..` over keys at positions `k_start..` of a sequence of `length` tokens, with the
pattern's rule at those positions (and at M = N = `length`). A rank runs its queries against
its own key shard and the key tiles it received as blocks, and merges their outputs by their LSE;
the gradient of each block comes from the merged output and LSE (`block_backward`), which makes
the blocks' gradients those of the whole attention.

On a GPU (or under `TRITON_INTERPRET=1`) the generated kernels run with `positions=` over the
block's tiles cut from the whole sequence's layout (`patternc.layout.blocks`), at the training
tiles; blocks start on tile boundaries (`block_tiles`). On a CPU otherwise: the dense formula
over the block of `Pattern.mask`.
"""
from __future__ import annotations

import os

from ..errors import PatternError
from ..layout.blocks import block_layout
from .attention import (_check_inputs, _device_tag, _kernel, as_pattern, reference_attention, reference_backward,
                        training_config)


def block_tiles(head_dim: int, dtype) -> tuple[int, int]:
    """(block_m, block_n): query blocks start at multiples of the first, key blocks of the second."""
    cfg = training_config(head_dim, dtype)
    return cfg["block_m"], cfg["block_n"]


def _dense() -> bool:
    return os.environ.get("TRITON_INTERPRET") != "1"


def _prepare(pattern, q, k, q_start: int, k_start: int, length: int, order: str = "natural"):
    """(module, layout, positions) for a block on q's device."""
    if pattern.is_routed:
        raise PatternError("routed patterns (topk) choose their blocks from every query and key: a block of the "
                           "sequence can't choose alone", pattern.span, "gather the whole sequence for topk")
    B, H, M, D = q.shape
    cfg = training_config(D, q.dtype)
    bm, bn = cfg["block_m"], cfg["block_n"]
    layout = block_layout(pattern, length, H, bm, bn, q_start, M, k_start, k.shape[2], str(q.device), order)
    runs = layout.runs()
    runs_shape = None if runs is None else (runs[0].shape[2], runs[1].shape[2])
    module = _kernel(pattern, H, length, length, D, bm, bn, cfg["num_warps"], cfg["num_stages"], runs_shape, False,
                     layout.permutation, _device_tag(q.device), backward=True)
    return module, layout, (q_start, k_start, length, length)


def block_forward(q, k, v, pattern, q_start: int, k_start: int, length: int, scale=None, order: str = "natural"):
    """(out, lse [B, H, M] float32) of the block (see the module). `order="auto"`: a diagonal
    block of a dilated or strided rule runs class by class (`patternc.layout.blocks`), where its
    tiles allow; the result is the same."""
    import torch

    pattern = as_pattern(pattern)
    _check_inputs(q, k, v)
    if q.device.type == "cpu" and _dense():
        return reference_attention(q, k, v, pattern, scale, True, block=(q_start, k_start, length))
    module, layout, positions = _prepare(pattern, q, k, q_start, k_start, length, order)
    lse = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)
    return module.launch(q, k, v, layout, scale=scale, lse=lse, positions=positions)


def block_backward(do, q, k, v, out, lse, pattern, q_start: int, k_start: int, length: int, scale=None, dlse=None,
                   order: str = "natural"):
    """(dq, dk, dv) of the block's share of an attention whose (merged) output and LSE are
    `out` and `lse`: summed over the blocks of a query shard, they are its gradients."""
    pattern = as_pattern(pattern)
    if q.device.type == "cpu" and _dense():
        return reference_backward(do, q, k, v, out, lse, dlse, pattern, scale, block=(q_start, k_start, length))
    module, layout, positions = _prepare(pattern, q, k, q_start, k_start, length, order)
    return module.launch_backward(q, k, v, out, lse, do, layout, scale=scale, dlse=dlse, positions=positions)
