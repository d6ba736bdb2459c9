"""Blocks of a longer self-attention (`patternc.runtime.blocks`, the pieces context parallelism
runs): a query block against several key blocks, merged by their LSE, equals the fp64 dense
reference of the whole sequence, rows for rows; each block's backward from the merged output and
LSE sums to the whole attention's gradients. Dense CPU path and generated kernels (interpreter)."""
from __future__ import annotations

import pytest
import torch
from reference import assert_close

import patternc
from patternc.errors import PatternError
from patternc.runtime.blocks import block_backward, block_forward

PATTERNS = [
    "causal & (window(20) | sink(3))",
    "window(9) | blocked(32)",
    "causal & window(8, dilation=3)",
    "window(3, block=16) | global(0, block=16) | random(2, block=16, seed=3)",
    "grid(8, 12)\nneighborhood((3, 5))",
]


def merged(parts):
    lses = torch.stack([lse for _, lse in parts])
    lse = torch.logsumexp(lses, 0)
    weights = torch.exp(lses - torch.where(torch.isinf(lse), 0.0, lse))
    return sum(w[..., None] * out for w, (out, _) in zip(weights, parts)), lse


@pytest.mark.parametrize("kernels", [False, True], ids=["dense", "kernels"])
@pytest.mark.parametrize("text", PATTERNS)
def test_blocks_merge_into_the_whole(request, kernels, text):
    if kernels:
        request.getfixturevalue("interpret")
    pattern = patternc.compile(text)
    L, H, D = 96, 2, 16
    g = torch.Generator().manual_seed(len(text))
    q, k, v = (torch.randn(1, H, L, D, generator=g) for _ in range(3))
    want, want_lse = patternc.reference_attention(*(x.double() for x in (q, k, v)), pattern, return_lse=True)
    qs, cuts = slice(32, 80), ((0, 48), (48, 80), (80, 96))  # ragged key blocks, the last one short
    parts = [block_forward(q[:, :, qs], k[:, :, a:b], v[:, :, a:b], pattern, 32, a, L) for a, b in cuts]
    out, lse = merged(parts)
    assert_close(out, want[:, :, qs], 1e-5, f"{text!r} out")
    assert torch.allclose(lse.double(), want_lse[:, :, qs], atol=1e-5)
    do = torch.randn(1, H, 48, D, generator=g)
    grads = [block_backward(do, q[:, :, qs], k[:, :, a:b], v[:, :, a:b], out, lse, pattern, 32, a, L) for a, b in cuts]
    qd, kd, vd = (x.double().requires_grad_() for x in (q, k, v))
    patternc.reference_attention(qd, kd, vd, pattern)[:, :, qs].backward(do.double())
    assert_close(sum(g[0] for g in grads), qd.grad[:, :, qs], 1e-5, f"{text!r} dq")
    assert_close(torch.cat([g[1] for g in grads], 2), kd.grad, 1e-5, f"{text!r} dk")
    assert_close(torch.cat([g[2] for g in grads], 2), vd.grad, 1e-5, f"{text!r} dv")


def test_block_errors(interpret):
    q = k = v = torch.randn(1, 2, 32, 16)
    with pytest.raises(PatternError, match="not on 16 x 16 tile boundaries"):
        block_forward(q, k, v, "causal", 8, 0, 64)
    with pytest.raises(PatternError, match="passes the sequence's 48 tokens"):
        block_forward(q, k, v, "causal", 32, 0, 48)
    with pytest.raises(PatternError, match="routed patterns"):
        block_forward(q, k, v, "causal & topk(2, block=16)", 0, 0, 64)
