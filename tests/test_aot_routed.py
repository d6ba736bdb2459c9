"""`patternc compile` of routed patterns (`topk`): the standalone module carries patternc's
routing kernels (runtime/routing.py as it is) and the plan they write each call's index tables
from, and chooses its key blocks from q and k on every call, as `patternc.attention` does; its
output and gradients match the fp64 reference over the same choice. Runs under
TRITON_INTERPRET=1; importing without patternc is checked in test_cli_layout_compile.py."""
from __future__ import annotations

import pytest
import torch
from test_aot_backward import load

import patternc
from patternc.aot import compile_module
from patternc.layout import FULL, PARTIAL

TILES = {"block_m": 16, "block_n": 16, "num_warps": 4, "num_stages": 1}


def inputs(H, Hkv, M, N, seed, grad=False):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, h, n, 16, generator=g).requires_grad_(grad) for h, n in ((H, M), (Hkv, N), (Hkv, N))]


@pytest.mark.parametrize("text, H, Hkv, M, N, config", [
    ("causal & topk(2, block=32)", 2, 1, 96, 128, TILES),  # M != N, GQA
    ("topk(threshold=0.6, block=32, shared=group) | window(3)", 4, 2, 64, 64, TILES),
    ("causal & (topk(3, block=32) | random(1, block=16, seed=2))", 2, 2, 64, 64, dict(TILES, block_m=64)),  # halved
])
@pytest.mark.usefixtures("interpret")
def test_routed_module_matches_the_reference(tmp_path, text, H, Hkv, M, N, config):
    pattern = patternc.compile(text)
    module = load(compile_module(pattern, M, N, heads=H, head_dim=16, dtype="fp32", config=config, out_dir=tmp_path,
                                 name="m"))
    assert module.ROUTING["block"] == 32 and 32 % module.BLOCK_M == 0
    q, k, v = inputs(H, Hkv, M, N, seed=M + N, grad=True)
    out, lse = module.attention(q, k, v, return_lse=True)
    qd, kd, vd = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref, ref_lse = patternc.reference_attention(qd, kd, vd, pattern, return_lse=True)
    assert (out.double() - ref).norm() / ref.norm() < 1e-5
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse))
    dout = torch.randn_like(out)
    out.backward(dout)
    ref.backward(dout.double())
    for got, want, name in ((q.grad, qd.grad, "q"), (k.grad, kd.grad, "k"), (v.grad, vd.grad, "v")):
        err = (got.double() - want).norm() / want.norm()
        assert err < 1e-4, f"{text!r}: d{name} relative error {err:.2e}"
    # the same choice as patternc.attention's, on every call
    q, k, v = (x.detach() for x in (q, k, v))
    _, layout = patternc.attention(q, k, v, pattern, config=module_config(module), return_layout=True)
    assert torch.equal(module._layout(q, k).block_choice, layout.selection)
    assert torch.equal(module.attention(q, k, v), patternc.attention(q, k, v, pattern, config=module_config(module)))


def module_config(module):
    return {"block_m": module.BLOCK_M, "block_n": module.BLOCK_N, "num_warps": module.NUM_WARPS,
            "num_stages": module.NUM_STAGES}


@pytest.mark.usefixtures("interpret")
def test_per_token_routing_forward_and_backward(tmp_path):
    text = "causal & topk(2, block=32, query=token)"
    pattern = patternc.compile(text)
    module = load(compile_module(pattern, 64, 96, heads=2, head_dim=16, dtype="fp32", config=TILES, out_dir=tmp_path))
    q, k, v = inputs(2, 2, 64, 96, seed=3, grad=True)
    out = module.attention(q, k, v)
    qd, kd, vd = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref = patternc.reference_attention(qd, kd, vd, pattern)
    assert (out.double() - ref).norm() / ref.norm() < 1e-5
    dout = torch.randn_like(out)
    out.backward(dout)
    ref.backward(dout.double())
    for got, want, name in ((q.grad, qd.grad, "q"), (k.grad, kd.grad, "k"), (v.grad, vd.grad, "v")):
        assert (got.double() - want).norm() / want.norm() < 1e-4, f"per-token d{name}"


def test_routing_kernels_classes_are_the_layouts():
    """routing.py names the tile classes itself (it is written into standalone modules)."""
    from patternc.runtime import routing
    from patternc.runtime.routed import SELECTED_BIT

    assert (routing.FULL.value, routing.PARTIAL.value, routing.SELECTED) == (FULL, PARTIAL, SELECTED_BIT)


def test_routed_report_and_refusals(tmp_path):
    pattern = patternc.compile("causal & topk(2, block=64)")
    path = compile_module(pattern, 256, head_dim=16, dtype="fp32", config="128x128/w4/s1", out_dir=tmp_path,
                          name="moba")
    source, report = path.read_text(), path.with_suffix(".md").read_text()
    assert "BLOCK_M = 64" in source and "def route(plan, q, k" in source and "\nfrom __future__" not in source
    assert "at most (every key block chosen)" in report and "written per call by the routing kernels" in report
    with pytest.raises(patternc.PatternError, match="routes among at most 1024 key blocks"):
        compile_module(patternc.compile("topk(2, block=16, query=token)"), 16 * 1025, head_dim=16, out_dir=tmp_path)
