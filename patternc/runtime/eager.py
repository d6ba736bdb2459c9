"""Eager training: `patternc.attention`'s forward and generated backward as an `autograd.Function`.

The `patternc::attention` custom op (`runtime/autograd.py`) is what `torch.compile` traces; in
eager mode its dispatch (schema defaults, the autograd wrapper, redispatch) costs about three
times the host time of a Function per training step, which shows where a step takes little GPU
time (a 1024-token window at 8k tokens: ~0.6 ms of kernels per step, host-bound before), and
importing it brings in torch.compile's machinery (a second or more). Same contract: gradients of
q, k, v (summed over a GQA group), the LSE differentiable too, rows that see no key get zero
gradients, routed selections taken again in the backward with no gradient through them.
"""
from __future__ import annotations

import torch


class Attention(torch.autograd.Function):
    """The eager path: `Attention.apply(q, k, v, documents, pattern, config, scale) -> (out, lse)`."""

    @staticmethod
    def forward(ctx, q, k, v, documents, pattern, config, scale):
        from .attention import forward

        out, lse = forward(q, k, v, pattern, scale, config, documents)
        ctx.save_for_backward(q, k, v, out, lse, documents)
        ctx.pattern, ctx.config, ctx.scale = pattern, config, scale
        ctx.set_materialize_grads(False)  # an unused LSE's gradient stays None: no dlse pass
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        from .attention import backward

        q, k, v, out, lse, documents = ctx.saved_tensors
        dout = torch.zeros_like(out) if dout is None else dout
        dq, dk, dv = backward(dout, q, k, v, out, lse, dlse, ctx.pattern, ctx.scale, ctx.config, documents)
        return dq, dk, dv, None, None, None, None
