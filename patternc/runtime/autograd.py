"""Training: `patternc.attention` with autograd, as a `torch.library` custom op under
`torch.compile` and as a plain `torch.autograd.Function` in eager mode.

`patternc::attention(q, k, v, documents?, problem, scale) -> (out, lse)` and
`patternc::attention_backward(do, q, k, v, out, lse, dlse?, documents?, problem, scale) -> (dq, dk, dv)` are
opaque to `torch.compile` (a fake implementation gives their shapes), so a compiled model traces
through them with no graph break and no recompilation per call; the backward is registered with
`register_autograd`, so `loss.backward()`, `torch.utils.checkpoint` and compiled training steps
all reach the generated backward kernels. A pattern is not a tensor: ops receive a `problem` key,
a string naming the (pattern, config) registered once per pair by `problem_key` from the
pattern's text (a constant to `torch.compile`).

In eager mode the same forward and backward run through `runtime/eager.py`'s `autograd.Function`
instead (the op's dispatch costs about three times its host time per step).

Gradients: dq, dk, dv (dk, dv summed over a GQA group); the LSE output is differentiable too
(its gradient enters as `delta - dlse`). Rows that see no key have zero gradients. Routed
patterns select their blocks again from q and k in the backward (the same, deterministic
choice); no gradient flows through the selection, as in MoBA.
"""
from __future__ import annotations

import torch

from ..ir.pattern import Pattern

_PROBLEMS: dict[str, tuple] = {}  # key -> (Pattern, config dict or None)
_KEYS: dict[tuple, str] = {}


@torch.compiler.assume_constant_result
def problem_key(pattern_text: str, config_items: tuple | None) -> str:
    """The op's name for (pattern, config), from the pattern's canonical text (`Pattern.text`:
    torch.compile hands such functions constants only, and before torch 2.12 a Pattern object is
    not one); registered on first use."""
    key = _KEYS.get((pattern_text, config_items))
    if key is None:
        from .attention import as_pattern

        pattern = Pattern.with_text(pattern_text) or as_pattern(pattern_text)
        key = _KEYS[(pattern_text, config_items)] = f"p{len(_KEYS)}"
        _PROBLEMS[key] = (pattern, None if config_items is None else dict(config_items))
    return key


@torch.library.custom_op("patternc::attention", mutates_args=())
def attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, documents: torch.Tensor | None, problem: str,
                 scale: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    from .attention import forward

    pattern, config = _PROBLEMS[problem]
    out, lse = forward(q, k, v, pattern, scale, config, documents)
    return _as_faked(out, q), lse


@attention_op.register_fake
def _(q, k, v, documents, problem, scale):
    from .attention import _check_inputs

    _check_inputs(q, k, v)
    return torch.empty_like(q), q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("patternc::attention_backward", mutates_args=())
def attention_backward_op(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                          lse: torch.Tensor, dlse: torch.Tensor | None, documents: torch.Tensor | None, problem: str,
                          scale: float | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from .attention import backward

    pattern, config = _PROBLEMS[problem]
    dq, dk, dv = backward(do, q, k, v, out, lse, dlse, pattern, scale, config, documents)
    return _as_faked(dq, q), _as_faked(dk, k), _as_faked(dv, v)


@attention_backward_op.register_fake
def _(do, q, k, v, out, lse, dlse, documents, problem, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _as_faked(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`x` with the strides the fake implementations give it (`torch.empty_like(like)`'s), which
    torch.compile checks: the kernels' outputs have them already; the CPU's dense reference may
    not (q a view of a fused projection, say), and is copied."""
    if x.stride() == like.stride():
        return x
    strides = torch.empty_like(like, device="meta").stride()
    return x if x.stride() == strides else torch.empty_like(like).copy_(x)


def _setup_context(ctx, inputs, output):
    q, k, v, documents, problem, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, documents)
    ctx.problem, ctx.scale = problem, scale


def _backward(ctx, dout, dlse):
    q, k, v, out, lse, documents = ctx.saved_tensors
    dout = torch.zeros_like(out) if dout is None else dout
    dq, dk, dv = attention_backward_op(dout, q, k, v, out, lse, dlse, documents, ctx.problem, ctx.scale)
    return dq, dk, dv, None, None, None


attention_op.register_autograd(_backward, setup_context=_setup_context)
