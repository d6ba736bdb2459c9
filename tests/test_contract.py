"""The registry-wide contract: every textual primitive of `patternc.primitives.REGISTRY`, alone,
drawn from its own `strategy` hook (on a grid where it `needs_grid`, with q and k where it is
`routed`, on blocks now and then where it is `blockable`), through every stage. A new
primitive module is checked here without an edit to this file:

- it has a strategy (without one the test names the hook to add), and its texts use it and
  round-trip: `patternc.compile(str(p)) == p`;
- its layouts, in residue and in token order, cover the mask exactly (test_layout's checks:
  no visible tile skipped, full tiles full, nothing visited needlessly, the computed pairs
  are the mask), and the token-order layout exports to a FlexAttention `BlockMask`;
- its FlexAttention `mask_mod`, evaluated with torch on index grids, equals `Pattern.mask`;
- `patternc.analysis.analyze` and `patternc.simulate` accept it;
- its generated kernel under TRITON_INTERPRET=1 matches an fp64 softmax over the mask (routed
  primitives through `patternc.attention`, which selects blocks from q and k), on drawn texts
  and on the primitive's `examples`. A kernel may refuse a text only with a PatternError that
  names the primitive: a static primitive must declare the refusal (`standalone_error`) and
  the numeric check is skipped with its reason; a routed one must say what to change (its
  routing block may not fit the tiles) and the primitive's `examples` carry the numeric check.

The independent reference semantics are in tests/test_primitive_<name>.py (see test_masks.py),
compositions in test_layout.py, test_masks.py and test_kernels.py.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import examples
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_kernels import check
from test_layout import TILE, check_block_map, check_csr, check_flex, computed_set, leaf_text

import patternc
from patternc.analysis import analyze
from patternc.errors import PatternError
from patternc.primitives import REGISTRY

TEXTUAL = sorted(name for name, cls in REGISTRY.items() if cls.textual)  # not jit's predicate
MAXLEN = 96
RESIDUE_MAXLEN = 256  # lengths for residue order: r classes of whole 16-token tiles
KERNEL_LEN, HEAD_DIM = 48, 16  # small: kernels run in Triton's interpreter
KERNEL_CONFIG = {"block_m": 16, "block_n": 16, "num_warps": 4, "num_stages": 1}
FIXTURE = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def small_grid(draw, tokens):
    """A grid of 1-3 dimensions holding at most `tokens` tokens."""
    dims = []
    for _ in range(draw(st.integers(1, 3))):
        dims.append(draw(st.integers(1, max(1, tokens // math.prod(dims or [1])))))
    return tuple(dims)


@st.composite
def alone(draw, name, max_len=MAXLEN, length=None):
    """(text, M, N, heads, q, k): primitive `name` alone, at lengths it accepts (`length`: M = N =
    length where the primitive has no grid; a grid of at most that many tokens where it has)."""
    cls = REGISTRY[name]
    if cls.needs_grid:
        grid = draw(small_grid(length or max_len))
        M = N = math.prod(grid)
        text = draw(leaf_text(name, grid))
        if len(grid) > 1 or draw(st.booleans()):  # 1-D: with or without its grid(...) line
            text = f"grid({', '.join(map(str, grid))})\n{text}"
    else:
        M = length or draw(st.integers(1, max_len))
        N = length or draw(st.integers(1, max_len))
        text = draw(leaf_text(name))
    H = draw(st.integers(1, 3))
    q = k = None
    if cls.routed:
        gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
        Hkv = draw(st.sampled_from([d for d in (1, 2, 3) if H % d == 0]))
        q, k = torch.randn(H, M, HEAD_DIM, generator=gen), torch.randn(Hkv, N, HEAD_DIM, generator=gen)
    return text, M, N, H, q, k


def qk(q, k):
    return {} if q is None else {"q": q, "k": k}


# --------------------------------------------------------------------------- the language


@pytest.mark.parametrize("name", TEXTUAL)
def test_has_a_strategy(name):
    cls = REGISTRY[name]
    try:
        strategy = cls.strategy((8,) if cls.needs_grid else None)
    except PatternError as e:  # Primitive.missing_hook: names the hook and where to define it
        pytest.fail(f"{e}\n(or override {cls.__name__}.strategy(grid=None) to draw texts with varied parameters)")
    assert isinstance(strategy, st.SearchStrategy), f"{name}.strategy() returned {strategy!r}, not a strategy"


@pytest.mark.parametrize("name", TEXTUAL)
@settings(max_examples=examples(25))
@given(data=st.data())
def test_texts_use_it_and_round_trip(name, data):
    text, *_ = data.draw(alone(name))
    p = patternc.compile(text)
    assert name in {x.name for x in p.primitives()}, f"{name}.strategy() drew {text!r}, which doesn't use it"
    again = patternc.compile(str(p))
    assert again == p, f"{text!r} prints as {str(p)!r}, which parses to something else"
    assert str(again) == str(p)


# --------------------------------------------------------------------------- layout, Flex, analysis


@pytest.mark.parametrize("name", TEXTUAL)
@settings(max_examples=examples(20))
@given(data=st.data(), bm=TILE, bn=TILE, residue=st.booleans())
def test_layout_covers_the_mask(name, data, bm, bn, residue):
    text, M, N, H, q, k = data.draw(alone(name))
    pattern = patternc.compile(text)
    r = max(x.residue_modulus(None) for x in pattern.primitives())
    residue &= r > 1 and not REGISTRY[name].needs_grid and q is None and 16 * r <= RESIDUE_MAXLEN
    if residue:  # a primitive that declares a residue modulus, on lengths whose classes are whole tiles
        bm = bn = 16
        M = N = 16 * r * data.draw(st.integers(1, RESIDUE_MAXLEN // (16 * r)))
    mask = pattern.mask(M, N, H, **qk(q, k)).numpy()
    for order in ("auto", "natural"):
        layout = pattern.layout(M, N, heads=H, block_m=bm, block_n=bn, order=order, **qk(q, k))
        context = f"{text!r} M={M} N={N} heads={H} tiles {bm}x{bn} order={order}"
        if order == "auto" and residue:
            assert layout.permutation is not None, f"{context}: residue_modulus is {r}, yet no residue order"
        got = check_block_map(layout, mask, context)
        check_csr(layout, got, context)
        assert np.array_equal(computed_set(layout, got, mask), mask), f"{context}: the computed pairs differ"
        if order == "natural":
            check_flex(layout, got, context)


@pytest.mark.parametrize("name", TEXTUAL)
@settings(max_examples=examples(10))
@given(data=st.data())
def test_flex_mask_mod_is_the_mask(name, data):
    text, M, N, H, q, k = data.draw(alone(name))
    pattern = patternc.compile(text)
    mask_mod = pattern.mask_mod(M, N, H, **qk(q, k))
    h, qi, ki = torch.arange(H).view(H, 1, 1), torch.arange(M).view(1, M, 1), torch.arange(N).view(1, 1, N)
    got = torch.broadcast_to(torch.as_tensor(mask_mod(torch.tensor(0), h, qi, ki)), (H, M, N))
    want = pattern.mask(M, N, H, **qk(q, k))
    bad = torch.nonzero(got != want)[:4].tolist()
    assert not bad, f"{text!r} M={M} N={N} heads={H}: mask_mod differs from the mask at [h, q, k] = {bad}"


@pytest.mark.parametrize("name", TEXTUAL)
@settings(max_examples=examples(5))
@given(data=st.data())
def test_analysis_and_simulator_accept_it(name, data):
    text, M, N, H, *_ = data.draw(alone(name))
    pattern = patternc.compile(text)
    assert len(analyze(pattern, heads=H)) == len(pattern.sections(H))
    prediction = patternc.simulate(pattern, M, N, heads=H, head_dim=64)
    assert math.isfinite(prediction.ms) and prediction.ms > 0, f"{text!r}: predicted {prediction.ms} ms"


# --------------------------------------------------------------------------- kernels


def run_kernel(name, text, M, N, H, Hkv, seed):
    """The generated kernel against an fp64 softmax over the mask (fp32, 16x16 tiles)."""
    if not REGISTRY[name].routed:
        check(text, M, N, H, Hkv, HEAD_DIM, torch.float32, KERNEL_CONFIG, seed=seed)
        return
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, H, M, HEAD_DIM, generator=g)
    k, v = (torch.randn(1, Hkv, N, HEAD_DIM, generator=g) for _ in range(2))
    out, lse = patternc.attention(q, k, v, text, return_lse=True, config=KERNEL_CONFIG)
    ref, ref_lse = patternc.reference_attention(q.double(), k.double(), v.double(), text, return_lse=True)
    assert not torch.isnan(out).any(), f"{text!r}: an output element was never written (or is NaN)"
    err = (out.double() - ref).norm() / ref.norm().clamp_min(1e-30)
    assert err <= 1e-5, f"{text!r} M={M} N={N} heads={H}/{Hkv}: relative error {err:.2e}"
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse)), f"{text!r}: rows with no visible key differ"


def run_or_refuse(name, text, M, N, H, Hkv, seed, routed_may_refuse=True):
    """`run_kernel`, or the clear refusal the module docstring allows."""
    try:
        run_kernel(name, text, M, N, H, Hkv, seed)
    except PatternError as e:
        assert name in e.message, f"{text!r}: the kernel's refusal doesn't say which primitive: {e}"
        if REGISTRY[name].routed:
            assert routed_may_refuse, f"{text!r} is one of {name}'s examples, which must run: {e}"
            assert e.hint, f"{text!r}: the refusal doesn't say what to change: {e}"
            event(f"refused: {e.message}")
            return
        declared = [x.standalone_error() for x in patternc.compile(text).primitives() if x.name == name]
        assert any(declared), f"{text!r}: the kernel is refused ({e.message}) but {name}.standalone_error() is None"
        pytest.skip(f"{name}'s kernel is refused: {e.message}")


@pytest.mark.parametrize("name", TEXTUAL)
@settings(max_examples=examples(5), **FIXTURE)
@given(data=st.data(), gqa=st.booleans(), seed=st.integers(0, 2**16))
def test_kernel_matches_the_reference(interpret, name, data, gqa, seed):
    text, M, N, H, *_ = data.draw(alone(name, length=KERNEL_LEN))
    run_or_refuse(name, text, M, N, H, 1 if gqa else H, seed)


EXAMPLES = [(name, text) for name in TEXTUAL for text in REGISTRY[name].examples]


@pytest.mark.parametrize("name,text", EXAMPLES)
def test_kernel_runs_the_examples(interpret, name, text):
    grid = patternc.compile(text).grid_shape(KERNEL_LEN, KERNEL_LEN)  # constant grids only, as examples are
    M = N = math.prod(grid) if grid else KERNEL_LEN
    run_or_refuse(name, text, M, N, 2, 1, seed=1, routed_may_refuse=False)
