"""Queries are the last M positions (DESIGN.md's language section): query row q sits at position
p = q + N - M and every primitive reads p. Checked against that definition directly: decoding
(`causal & window(1024)` over a 16k cache sees the 1024 last keys), chunked prefill (the last M
queries over N keys are the last M rows of N x N attention) for every 1-D primitive of the
registry in masks and, at small sizes under TRITON_INTERPRET=1, in the generated forward
kernels (the backward's: tests/test_training.py), the FlexAttention export, and `@patternc.jit`'s
raw-index convention."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import mask_of, same, with_block
from test_kernels import run_kernel
from test_training import assert_close, inputs

import patternc
from patternc.primitives import REGISTRY

ONE_D = sorted(name for name, cls in REGISTRY.items() if cls.textual and not cls.needs_grid)
STATIC = [name for name in ONE_D if not REGISTRY[name].routed]


# --------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("M", [1, 2048])
def test_decoding_sees_the_last_keys(M):
    N, w = 16384, 1024
    pattern = patternc.compile("causal & window(1024)")
    m = pattern.mask(M, N)[0]
    rows, pos = torch.arange(M), torch.arange(M) + N - M
    assert (m.sum(1) == w).all() and m[rows, pos].all() and m[rows, pos - (w - 1)].all()
    # the tiles: exactly those around each query tile's positions
    layout = pattern.layout(M, N)
    tiles = layout.block_map()[0]
    for t in range(tiles.shape[0]):
        p0, p1 = t * 128 + N - M, min(t * 128 + 128, M) - 1 + N - M
        visited = torch.nonzero(tiles[t]).flatten()
        assert visited.tolist() == list(range((p0 - w + 1) // 128, p1 // 128 + 1)), t


# --------------------------------------------------------------------------- chunked prefill


@pytest.mark.parametrize("name", STATIC)
@settings(max_examples=examples(25))
@given(data=st.data(), N=st.integers(1, 80), H=st.integers(1, 3))
def test_chunked_prefill_masks(name, data, N, H):
    text = data.draw(REGISTRY[name].strategy())
    if REGISTRY[name].blockable and "block=" not in text and data.draw(st.booleans()):
        text = with_block(text, data.draw(st.integers(2, 9)))  # blocks of positions, b need not divide N - M
    if data.draw(st.booleans()):
        text = f"causal & ({text}) | sink(2)"
    M = data.draw(st.integers(1, N))
    same(mask_of(text, M, N, H), mask_of(text, N, N, H)[:, N - M:], f"{text} (M={M}, N={N})")


@settings(max_examples=examples(20))
@given(N=st.integers(8, 64), chunks=st.integers(0, 4), b=st.sampled_from([4, 8]), causal=st.booleans(),
       query=st.sampled_from(["block", "token"]), seed=st.integers(0, 99))
def test_chunked_prefill_routed(N, chunks, b, causal, query, seed):
    # routed blocks are pooled from query row 0: the chunks are the same blocks where b divides N - M
    M = max(N - chunks * b, 1) if query == "token" else N - min(chunks, (N - 1) // b) * b
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, N, 8, generator=g), torch.randn(2, N, 8, generator=g)
    text = f"topk(2, block={b}, query={query})"
    text = f"causal & {text}" if causal else text
    same(mask_of(text, M, N, q=q[:, N - M:], k=k), mask_of(text, N, N, q=q, k=k)[:, N - M:], f"{text} M={M}")


# the static 1-D primitives in kernels (topk's routing: test_chunked_prefill_routed and test_routed.py)
KERNEL_PATTERNS = [
    "causal & (window(5, dilation=2) | sink(3) | global(30, 41))",
    "blocked(12) | strided(7) & window(20)",
    "causal & (pow2(block=8) | columns(5, phase=h % 5) | window(2, block=8))",
    "segments(16, dilation=2, offset=h % 2) | full - causal(block=8)",
    "random(2, block=8, seed=1) | causal & window(3)",  # its table read at blocks of positions
]
CONFIG = {"block_m": 16, "block_n": 16, "num_warps": 4, "num_stages": 1}


@pytest.mark.parametrize("text", KERNEL_PATTERNS)
def test_chunked_prefill_kernels(interpret, text):
    N, M, H = 80, 37, 2  # 8 doesn't divide N - M: query tiles and blocks of positions straddle
    pattern = patternc.compile(text)
    assert set(p.name for p in pattern.primitives()) <= set(STATIC)
    q, k, v = (x.detach() for x in inputs(1, H, H, N, N, 16, seed=len(text)))
    full, full_lse = run_kernel(q, k, v, pattern, CONFIG)
    chunk, chunk_lse = run_kernel(q[:, :, N - M:].contiguous(), k, v, pattern, CONFIG)
    assert torch.allclose(chunk, full[:, :, N - M:], atol=1e-5)
    assert torch.equal(torch.isinf(chunk_lse), torch.isinf(full_lse[:, :, N - M:]))
    ref = patternc.reference_attention(q[:, :, N - M:].double(), k.double(), v.double(), pattern)
    assert_close(chunk, ref, 1e-5, text)


def test_flex_mask_mod_takes_raw_indices():
    pattern = patternc.compile("causal & (window(6) | blocked(8)) | global(3)")
    for M, N in [(5, 29), (29, 29), (29, 5)]:
        h, qi, ki = torch.arange(2).view(2, 1, 1), torch.arange(M).view(1, M, 1), torch.arange(N).view(1, 1, N)
        got = torch.broadcast_to(pattern.mask_mod(M, N, 2)(torch.tensor(0), h, qi, ki), (2, M, N))
        assert torch.equal(got, pattern.mask(M, N, 2)), (M, N)


# --------------------------------------------------------------------------- @patternc.jit


def test_jit_predicates_read_raw_rows():
    raw = patternc.jit(lambda q, k, h: (q >= k) & (q - k < 8))  # FlexAttention's mask_mod, top-left
    on_positions = patternc.jit(lambda q, k, h, M, N: (k <= q + N - M) & (q + N - M - k < 8))
    text = patternc.compile("causal & window(8)")
    assert str(on_positions.pattern.body) == "causal & window(8)"
    for M, N in [(1, 40), (6, 40), (40, 40), (40, 6)]:
        q, k = np.arange(M)[:, None], np.arange(N)[None, :]
        same(raw.mask(M, N).numpy(), (q >= k) & (q - k < 8), f"raw M={M} N={N}")
        p = q + N - M
        same(on_positions.mask(M, N).numpy(), (k <= p) & (p - k < 8), f"positions M={M} N={N}")
        same(text.mask(M, N).numpy(), on_positions.mask(M, N).numpy(), f"text M={M} N={N}")
    assert not torch.equal(raw.mask(6, 40), text.mask(6, 40))  # top-left is not bottom-right
