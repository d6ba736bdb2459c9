"""Routed patterns (`topk`) inside packed documents: every document routes alone, as if it were
the whole sequence (blocks from its first token, the last one short, pooled over its own tokens,
chosen among its own blocks), and nothing outside it is visible.

Two independent definitions: MoBA's rule restated in numpy, document by document (for the mask),
and patternc's fp64 dense reference run on each document sliced out of the packed sequence (for
the kernels, under the interpreter, their outputs and gradients poisoned first).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from reference import assert_close

import patternc
from patternc.errors import PatternError
from patternc.runtime.routed import select

pytestmark = pytest.mark.filterwarnings("ignore:patternc.attention on CPU tensors")


def moba_mask(q, k, bounds, count, block, causal, query="block"):
    """bool [H, N, N] by MoBA's rule, each document alone: its blocks of `block` tokens from its
    first (the last short), means in fp64; a query block (or token, `query="token"`) keeps its
    own block and the best `count - 1` others among the earlier (causal) or all other blocks of
    its document, ties to the lower block; causal: never a later key."""
    H, N, _ = q.shape
    group = H // k.shape[0]
    out = np.zeros((H, N, N), bool)
    for s, e in zip(bounds[:-1], bounds[1:]):
        n = e - s
        nb = -(-n // block)
        for h in range(H):
            qq, kk = q[h, s:e].astype(np.float64), k[h // group, s:e].astype(np.float64)
            kbar = [kk[j * block:(j + 1) * block].mean(0) for j in range(nb)]
            if query == "block":
                choosers = [(qq[i * block:(i + 1) * block].mean(0), i, range(i * block, min((i + 1) * block, n)))
                            for i in range(nb)]
            else:
                choosers = [(qq[t], t // block, [t]) for t in range(n)]
            for vec, own, rows in choosers:
                others = [j for j in range(nb) if (j < own if causal else j != own)]
                ranked = sorted(others, key=lambda j: (-float(vec @ kbar[j]), j))
                for j in ranked[:count - 1] + [own]:
                    for t in rows:
                        out[h, s + t, s + j * block:s + min((j + 1) * block, n)] = True
        if causal:
            out[:, s:e, s:e] &= np.tri(n, dtype=bool)
    return out


@st.composite
def boundaries(draw, max_docs=4, max_len=60):
    """Cumulative boundaries: empty documents, documents shorter than a block now and then."""
    lengths = draw(st.lists(st.sampled_from([0, 1, 5, 16, 23, 40, max_len]) | st.integers(0, max_len),
                            min_size=1, max_size=max_docs))
    assume(sum(lengths) > 0)
    return [0, *np.cumsum(lengths).tolist()]


@settings(max_examples=25, deadline=None)
@given(bounds=boundaries(), count=st.integers(1, 4), block=st.sampled_from([4, 8, 16]), causal=st.booleans(),
       query=st.sampled_from(["block", "token"]), heads=st.sampled_from([(1, 1), (2, 1), (4, 2)]),
       seed=st.integers(0, 2**16))
def test_mask_is_moba_in_each_document(bounds, count, block, causal, query, heads, seed):
    H, Hkv = heads
    N = bounds[-1]
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(H, N, 8, generator=g), torch.randn(Hkv, N, 8, generator=g)
    text = f"{'causal & ' if causal else ''}topk({count}, block={block}, query={query})"
    got = patternc.compile(text).mask(N, q=q, k=k, documents=torch.tensor(bounds, dtype=torch.int32))
    want = moba_mask(q.numpy(), k.numpy(), bounds, count, block, causal, query)
    assert np.array_equal(got.numpy(), want), f"{text} over documents {bounds}"


def test_reference_attention_is_each_document_alone():
    pattern = patternc.compile("causal & (window(3) | topk(2, block=8, shared=group))")
    bounds = [0, 20, 20, 27, 60]
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, h, 60, 16, generator=g, dtype=torch.float64) for h in (4, 2, 2))
    got = patternc.reference_attention(q, k, v, pattern, documents=torch.tensor(bounds, dtype=torch.int32))
    for s, e in ((0, 20), (20, 27), (27, 60)):  # and the empty one holds no token
        alone = patternc.reference_attention(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], pattern)
        assert torch.allclose(got[:, :, s:e], alone, atol=1e-12), f"document {s}..{e}"


KERNEL_CASES = [  # pattern, heads, kv heads, boundaries
    ("causal & topk(2, block=16)", 2, 1, [0, 37, 37, 50, 51, 128, 140]),  # empty, one token, shorter than a block
    ("topk(2, block=32) | sink(3)", 2, 2, [0, 64, 96, 150]),  # on tile boundaries; keys past a document's end
    ("causal & (window(5) | topk(2, block=16, query=token))", 4, 2, [0, 9, 70, 100]),
    ("causal & topk(threshold=0.6, block=16, shared=group)", 4, 2, [0, 45, 45, 120]),
    ("topk(3, block=32, threshold=0.4, query=token, shared=group) - sink(2)", 2, 1, [0, 80, 83, 128]),
]


def _poisoned(*like):
    return [torch.full_like(x, float("nan")) for x in like]


@pytest.mark.parametrize("text, H, Hkv, bounds", KERNEL_CASES)
def test_kernels_equal_each_document_alone(interpret, text, H, Hkv, bounds):
    """Forward and backward kernels on the packed sequence, every output buffer poisoned, against
    the fp64 reference on each document alone (its tokens sliced out); the choice against
    `select` on each document alone."""
    from patternc.runtime.attention import _device_tag, _prepare

    pattern = patternc.compile(text)
    documents = torch.tensor(bounds, dtype=torch.int32)
    N = bounds[-1]
    g = torch.Generator().manual_seed(N + H)
    q, k, v = (torch.randn(1, h, N, 16, generator=g) for h in (H, Hkv, Hkv))
    do = torch.randn_like(q)
    cfg = {"block_m": 16, "block_n": 16, "num_warps": 4, "num_stages": 1}
    module, plan = _prepare(pattern, 1, H, N, N, 16, cfg, "cpu", _device_tag(q.device), backward=True, documents=True)
    layout = plan.layout(q, k, documents)
    out, lse = _poisoned(q, q[..., 0])
    module.launch(q, k, v, layout, out=out, lse=lse, documents=documents)
    dq, dk, dv = _poisoned(q, k, v)
    module.launch_backward(q, k, v, out, lse, do, layout, dq=dq, dk=dk, dv=dv, documents=documents)
    want, want_lse = torch.zeros_like(out, dtype=torch.float64), torch.zeros_like(lse, dtype=torch.float64)
    grads = [torch.zeros_like(x, dtype=torch.float64) for x in (q, k, v)]
    blocks = 0  # the document's first routing block, in the call's choice
    for s, e in zip(bounds[:-1], bounds[1:]):
        if e == s:
            continue
        part = [x[:, :, s:e].double().requires_grad_() for x in (q, k, v)]
        alone, alone_lse = patternc.reference_attention(*part, pattern, return_lse=True)
        want[:, :, s:e], want_lse[:, :, s:e] = alone.detach(), alone_lse.detach()
        for whole, grad in zip(grads, torch.autograd.grad(alone, part, do[:, :, s:e].double())):
            whole[:, :, s:e] = grad
        chosen = select(q[:, :, s:e], k[:, :, s:e], pattern)  # [1, H, blocks or tokens, blocks]
        n = chosen.shape[-1]
        if plan.query == "block":
            assert torch.equal(layout.selection[:, :, blocks:blocks + n, :n], chosen), f"document {s}..{e}: choice"
            assert not layout.selection[:, :, blocks:blocks + n, n:].any(), f"document {s}..{e}: blocks past it"
        else:
            assert torch.equal(layout.selection[:, :, s:e, :n], chosen), f"document {s}..{e}: choice"
        blocks += n
    assert_close(out, want, 1e-5, f"{text!r} out")
    assert torch.equal(torch.isinf(lse), torch.isinf(want_lse)), "rows with no key"
    assert torch.allclose(lse.double(), want_lse, atol=1e-5), "LSE"
    for got, ref, name in zip((dq, dk, dv), grads, "qkv"):
        assert_close(got, ref, 1e-4, f"{text!r} d{name}")


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bounds=boundaries(max_docs=3, max_len=48), seed=st.integers(0, 99),
       text=st.sampled_from(["causal & topk(2, block=16)", "topk(1, block=16) | window(2)",
                             "causal & topk(2, block=16, query=token)"]))
def test_attention_over_drawn_documents(interpret, bounds, seed, text):
    """The public call, as a user makes it (a batch of 2), against the reference on each document
    alone."""
    documents = torch.tensor(bounds, dtype=torch.int32)
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 2, bounds[-1], 16, generator=g) for _ in range(3))  # the batch shares the documents
    out = patternc.attention(q, k, v, text, documents=documents)
    for b in range(2):
        for s, e in zip(bounds[:-1], bounds[1:]):
            if e > s:
                want = patternc.reference_attention(*(x[b:b + 1, :, s:e].double() for x in (q, k, v)), text)
                assert_close(out[b:b + 1, :, s:e], want, 1e-5, f"{text!r}: batch {b}, document {s}..{e} of {bounds}")


def test_compiled_training_step(interpret):
    """Through the custom op under torch.compile (fullgraph), gradients against the reference."""
    import torch._dynamo
    from reference import reference_grads

    pattern = patternc.compile("causal & (sink(2) | topk(2, block=16))")
    documents = torch.tensor([0, 30, 30, 64], dtype=torch.int32)
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 2, 64, 16, generator=g).requires_grad_() for _ in range(3))

    def step(q, k, v, documents):
        return patternc.attention(q, k, v, pattern, documents=documents).square().sum()

    explained = torch._dynamo.explain(step)(q, k, v, documents)
    assert explained.graph_break_count == 0, explained.break_reasons
    torch.compile(step, fullgraph=True, backend="aot_eager")(q, k, v, documents).backward()
    dout = 2 * patternc.reference_attention(q, k, v, pattern, documents=documents).detach()
    for got, want, name in zip((q.grad, k.grad, v.grad), reference_grads(q, k, v, pattern, dout, documents=documents),
                               "qkv"):
        assert_close(got, want, 1e-4, f"compiled d{name}")


def test_boundaries_changed_in_place_are_routed_again(interpret):
    """The routing's tables of the documents are kept per boundaries tensor (the layers of a step
    share them); an in-place change is a new version, routed anew."""
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 2, 64, 16, generator=g) for _ in range(3))
    documents = torch.tensor([0, 40, 64], dtype=torch.int32)
    for bounds in ([0, 40, 64], [0, 16, 64], [0, 16, 64]):
        documents.copy_(torch.tensor(bounds, dtype=torch.int32))
        got = patternc.attention(q, k, v, "causal & topk(2, block=16)", documents=documents)
        for s, e in zip(bounds[:-1], bounds[1:]):
            want = patternc.reference_attention(*(x[:, :, s:e].double() for x in (q, k, v)), "causal & topk(2, block=16)")
            assert_close(got[:, :, s:e], want, 1e-5, f"documents {bounds}: {s}..{e}")


@pytest.mark.parametrize("query", ["block", "token"])
def test_routing_over_documents_syncs_nothing(interpret, query):
    """The documents' tables are built on the device: no host synchronisation in a call's routing."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from patternc.runtime.routed import routed_plan

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.add(func.__name__)
            return func(*args, **(kwargs or {}))

    plan = routed_plan(patternc.compile(f"causal & topk(2, block=16, query={query})"), 96, 96, 2, 16, 16, "cpu")
    q = torch.randn(1, 2, 96, 16)
    documents = torch.tensor([0, 40, 96], dtype=torch.int32)
    with Ops() as ops:
        plan.layout(q, q, documents)
    assert not ops.ops & {"_local_scalar_dense", "item", "nonzero", "tolist"}, ops.ops


def test_the_document_kernels_compile_for_hopper(tmp_path, monkeypatch):
    """The routing kernels' documents branches through Triton's sm_90 compiler (the interpreter
    takes more than the compiler does): test_routing_selection's offline compile of a MoBA call
    at 8k tokens, over three documents."""
    import test_routing_selection

    call = "routing.route(plan, q, q)"
    assert call in test_routing_selection.COMPILE
    monkeypatch.setattr(test_routing_selection, "COMPILE", test_routing_selection.COMPILE.replace(
        call, "routing.route(plan, q, q, torch.tensor([0, 100, 5000, 8192], dtype=torch.int32))"))
    test_routing_selection.test_the_kernels_compile_for_hopper(tmp_path)


@pytest.mark.parametrize("call, message", [
    (lambda p, d: p.layout(64, documents=d), "routed patterns"),
    (lambda p, d: p.mask_mod(64, documents=d), "routed patterns"),
    (lambda p, d: patternc.simulate(p, 64, documents=d), "routed patterns"),
    (lambda p, d: p.mask(64, documents=d), "depend on q and k"),
])
def test_what_routed_documents_do_not_take_is_a_clear_error(call, message):
    with pytest.raises(PatternError, match=message):
        call(patternc.compile("causal & topk(2, block=16)"), [0, 30, 64])


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("text", ["causal & topk(4, block=256)", "causal & (window(128) | topk(2, block=128))",
                                  "causal & topk(3, block=128, query=token, shared=group)"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_routed_documents_against_flex_and_the_reference(text, dtype):
    """Autotuned, as a user runs it: outputs and gradients against the fp64 reference, and the
    output against FlexAttention fed the reference's document + routed mask (the choice from the
    same q and k: near ties may rank differently, hence the tolerances)."""
    from test_documents import gpu_call_against_the_reference
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    pattern = patternc.compile(text)
    bounds = [0, 100, 1100, 1100, 2600, 4096]
    q, k, v, out = gpu_call_against_the_reference(pattern, bounds, dtype)
    mask = pattern.mask(4096, q=q[0].detach().float(), k=k[0].detach().float(), documents=bounds, device="cuda")
    block_mask = create_block_mask(lambda b, h, i, j: mask[h, i, j], 1, 8, 4096, 4096, device="cuda")
    flex = flex_attention(q, k, v, block_mask=block_mask, enable_gqa=True)
    assert_close(out, flex.double(), 2e-2, f"{text} vs FlexAttention")
