"""Generated backward kernels (`launch_backward`) against torch.autograd of an fp64 softmax over
Pattern.mask().

CPU: the kernels run in Triton's interpreter (TRITON_INTERPRET=1, set per test), at small sizes.
GPU (`-m gpu`, skipped without CUDA): the same checks at larger sizes, compiled.
Every run writes into NaN-poisoned gradients on fresh random inputs, after the generated
forward (`launch`, with its LSE) of the same module.
"""
from __future__ import annotations

import types

import pytest
import torch
from conftest import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import reference_grads

import patternc
from patternc.codegen import make_spec, module_source
from patternc.runtime.interpreter import bf16_dot_works
from patternc.runtime.attention import _device_tag
from patternc.runtime.cache import load_module
from patternc.runtime.routed import SELECTED_BIT, routed_plan

TOLERANCE = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}
SMALL = {"block_m": 16, "block_n": 16, "num_warps": 4, "num_stages": 1}
MIXED = """pattern mixed:
    heads 0..1: causal & window(12)
    heads 2..3: causal & (window(8) | pow2(block = 16) | sink(8))"""


def skip_broken_bf16(dtype, device):
    if dtype == torch.bfloat16 and device == "cpu" and not bf16_dot_works():
        pytest.skip("Triton's interpreter multiplies bfloat16 tiles as their uint16 bits (create_dot); "
                    "bfloat16 runs on the GPU only")


def build(pattern, H, M, N, D, config, device="cpu"):
    """(the generated module with its backward, the layout) for one config."""
    config = dict(config)
    layout = pattern.layout(M, N, heads=H, block_m=config["block_m"], block_n=config["block_n"], device=device,
                            order=config.pop("order", "auto"))
    runs = layout.runs() if config.pop("iteration", "runs") == "runs" else None
    tma = config.pop("memory", "pointers") == "tma" and getattr(layout.permutation, "tma", True)
    order = {} if layout.permutation is None else layout.permutation.kernel_order
    spec = make_spec(pattern, heads=H, M=M, N=N, head_dim=D, runs=None if runs is None else
                     (runs[0].shape[2], runs[1].shape[2]), tma=tma, **order, **config)
    return load_module(module_source(spec, backward=True), _device_tag(torch.device(device))), layout


def inputs(H, Hkv, M, N, D, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, h, n, D, generator=g) for h, n in ((H, M), (Hkv, N), (Hkv, N)))
    do = torch.randn(1, H, M, D, generator=g)
    return [x.to(device=device, dtype=dtype) for x in (q, k, v, do)]


def run(module, layout, q, k, v, do, scale=None, dlse=None):
    """The generated forward (with LSE), then its backward into NaN-poisoned gradients."""
    out, lse = module.launch(q, k, v, layout, scale=scale, lse=torch.empty(q.shape[:3], device=q.device))
    poisoned = [torch.full_like(x, float("nan")) for x in (q, k, v)]
    return module.launch_backward(q, k, v, out, lse, do, layout, scale, *poisoned, dlse=dlse)


def compare(grads, ref, mask, dtype, label=""):
    """Relative errors of dq, dk, dv; the rows of queries that see no key and of keys that no
    query sees (`mask`: Pattern.mask, [H, M, N]) must be exactly 0."""
    errors = []
    H, Hkv, N = grads[0].shape[1], grads[1].shape[1], grads[1].shape[2]
    mask = mask.to(grads[0].device)
    silent = {"dq": ~mask.any(-1)[None], "dk": ~mask.view(Hkv, H // Hkv, -1, N).any(1).any(1)[None]}
    silent["dv"] = silent["dk"]
    for name, got, want in zip(("dq", "dk", "dv"), grads, ref):
        assert not torch.isnan(got).any() and not torch.isinf(got).any(), f"{name}: an element was never written"
        got = got.double()
        err = float((got - want).norm() / want.norm()) if want.norm() > 0 else float(got.abs().max())
        assert err <= TOLERANCE[dtype], f"{name} relative error {err:.2e} for {label}"
        assert (got[silent[name]] == 0).all(), f"{name}: rows that see nothing (or no one sees) are not exactly 0"
        errors.append(err)
    return errors


def check(pattern_text, M, N, H, Hkv, D, dtype, config, device="cpu", scale=None, seed=0):
    skip_broken_bf16(dtype, device)
    pattern = patternc.compile(pattern_text)
    module, layout = build(pattern, H, M, N, D, config, device)
    q, k, v, do = inputs(H, Hkv, M, N, D, dtype, device, seed)
    ref = reference_grads(q, k, v, pattern, do, scale=scale)
    return compare(run(module, layout, q, k, v, do, scale), ref, pattern.mask(M, N, heads=H), dtype,
                   f"{pattern_text!r} M={M} N={N} {config}")


CASES = [  # (pattern, M, N, H, Hkv, D, config changes)
    ("causal", 64, 64, 2, 2, 32, {}),
    ("causal & window(13)", 64, 64, 2, 2, 32, {"iteration": "table"}),
    ("window(7, 3)", 48, 48, 1, 1, 16, {"memory": "tma"}),
    ("causal & (window(16) | sink(4))", 64, 64, 2, 1, 16, {"block_m": 32}),
    ("global(0, 5..7) | causal & window(4)", 48, 48, 2, 2, 16, {"iteration": "table"}),
    ("blocked(24)", 64, 64, 2, 2, 16, {"block_n": 32}),
    ("causal & (window(3, block=16) | pow2(block=16) | sink(1, block=16))", 96, 96, 2, 2, 16, {}),
    ("causal & (window(12) | columns(4, phase=h % 4, block=4))", 64, 64, 4, 1, 16, {"iteration": "table"}),
    (MIXED, 64, 64, 4, 2, 16, {}),
    ("grid(8, 12)\nneighborhood((3, 5))", 96, 96, 1, 1, 16, {"memory": "tma"}),
    ("causal & window(20)", 40, 72, 4, 2, 16, {}),  # M < N, GQA
    ("causal & window(20)", 53, 71, 4, 1, 16, {"memory": "tma", "iteration": "table"}),  # ragged, MQA
    ("causal", 50, 37, 2, 1, 16, {}),  # M > N: the first rows see no key
    ("sink(4) & blocked(8)", 40, 40, 1, 1, 16, {"iteration": "table"}),  # rows past the first block: none
    ("window(9) - window(9)", 32, 32, 1, 1, 16, {}),  # no key at all: every gradient 0
]


@pytest.mark.parametrize("text,M,N,H,Hkv,D,changes", CASES, ids=[f"{c[0][:30]}-{c[1]}x{c[2]}" for c in CASES])
def test_gradients_match_autograd(interpret, text, M, N, H, Hkv, D, changes):
    check(text, M, N, H, Hkv, D, torch.float32, dict(SMALL, **changes))


@pytest.mark.parametrize("memory", ["pointers", "tma"])
@pytest.mark.parametrize("iteration", ["runs", "table"])
def test_residue_order(interpret, memory, iteration):
    config = dict(SMALL, memory=memory, iteration=iteration)
    pattern = patternc.compile("causal & window(9, dilation=4)")
    assert pattern.layout(128, 128, heads=2, block_m=16, block_n=16).permutation is not None
    check("causal & window(9, dilation=4)", 128, 128, 2, 1, 16, torch.float32, config)
    check("causal & strided(8) - window(3)", 128, 128, 1, 1, 16, torch.float32, config)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(interpret, dtype):
    check("causal & window(13)", 53, 71, 2, 2, 64, dtype, dict(SMALL, block_m=32))
    check("causal & window(9, dilation=4)", 128, 128, 2, 1, 32, dtype, dict(SMALL, memory="tma"))


def test_scale(interpret):
    check("causal & window(10)", 48, 48, 2, 2, 32, torch.float32, SMALL, scale=0.3)


def test_lse_gradient(interpret):
    """`dlse`, the gradient of the LSE where a loss uses it too, enters as delta - dlse."""
    pattern = patternc.compile("causal & window(10)")
    module, layout = build(pattern, 2, 40, 40, 16, SMALL)
    q, k, v, do = inputs(2, 1, 40, 40, 16, torch.float32, "cpu", 5)
    dlse = torch.randn(1, 2, 40, generator=torch.Generator().manual_seed(6))
    compare(run(module, layout, q, k, v, do, dlse=dlse), reference_grads(q, k, v, pattern, do, dlse),
            pattern.mask(40, 40, heads=2), torch.float32)


@settings(max_examples=examples(16), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.sampled_from([c[0] for c in CASES[:9]]), M=st.integers(17, 70), N=st.integers(17, 70),
       group=st.sampled_from([(2, 2), (2, 1), (4, 2)]), D=st.sampled_from([16, 32]),
       dtype=st.sampled_from([torch.float32, torch.float16]),
       changes=st.sampled_from([{}, {"iteration": "table", "block_m": 32}, {"memory": "tma", "block_n": 32}]),
       seed=st.integers(0, 2**16))
def test_random_shapes_and_configs(interpret, text, M, N, group, D, dtype, changes, seed):
    if "global" in text or "h %" in text or "mixed" in text:
        M = N  # global() names positions; fixed head counts of sections and columns need 4 heads
        group = (4, 2) if "mixed" in text or "h %" in text else group
    check(text, M, N, group[0], group[1], D, dtype, dict(SMALL, **changes), seed=seed)


# ------------------------------------------------------------------------------ routed

def with_transposed_tables(layout, key_tiles: int):
    """A routed layout with the transposed tables the dK/dV kernel reads, built here on the host
    from its forward tables: per (batch x head, key tile) the query tiles ascending, an entry
    being `query tile | choice << 30`, as the forward's entries carry the choice."""
    tables = {}
    for name, counts, table in (("full_q", layout.full_kv_num_blocks, layout.full_kv_indices),
                                ("q", layout.kv_num_blocks, layout.kv_indices)):
        BH, Mt, W = table.shape
        bh, qt, c = (torch.arange(W) < counts[..., None]).nonzero(as_tuple=True)
        entry = table[bh, qt, c].long()
        line = bh * key_tiles + (entry & (SELECTED_BIT - 1))
        order = torch.argsort(line * Mt + qt)
        line, value = line[order], (qt | (entry >> 30 << 30))[order]
        n = torch.bincount(line, minlength=BH * key_tiles)
        slot = torch.arange(len(line)) - (torch.cumsum(n, 0) - n)[line]
        indices = torch.zeros(BH * key_tiles, max(int(n.max()), 1), dtype=torch.int32)
        indices[line, slot] = value.to(torch.int32)
        tables[f"{name}_num_blocks"] = n.view(BH, key_tiles).to(torch.int32)
        tables[f"{name}_indices"] = indices.view(BH, key_tiles, -1)
    names = ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices", "row_order")
    return types.SimpleNamespace(**{n: getattr(layout, n) for n in names}, **tables)


def test_routed_block(interpret):
    text, H, M, N, D = "causal & topk(2, block=16)", 2, 64, 64, 16
    pattern = patternc.compile(text)
    q, k, v, do = inputs(H, 1, M, N, D, torch.float32, "cpu", seed=3)
    layout = with_transposed_tables(routed_plan(pattern, M, N, H, 16, 16, "cpu").layout(q, k), N // 16)
    spec = make_spec(pattern, heads=H, M=M, N=N, head_dim=D, **SMALL, routed="block")
    module = load_module(module_source(spec, backward=True), "cpu-interpret")
    compare(run(module, layout, q, k, v, do), reference_grads(q, k, v, pattern, do),
            pattern.mask(M, N, heads=H, q=q[0], k=k[0]), torch.float32)
    forward_only = types.SimpleNamespace(**{n: getattr(layout, n) for n in vars(layout) if not n.startswith("q_")
                                            and not n.startswith("full_q_")})
    with pytest.raises(ValueError, match="routed backward: the layout lacks the transposed index tables"):
        run(module, forward_only, q, k, v, do)


def test_routed_token_backward_reads_each_rows_choice():
    """query=token: the dK/dV kernel reads the choice words of the query rows it loops over (its
    gradients are checked through the op in test_training.py)."""
    spec = make_spec(patternc.compile("causal & topk(2, block=16, query=token)"), heads=1, M=64, N=64, head_dim=16,
                     **SMALL, routed="token")
    source = module_source(spec, backward=True)
    dkdv = source[source.index("def attention_bwd_dkdv"):source.index("def dq_step")]
    assert "choice_column + rows * stride_cwm" in dkdv and "[None, :]" in dkdv
    assert "def launch_backward" not in module_source(spec)


def test_bad_inputs_are_clear_errors(interpret):
    module, layout = build(patternc.compile("causal"), 2, 32, 32, 16, SMALL)
    q, k, v, do = inputs(2, 1, 32, 32, 16, torch.float32, "cpu", 0)
    out, lse = module.launch(q, k, v, layout, lse=torch.empty(1, 2, 32))
    with pytest.raises(ValueError, match=r"lse must be float32 \[B, H, M\] = \[1, 2, 32\].* \[1, 2\]"):
        module.launch_backward(q, k, v, out, lse[..., 0], do, layout)
    with pytest.raises(ValueError, match=r"do must have the shape \(1, 2, 32, 16\), got \(1, 2, 31, 16\)"):
        module.launch_backward(q, k, v, out, lse, do[:, :, 1:], layout)
    with pytest.raises(ValueError, match="head_dim 8, but this kernel was generated for HEAD_DIM = 16"):
        module.launch_backward(q[..., :8], k, v, out, lse, do, layout)
    other = patternc.compile("causal").layout(32, 48, heads=2, block_m=16, block_n=16)
    with pytest.raises(ValueError, match=r"the layout has 2 x 3 tiles, but M = 32, N = 32 at 16 x 16 make 2 x 2"):
        module.launch_backward(q, k, v, out, lse, do, other)


# ---------------------------------------------------------------------------------------- GPU

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
GPU_CONFIGS = [
    {"block_m": 128, "block_n": 64, "num_warps": 8, "num_stages": 3},
    {"block_m": 64, "block_n": 64, "num_warps": 4, "num_stages": 3, "memory": "tma", "iteration": "table"},
    {"block_m": 128, "block_n": 128, "num_warps": 8, "num_stages": 3, "memory": "tma"},
]


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("text,config", [
    ("causal & window(256)", 0), ("causal & window(256)", 1), ("causal & window(256)", 2),
    ("causal & window(64, dilation=4)", 1), ("causal & (window(128) | sink(64))", 0), (MIXED, 2),
])
def test_gpu_bf16(text, config):
    print(check(text, 2048, 2048, 4, 2, 128, torch.bfloat16, GPU_CONFIGS[config], device="cuda"))


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("M,N,D,dtype,config", [
    (1000, 1500, 64, torch.bfloat16, 1), (4096, 4096, 64, torch.bfloat16, 1), (1000, 1500, 64, torch.float16, 0),
    (777, 777, 128, torch.float16, 0),
])
def test_gpu_ragged_and_long(M, N, D, dtype, config):
    print(check("causal & window(300)", M, N, 2, 1, D, dtype, GPU_CONFIGS[config], device="cuda"))


@pytest.mark.gpu
@gpu
def test_gpu_fp32():
    print(check("causal & window(100)", 1024, 1024, 2, 2, 64, torch.float32,
                {"block_m": 64, "block_n": 32, "num_warps": 4, "num_stages": 2}, device="cuda"))
