"""Generated kernels against an fp64 softmax over Pattern.mask().

CPU: the kernels run in Triton's interpreter (TRITON_INTERPRET=1, set per test), at small sizes.
GPU (`-m gpu`, skipped without CUDA): the same checks at larger sizes, compiled.
Every run writes into a NaN-poisoned output buffer on fresh random inputs.
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import patternc
from patternc.runtime.attention import _device_tag, _prepare

PATTERNS = [
    "full",
    "causal",
    "causal & window(13)",
    "window(7, 3)",
    "blocked(24)",
    "causal & window(9, dilation=4)",
    "causal & (window(8) | strided(8))",
    "causal & strided(8)",
    "causal & (window(3, block=16) | pow2(block=16) | sink(1, block=16))",
    "causal & (window(16) | sink(4))",
    "causal & (window(12) | columns(4, phase=h % 4, block=4))",
    "window(9) - window(3)",
    "global(0, 5..7) | causal & window(4)",
    "neighborhood(7, dilation=2)",
]
GRID_PATTERNS = [
    ("grid(8, 12)\nneighborhood((3, 5))", 96),
    ("grid(4, 6, 4)\nneighborhood((3, 3, 3), stride=(1, 2, 1))", 96),
]
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 5e-3}


def run_kernel(q, k, v, pattern, config, scale=None):
    """Launch the generated kernel into a NaN-poisoned output; return (out, lse)."""
    B, H, M, D = q.shape
    module, layout = _prepare(pattern, B, H, M, k.shape[2], D, config, str(q.device), _device_tag(q.device))
    out = torch.full_like(q, float("nan"))
    lse = torch.full((B, H, M), float("nan"), device=q.device)
    return module.launch(q, k, v, layout, scale=scale, out=out, lse=lse)


def check(pattern_text, M, N, H, Hkv, D, dtype, config, device="cpu", scale=None, seed=0):
    pattern = patternc.compile(pattern_text)
    g = torch.Generator(device="cpu").manual_seed(seed)
    q, k, v = (torch.randn(1, h, n, D, generator=g).to(device=device, dtype=dtype)
               for h, n in ((H, M), (Hkv, N), (Hkv, N)))
    out, lse = run_kernel(q, k, v, pattern, config, scale)
    ref, ref_lse = patternc.reference_attention(q.double(), k.double(), v.double(), pattern, scale=scale,
                                                return_lse=True)
    assert not torch.isnan(out).any(), "an output element was never written (or is NaN)"
    assert not torch.isnan(lse).any()
    err = (out.double() - ref).norm() / ref.norm().clamp_min(1e-30)
    assert err <= TOLERANCE[dtype], f"relative error {err:.2e} for {pattern_text!r} M={M} N={N} {config}"
    empty = torch.isinf(ref_lse)
    assert torch.equal(torch.isinf(lse), empty), "rows with no visible key must have LSE = -inf"
    assert (out.double()[empty[..., None].expand_as(out)] == 0).all(), "rows with no visible key must be 0"
    assert torch.allclose(lse.double()[~empty], ref_lse[~empty], atol=1e-3 if dtype != torch.float32 else 1e-5)


CONFIGS = [
    {"block_m": 16, "block_n": 16, "num_warps": 4, "num_stages": 1},
    {"block_m": 32, "block_n": 16, "num_warps": 4, "num_stages": 1, "iteration": "table"},
    {"block_m": 16, "block_n": 32, "num_warps": 4, "num_stages": 1, "memory": "tma"},
]


@pytest.mark.parametrize("pattern_text", PATTERNS)
def test_every_pattern_matches_reference(interpret, pattern_text):
    check(pattern_text, 64, 64, 2, 2, 32, torch.float32, CONFIGS[0])


@pytest.mark.parametrize("pattern_text,length", GRID_PATTERNS)
def test_grid_patterns_match_reference(interpret, pattern_text, length):
    check(pattern_text, length, length, 1, 1, 16, torch.float32, CONFIGS[0])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pattern_text=st.sampled_from(PATTERNS[:12]), M=st.integers(17, 90), N=st.integers(17, 90),
       group=st.sampled_from([(2, 2), (2, 1), (4, 2)]), D=st.sampled_from([16, 32, 64]),
       # bfloat16 runs on the GPU only: Triton's interpreter multiplies bfloat16 tiles wrongly
       # (tl.dot on bf16 operands, seen with triton 3.9); its loads and stores are fine
       dtype=st.sampled_from([torch.float32, torch.float16]),
       config=st.sampled_from(CONFIGS), seed=st.integers(0, 2**16))
def test_random_shapes_and_configs(interpret, pattern_text, M, N, group, D, dtype, config, seed):
    if "global" in pattern_text or "random" in pattern_text:
        M = N
    check(pattern_text, M, N, group[0], group[1], D, dtype, config, seed=seed)


@pytest.mark.parametrize("order", ["auto", "natural"])
@pytest.mark.parametrize("memory", ["pointers", "tma"])
def test_residue_order_matches_natural(interpret, order, memory):
    config = dict(CONFIGS[0], order=order, memory=memory)
    check("causal & window(9, dilation=4)", 128, 128, 2, 1, 32, torch.float32, config)
    check("causal & strided(8) - window(3)", 128, 128, 1, 1, 16, torch.float32, config)


def test_empty_rows_give_zero_and_minus_inf(interpret):
    check("sink(4) & blocked(8)", 40, 40, 1, 1, 16, torch.float32, CONFIGS[0])
    check("window(9) - window(9)", 32, 32, 1, 1, 16, torch.float32, CONFIGS[1])


def test_scale_and_public_api(interpret):
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 2, 48, 32, generator=g) for _ in range(3))
    out, lse = patternc.attention(q, k, v, "causal & window(10)", scale=0.3, return_lse=True)
    ref, ref_lse = patternc.reference_attention(q.double(), k.double(), v.double(), "causal & window(10)",
                                                scale=0.3, return_lse=True)
    assert (out.double() - ref).abs().max() < 1e-5
    assert (lse.double() - ref_lse).abs().max() < 1e-5


def test_cpu_without_interpreter_falls_back_with_warning(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    import importlib

    monkeypatch.setattr(importlib.import_module("patternc.runtime.attention"), "_warned", False)
    q, k, v = (torch.randn(1, 1, 20, 16) for _ in range(3))
    with pytest.warns(UserWarning, match="dense masked reference"):
        out = patternc.attention(q, k, v, "causal")
    assert torch.allclose(out, patternc.reference_attention(q, k, v, "causal"))


@pytest.mark.parametrize("bad,match", [
    (lambda q: (q, q, q[..., :16]), "head_dim"),
    (lambda q: (q, q.double(), q), "dtype"),
    (lambda q: (q[0], q[0], q[0]), "4-D"),
    (lambda q: (q, q[:, :1].expand(-1, 3, -1, -1), q[:, :1].expand(-1, 3, -1, -1)), "multiple"),
])
def test_bad_inputs_are_clear_errors(bad, match):
    q = torch.randn(1, 2, 8, 32)
    with pytest.raises(patternc.PatternError, match=match):
        patternc.attention(*bad(q), "causal")


def test_table_primitives_run_in_kernels(interpret):
    """random's blocks come from a table of bits the kernel receives (more in test_primitive_random.py)."""
    check("random(2, block=16) | causal & window(5)", 64, 64, 2, 1, 16, torch.float32, CONFIGS[0])


def test_unsupported_head_dim_is_a_clear_error():
    q = torch.randn(1, 1, 8, 24)
    with pytest.raises(patternc.PatternError, match="head_dim 24"):
        patternc.attention(q, q, q, "causal")


# ---------------------------------------------------------------------------------------- GPU

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
GPU_CONFIGS = [
    {"block_m": 128, "block_n": 64, "num_warps": 8, "num_stages": 3, "memory": "pointers"},
    {"block_m": 64, "block_n": 64, "num_warps": 4, "num_stages": 3, "memory": "tma"},
    {"block_m": 128, "block_n": 128, "num_warps": 8, "num_stages": 3, "memory": "tma", "iteration": "table"},
]


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("pattern_text", PATTERNS)
@pytest.mark.parametrize("config", GPU_CONFIGS)
def test_gpu_patterns(pattern_text, config):
    length = 1024 if "random" not in pattern_text else 512
    check(pattern_text, length, length, 4, 2, 128, torch.bfloat16, config, device="cuda")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("M,N", [(1000, 1000), (777, 1500), (1024, 2048)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_ragged_lengths(M, N, dtype):
    for text in ("causal & window(200)", "causal & (window(64) | sink(4))", "full"):
        check(text, M, N, 4, 1, 64, dtype, GPU_CONFIGS[1], device="cuda")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("D", [32, 64, 128])
def test_gpu_head_dims_and_fp32(D):
    check("causal & window(100)", 512, 512, 2, 2, D, torch.float32,
          {"block_m": 64, "block_n": 32, "num_warps": 4, "num_stages": 2}, device="cuda")
    check("causal & window(100)", 512, 512, 2, 2, D, torch.bfloat16,
          {"block_m": 128, "block_n": 64, "num_warps": 4, "num_stages": 3, "memory": "tma"}, device="cuda")


@pytest.mark.gpu
@gpu
def test_gpu_autotuned_public_api(tmp_path, monkeypatch):
    monkeypatch.setenv("PATTERNC_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("PATTERNC_AUTOTUNE", "1")  # GPU test runs switch it off elsewhere
    q, k, v = (torch.randn(1, 4, 2048, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    for text in ("causal & window(256, dilation=4)", "causal & window(512)", "grid(32, 64)\nneighborhood((7, 7))"):
        out = patternc.attention(q, k, v, text)
        ref = patternc.reference_attention(q, k, v, text)
        assert (out.float() - ref.float()).norm() / ref.float().norm() < 1e-2
    assert math.isfinite(float(out.float().sum()))
