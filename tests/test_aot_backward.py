"""`patternc compile` writes the backward too: the standalone module's `attention` is
differentiable (its own autograd Function over the generated launch / launch_backward), with
gradients equal to autograd of the fp64 dense reference. Runs under TRITON_INTERPRET=1."""
from __future__ import annotations

import importlib.util

import pytest
import torch
from reference import assert_close, reference_grads

import patternc
from patternc.aot import compile_module


def load(path):
    spec = importlib.util.spec_from_file_location(f"aot_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("text, M, N, Hkv, config", [
    ("causal & window(9)", 48, 48, 1, "16x16"),
    ("causal & window(4, dilation=2)", 64, 64, 2, "16x16"),  # residue order: the module carries the permutation
    ("causal & (window(6) | sink(2))", 24, 40, 2, "16x16/table"),
])
def test_compiled_module_gradients(interpret, tmp_path, text, M, N, Hkv, config):
    pattern = patternc.compile(text)
    cfg = dict(zip(("block_m", "block_n"), map(int, config.split("/")[0].split("x"))), num_warps=4, num_stages=1)
    if config.endswith("table"):
        cfg["iteration"] = "table"
    module = load(compile_module(pattern, M, N, heads=2, head_dim=16, dtype="fp32", config=cfg, out_dir=tmp_path,
                                 name="m"))
    g = torch.Generator().manual_seed(M + N)
    q = torch.randn(1, 2, M, 16, generator=g, requires_grad=True)
    k, v = (torch.randn(1, Hkv, N, 16, generator=g, requires_grad=True) for _ in range(2))
    out, lse = module.attention(q, k, v, return_lse=True)
    dout, dlse = torch.randn_like(out), torch.randn_like(lse)
    torch.autograd.backward((out, torch.where(torch.isinf(lse), 0.0, lse)), (dout, dlse))
    for got, want, name in zip((q.grad, k.grad, v.grad), reference_grads(q, k, v, pattern, dout, dlse), "qkv"):
        assert_close(got, want, 1e-4, f"{text!r}: d{name}")
    with torch.no_grad():  # inference: no autograd bookkeeping, the same output
        assert torch.equal(module.attention(q, k, v), out.detach())
