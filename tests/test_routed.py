"""Routed patterns (topk) at run time: block selection and the generated kernel on the routed
layout, in Triton's interpreter against an fp64 reference over the routed mask."""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import patternc
from patternc.runtime.routed import routed_plan, select


def moba_reference(q, k, count, block, causal):
    """Plain loops: per (batch, head, query block) the own block plus the best count-1 earlier
    (causal) or other blocks by mean-pooled dot product; ties to the lower block index."""
    B, H, M, _ = q.shape
    Hkv, N = k.shape[1], k.shape[2]
    nq, nk = -(-M // block), -(-N // block)
    out = torch.zeros(B, H, nq, nk, dtype=torch.bool)
    for b in range(B):
        for h in range(H):
            kh = h // (H // Hkv)
            kbar = [k[b, kh, j * block:(j + 1) * block].double().mean(0) for j in range(nk)]
            for i in range(nq):
                qbar = q[b, h, i * block:(i + 1) * block].double().mean(0)
                own = i + nk - nq
                others = [j for j in range(nk) if (j < own if causal else j != own)]
                ranked = sorted(others, key=lambda j: (-float(qbar @ kbar[j]), j))
                for j in ranked[:count - 1] + ([own] if 0 <= own < nk else []):
                    out[b, h, i, j] = True
    return out


@settings(max_examples=15, deadline=None)
@given(B=st.integers(1, 2), group=st.sampled_from([(2, 2), (2, 1), (4, 2)]), M=st.integers(20, 80),
       extra=st.integers(0, 40), block=st.sampled_from([8, 16]), count=st.integers(1, 4),
       causal=st.booleans(), seed=st.integers(0, 2**16))
def test_selection_matches_loop_reference(B, group, M, extra, block, count, causal, seed):
    g = torch.Generator().manual_seed(seed)
    H, Hkv = group
    N = M + extra
    q = torch.randn(B, H, M, 16, generator=g)
    k = torch.randn(B, Hkv, N, 16, generator=g)
    pattern = patternc.compile(f"{'causal & ' if causal else ''}topk({count}, block={block})")
    chosen = select(q, k, pattern)
    assert torch.equal(chosen, moba_reference(q, k, count, block, causal))


def test_ties_go_to_the_lower_block():
    q = torch.ones(1, 1, 64, 8)
    k = torch.ones(1, 1, 64, 8)  # every block scores the same
    chosen = select(q, k, patternc.compile("causal & topk(3, block=8)"))[0, 0]
    for i in range(8):
        expected = {i} | set(range(min(i, 2)))
        assert set(torch.nonzero(chosen[i]).flatten().tolist()) == expected


@settings(max_examples=10, deadline=None)
@given(M=st.integers(33, 130), seed=st.integers(0, 2**16), count=st.integers(1, 5))
def test_causal_rules(M, seed, count):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(2, 2, M, 16, generator=g) for _ in range(2))
    chosen = select(q, k, patternc.compile(f"causal & topk({count}, block=16)"))
    n = chosen.shape[-1]
    own = torch.arange(n)
    assert chosen[..., own, own].all(), "the query's own block is always kept"
    future = own[None, :] > own[:, None]
    assert not (chosen & future).any(), "never a block in the future"
    assert (chosen.sum(-1) == torch.clamp(own + 1, max=count)).all(), "k blocks where k are available"


ROUTED = [
    "causal & topk(3, block=32)",
    "causal & (window(20) | topk(2, block=32) | sink(4))",
    "topk(2, block=16)",
    "causal & topk(2, block=32) - sink(8)",
    "causal & topk(threshold=0.5, block=16)",
    "topk(3, block=16, threshold=0.3, shared=group)",
    "causal & topk(3, block=16, query=token)",
    "causal & (window(20) | topk(2, block=32, query=token, threshold=0.6, shared=group))",
    "full - topk(2, block=16, query=token)",
]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.sampled_from(ROUTED), B=st.integers(1, 2), group=st.sampled_from([(2, 2), (2, 1), (4, 2)]),
       M=st.sampled_from([64, 100, 128]), extra=st.sampled_from([-36, 0, 32]), seed=st.integers(0, 2**16),
       dtype=st.sampled_from([torch.float32, torch.float16]))
def test_routed_attention_matches_reference(interpret, text, B, group, M, extra, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    H, Hkv = group
    N = M + extra
    q = torch.randn(B, H, M, 32, generator=g).to(dtype)
    k, v = (torch.randn(B, Hkv, N, 32, generator=g).to(dtype) for _ in range(2))
    out, lse, layout = patternc.attention(q, k, v, text, return_lse=True, return_layout=True)
    assert not torch.isnan(out).any()
    for b in range(B):
        ref, ref_lse = patternc.reference_attention(q[b:b + 1].double(), k[b:b + 1].double(), v[b:b + 1].double(),
                                                    text, return_lse=True)
        err = (out[b:b + 1].double() - ref).norm() / ref.norm()
        assert err < (1e-5 if dtype == torch.float32 else 5e-3)
        assert torch.equal(torch.isinf(lse[b:b + 1]), torch.isinf(ref_lse))
    assert torch.equal(layout.selection, select(q, k, patternc.compile(text)))


@pytest.mark.parametrize("text", ["causal & (window(20) | topk(2, block=32))",
                                  "causal & (window(20) | topk(2, block=32, query=token))",
                                  "topk(threshold=0.7, block=32, query=token, shared=group) - sink(8)"])
def test_routed_layout_matches_the_routed_mask(interpret, text):
    """Query blocks: tiles classified exactly. Tokens: a tile whose rows chose differently is
    visited as partial, so exact except that it may hold nothing visible."""
    g = torch.Generator().manual_seed(3)
    q, k = (torch.randn(2, 2, 128, 16, generator=g) for _ in range(2))
    pattern = patternc.compile(text)
    plan = routed_plan(pattern, 128, 128, 2, 16, 32, "cpu")
    got = plan.layout(q, k).block_map().view(2, 2, 8, 4)
    for b in range(2):
        mask = pattern.mask(128, heads=2, q=q[b], k=k[b])
        tiles = mask.view(2, 8, 16, 4, 32).permute(0, 1, 3, 2, 4).flatten(3)
        expected = torch.where(tiles.all(-1), 2, torch.where(tiles.any(-1), 1, 0)).to(torch.int8)
        if "token" in text:
            assert torch.equal(got[b] == 2, expected == 2), "full exactly where every pair is visible"
            assert not (tiles.any(-1) & (got[b] == 0)).any(), "no visible pair in a skipped tile"
        else:
            assert torch.equal(got[b], expected)


def test_blocks_that_tiles_do_not_divide_are_a_clear_error(interpret):
    q = torch.randn(1, 1, 72, 16)
    with pytest.raises(patternc.PatternError, match="needs tiles that divide"):
        patternc.attention(q, q, q, "causal & topk(2, block=24)")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("text", ROUTED + ["causal & topk(4, block=256)"])
@pytest.mark.parametrize("group", [(4, 4), (4, 2)])
def test_gpu_routed_attention(text, group):
    g = torch.Generator(device="cuda").manual_seed(7)
    H, Hkv = group
    q = torch.randn(2, H, 2048, 128, device="cuda", generator=g, dtype=torch.bfloat16)
    k, v = (torch.randn(2, Hkv, 2048, 128, device="cuda", generator=g, dtype=torch.bfloat16) for _ in range(2))
    out, layout = patternc.attention(q, k, v, text, return_layout=True)
    expected = select(q, k, patternc.compile(text))  # torch's fp32 matmul: a near-tie may rank differently
    assert (layout.selection != expected).float().mean() < 1e-3
    for b in range(2):
        ref = patternc.reference_attention(q[b:b + 1].float(), k[b:b + 1].float(), v[b:b + 1].float(), text)
        assert (out[b:b + 1].float() - ref).norm() / ref.norm() < 1e-2

