"""Packed documents (`documents=` cumulative boundaries): the pattern inside each document with
positions from its first token, nothing across documents.

The reference is built here from the per-primitive numpy restatements (tests/test_primitive_*.py,
written from DESIGN.md, never from patternc's code): each document's block is the primitive's
reference at the document's length, everything else False. Kernels (under the interpreter) are
compared with the fp64 dense reference on fresh random inputs, their outputs poisoned first, and
with patternc run on each document alone (the one-sequence kernels, a separate code path).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import examples
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from reference import assert_close, leaf_case, reference_grads, references, same

import patternc
from patternc.errors import PatternError
from patternc.ir.documents import check_pattern

pytestmark = pytest.mark.filterwarnings("ignore:patternc.attention on CPU tensors")
references()  # import the per-primitive files now, not while hypothesis draws (a nested @given)


@st.composite
def boundaries(draw, max_docs=5, max_len=40):
    """Cumulative boundaries, empty documents included now and then."""
    lengths = draw(st.lists(st.integers(0, max_len), min_size=1, max_size=max_docs))
    assume(sum(lengths) > 0)
    return [0, *np.cumsum(lengths).tolist()]


def packed_reference(ref, bounds, H):
    """bool [H, N, N]: each document's own reference mask on the diagonal."""
    N = bounds[-1]
    out = np.zeros((H, N, N), bool)
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end > start:
            out[:, start:end, start:end] = ref(end - start, end - start, H)
    return out


def per_document(pattern) -> bool:
    try:
        check_pattern(patternc.compile(pattern) if isinstance(pattern, str) else pattern)
    except PatternError:
        return False
    return True


@settings(max_examples=examples(60))
@given(case=leaf_case(), bounds=boundaries(), H=st.integers(1, 3))
def test_mask_is_each_documents_own(case, bounds, H):
    text, ref = case
    assume(per_document(text))
    got = patternc.compile(text).mask(bounds[-1], heads=H, documents=torch.tensor(bounds, dtype=torch.int32))
    same(got.numpy(), packed_reference(ref, bounds, H), f"{text} over documents {bounds}")


@settings(max_examples=examples(40))
@given(a=leaf_case(), b=leaf_case(), op=st.sampled_from(["|", "&", "-"]), bounds=boundaries(max_len=70),
       tiles=st.sampled_from([(16, 16), (32, 16), (16, 32), (8, 24)]))
def test_layout_tiles_are_exact(a, b, op, bounds, tiles):
    """Visited iff some pair is visible, full iff every pair (of the tile's tokens < N) is."""
    text = f"({a[0]}) {op} ({b[0]})"
    assume(per_document(text))
    N, (bm, bn) = bounds[-1], tiles
    want = patternc.compile(text).mask(N, documents=bounds)[0].numpy()
    Mt, Nt = -(-N // bm), -(-N // bn)
    padded = np.ones((Mt * bm, Nt * bn), bool)  # tokens past N count as visible: they don't spoil a full tile
    padded[:N, :N] = want
    present = np.zeros_like(padded)
    present[:N, :N] = True
    tiles_any = (padded & present).reshape(Mt, bm, Nt, bn).any(axis=(1, 3))
    tiles_all = padded.reshape(Mt, bm, Nt, bn).all(axis=(1, 3))
    got = patternc.compile(text).layout(N, documents=bounds, block_m=bm, block_n=bn).block_map()[0].numpy()
    same(got > 0, tiles_any, f"{text} {bounds} {tiles}: visited tiles")
    same(got == 2, tiles_any & tiles_all, f"{text} {bounds} {tiles}: full tiles")


def test_flex_mask_mod_and_block_mask():
    pattern = patternc.compile("causal & (window(5) | sink(2))")
    bounds = [0, 9, 9, 30, 64]
    want = pattern.mask(64, documents=bounds)[0]
    q, k = torch.arange(64)[:, None], torch.arange(64)[None, :]
    assert torch.equal(pattern.mask_mod(64, documents=bounds)(0, torch.tensor(0), q, k), want)
    block_mask = pattern.layout(64, documents=bounds, block_m=16, block_n=16).to_flex_block_mask()
    assert block_mask.shape[-2:] == (64, 64)


def inputs(H, Hkv, N, D, seed, dtype=torch.float32, grad=False):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, h, N, D, generator=g, dtype=dtype).requires_grad_(grad) for h in (H, Hkv, Hkv)]


KERNEL_CASES = [  # (pattern, heads, kv heads, boundaries)
    ("causal & window(7)", 2, 1, [0, 5, 37, 37, 38, 70]),  # empty and one-token documents, GQA
    ("causal & (window(5) | sink(3))", 2, 2, [0, 16, 32, 64]),  # documents on tile boundaries
    ("window(4, 2) | blocked(6)", 2, 2, [0, 23, 50]),  # bidirectional: tiles past a document's end
    ("causal & window(6, dilation=2) | pow2(block=8)", 4, 2, [0, 1, 44, 45, 61]),
    ("heads 0: causal & window(3)\nheads 1: causal & strided(5)", 2, 1, [0, 30, 41]),
]


@pytest.mark.parametrize("text, H, Hkv, bounds", KERNEL_CASES)
def test_kernels_forward_and_backward(interpret, text, H, Hkv, bounds):
    pattern = patternc.compile(text)
    documents = torch.tensor(bounds, dtype=torch.int32)
    q, k, v = inputs(H, Hkv, bounds[-1], 16, seed=len(bounds) + H, grad=True)
    out, lse = patternc.attention(q, k, v, pattern, return_lse=True, documents=documents)
    want, want_lse = patternc.reference_attention(*(x.double() for x in (q, k, v)), pattern, return_lse=True,
                                                  documents=documents)
    assert_close(out, want, 1e-5, f"{text!r} out")
    assert torch.equal(torch.isinf(lse), torch.isinf(want_lse)), "rows with no key"
    finite = ~torch.isinf(want_lse)
    assert torch.allclose(lse[finite].double(), want_lse[finite], atol=1e-5)
    dout, dlse = torch.randn_like(out), torch.randn_like(lse)
    ((out * dout).sum() + (torch.where(torch.isinf(lse), 0.0, lse) * dlse).sum()).backward()
    for got, ref, name in zip((q.grad, k.grad, v.grad), reference_grads(q, k, v, pattern, dout, dlse,
                                                                         documents=documents), "qkv"):
        assert_close(got, ref, 1e-4, f"{text!r} {bounds} d{name}")


@settings(max_examples=examples(6), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bounds=boundaries(max_docs=4, max_len=50), seed=st.integers(0, 99),
       text=st.sampled_from(["causal & window(9)", "window(3) | sink(2)", "causal & strided(4)"]))
def test_kernel_equals_each_document_alone(interpret, bounds, seed, text):
    """The packed call against patternc on each document separately (one-sequence kernels), with
    the packed call's output and LSE buffers poisoned first."""
    from patternc.runtime.attention import _prepare, _device_tag

    pattern = patternc.compile(text)
    documents = torch.tensor(bounds, dtype=torch.int32)
    N = bounds[-1]
    q, k, v = inputs(2, 2, N, 16, seed)
    module, layout = _prepare(pattern, 1, 2, N, N, 16, {"block_m": 16, "block_n": 16, "num_warps": 4,
                                                       "num_stages": 1}, "cpu", _device_tag(q.device),
                              documents=True)
    out, lse = torch.full_like(q, float("nan")), torch.full((1, 2, N), float("nan"))
    module.launch(q, k, v, layout, out=out, lse=lse, documents=documents)
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end > start:
            alone, alone_lse = patternc.attention(*(x[:, :, start:end] for x in (q, k, v)), pattern, return_lse=True)
            assert torch.allclose(out[:, :, start:end], alone, atol=1e-5), f"document {start}..{end}"
            assert torch.allclose(lse[:, :, start:end], alone_lse, atol=1e-5), f"document {start}..{end} LSE"


def test_cpu_dense_path_takes_documents():
    q, k, v = inputs(2, 2, 20, 16, seed=0)
    bounds = torch.tensor([0, 8, 20], dtype=torch.int32)
    got = patternc.attention(q, k, v, "causal & sink(2)", documents=bounds)
    for s, e in ((0, 8), (8, 20)):
        assert torch.allclose(got[:, :, s:e], patternc.attention(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e],
                                                                 "causal & sink(2)"), atol=1e-6)


def test_compiled_training_step_takes_documents():
    import torch._dynamo

    pattern = patternc.compile("causal & window(4)")
    q, k, v = inputs(2, 2, 24, 16, seed=1, grad=True)
    documents = torch.tensor([0, 10, 24], dtype=torch.int32)

    def step(q, k, v, documents):
        return patternc.attention(q, k, v, pattern, documents=documents).square().sum()

    explained = torch._dynamo.explain(step)(q, k, v, documents)
    assert explained.graph_break_count == 0, explained.break_reasons
    torch.compile(step, fullgraph=True, backend="aot_eager")(q, k, v, documents).backward()
    want = reference_grads(q, k, v, pattern, 2 * patternc.reference_attention(q, k, v, pattern,
                                                                             documents=documents).detach(),
                           documents=documents)
    assert_close(q.grad, want[0], 1e-5, "compiled dq")


BAD_BOUNDARIES = [
    (torch.tensor([0, 5, 4, 20], dtype=torch.int32), "decrease at index 2"),
    (torch.tensor([1, 20], dtype=torch.int32), "start at 1, not 0"),
    (torch.tensor([0, 19], dtype=torch.int32), "end at 19, not at the sequence length 20"),
    (torch.tensor([0, 20]), "int32"),
    (torch.tensor([[0, 20]], dtype=torch.int32), "1-D"),
    (torch.tensor([0], dtype=torch.int32), "at least 2"),
    ([0, 20], "must be a torch tensor"),
]


@pytest.mark.parametrize("documents, message", BAD_BOUNDARIES)
def test_bad_boundaries_are_clear_errors(documents, message):
    q, k, v = inputs(2, 2, 20, 16, seed=0)
    with pytest.raises(PatternError, match=message):
        patternc.attention(q, k, v, "causal", documents=documents)


@pytest.mark.parametrize("text, message", [
    ("causal & window(N // 4)", "reads the sequence length"),
    ("grid(4, 5)\nneighborhood((3, 3))", "token grid fixes the sequence's length"),
    ("causal & (window(N // 4) | topk(2, block=4))", "reads the sequence length"),  # routed: its static part
    ("random(2, block=4, seed=1)", "tables drawn for one sequence length"),
])
def test_patterns_that_cant_apply_per_document(text, message):
    q, k, v = inputs(2, 2, 20, 16, seed=0)
    with pytest.raises(PatternError, match=message):
        patternc.attention(q, k, v, text, documents=torch.tensor([0, 8, 20], dtype=torch.int32))


def test_documents_need_self_attention():
    q, _, _ = inputs(2, 2, 12, 16, seed=0)
    _, k, v = inputs(2, 2, 20, 16, seed=1)
    with pytest.raises(PatternError, match="M = 12, N = 20"):
        patternc.attention(q, k, v, "causal", documents=torch.tensor([0, 20], dtype=torch.int32))


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def gpu_call_against_the_reference(pattern, bounds, dtype):
    """(q, k, v, out) of an autotuned call on the GPU, as a user makes it (8 query heads, 4 key
    heads, D 128), its output and gradients checked against the fp64 reference first."""
    documents = torch.tensor(bounds, dtype=torch.int32, device="cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, h, bounds[-1], 128, device="cuda", dtype=dtype, generator=g).requires_grad_()
               for h in (8, 4, 4))
    out = patternc.attention(q, k, v, pattern, documents=documents)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    want = patternc.reference_attention(*(x.detach().double() for x in (q, k, v)), pattern, documents=documents)
    assert_close(out, want, 2e-2, f"{pattern} out")
    for got, ref, name in zip(grads, reference_grads(q, k, v, pattern, dout, documents=documents), "qkv"):
        assert_close(got, ref, 3e-2, f"{pattern} d{name}")
    return q, k, v, out


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("text", ["causal", "causal & (window(300) | sink(4))", "window(200) | blocked(512)"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_documents_against_flex_and_the_reference(text, dtype):
    """Autotuned, as a user runs it: outputs and gradients against the fp64 reference and against
    FlexAttention fed `pattern.layout(N, documents=...).to_flex_block_mask()`."""
    from torch.nn.attention.flex_attention import flex_attention

    pattern = patternc.compile(text)
    bounds = [0, 1000, 1001, 3000, 3000, 4500, 8192]
    q, k, v, out = gpu_call_against_the_reference(pattern, bounds, dtype)
    block_mask = pattern.layout(8192, heads=8, documents=bounds).to_flex_block_mask().to("cuda")
    flex = flex_attention(q, k, v, block_mask=block_mask, enable_gqa=True)
    assert_close(out, flex.double(), 2e-2, f"{text} vs FlexAttention")


def test_simulator_predicts_packed_calls():
    cfg = "64x64/w4/s3"
    whole = patternc.simulate("causal & window(512)", 8192, heads=4, config=cfg)
    one = patternc.simulate("causal & window(512)", 8192, heads=4, config=cfg, documents=[0, 8192])
    assert one.ms == pytest.approx(whole.ms) and one.density == pytest.approx(whole.density)
    many = patternc.simulate("causal", 8192, heads=4, config=cfg, documents=[0, 1000, 3000, 3001, 8192])
    assert many.ms < patternc.simulate("causal", 8192, heads=4, config=cfg).ms  # fewer tiles across documents
    with pytest.raises(PatternError, match="token grid"):
        patternc.simulate("grid(8, 8)\nneighborhood((3, 3))", 64, documents=[0, 64])


def test_boundaries_changed_in_place_are_used_and_checked_again(interpret):
    """Checks and program tables are kept per boundaries tensor (the layers of a step share one);
    an in-place change is a new version: laid out and checked again."""
    pattern = patternc.compile("causal & window(6)")
    q, k, v = inputs(2, 2, 40, 16, seed=3)
    documents = torch.tensor([0, 17, 40], dtype=torch.int32)
    for bounds in ([0, 17, 40], [0, 9, 40], [0, 9, 40]):
        documents.copy_(torch.tensor(bounds, dtype=torch.int32))
        got = patternc.attention(q, k, v, pattern, documents=documents)
        want = patternc.reference_attention(*(x.double() for x in (q, k, v)), pattern, documents=bounds)
        assert_close(got, want, 1e-5, f"documents {bounds}")
    documents[1] = 50
    with pytest.raises(PatternError, match="decrease at index 2"):
        patternc.attention(q, k, v, pattern, documents=documents)
