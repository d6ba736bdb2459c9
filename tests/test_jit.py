"""@patternc.jit: tracing, family recognition (exact, never approximate), the general `predicate`
primitive, and errors that point into the user's function."""
from __future__ import annotations

import operator

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import patternc
from patternc import PatternError
from patternc.frontend import JitPattern, Predicate, recognize
from patternc.ir import Pattern
from patternc.ir.expr import Sym, where

from conftest import examples


def same_masks(a: Pattern, b: Pattern, M: int, N: int, heads: int):
    ma, mb = a.mask(M, N, heads), b.mask(M, N, heads)
    assert torch.equal(ma, mb), f"{a} vs {b} differ at M={M}, N={N}:\n{(ma ^ mb).nonzero()[:8].tolist()}"


# --------------------------------------------------------------------------- recognition

# Predicates read raw rows q in 0..M-1 (FlexAttention's convention); primitives read positions
# p = q + N - M. Predicates written on p map onto primitives for every M, N; raw ones only where
# they mean the same whatever N - M is (sinks, columns), or as windows whose sides use N - M.
RECOGNISED = [
    (lambda q, k, h, M, N: (k <= q + N - M) & (q + N - M - k < 1024), "causal & window(1024)"),
    (lambda q, k, h, M, N: k <= q + N - M, "causal"),
    (lambda q, k, h, M, N: (k <= q + N - M) & (q - k < 64), "causal & window(N - M + 64)"),  # raw q - k < 64
    (lambda q, k, h: q - k < 1024, "window(N - M + 1023, M - 1)"),  # valid while M <= N + 1023
    (lambda q, k, h: k < 4, "sink(4)"),
    (lambda q, k, h: 7 >= k, "sink(8)"),
    (lambda q, k, h, M, N: (q + N - M) // 64 == k // 64, "blocked(64)"),
    (lambda q, k, h, M, N: (q + N - M - k) % 8 == 0, "strided(8)"),
    (lambda q, k, h, M, N: (q + N - M) % 8 == k % 8, "strided(8)"),
    (lambda q, k, h: k % 16 == 15, "columns(16)"),
    (lambda q, k, h: k % 16 == h % 16, "columns(16, phase=h % 16)"),
    (lambda q, k, h, M, N: abs(q + N - M - k) <= 3, "window(4)"),
    (lambda q, k, h, M, N: (q + N - M - k <= 5) & (k - (q + N - M) <= 2), "window(5, 2)"),
    (lambda q, k, h, M, N: (k <= q + N - M) & ((q + N - M - k) % 4 == 0) & (q + N - M - k <= 4 * 1023),
     "causal & window(1024, dilation=4)"),
    (lambda q, k, h, M, N: ((q + N - M) // 4 - k // 4 <= 2) & ((q + N - M) // 4 >= k // 4),
     "causal(block=4) & window(3, block=4)"),
    (lambda q, k, h, M, N: ((q + N - M) // 64 - k // 64) % 16 == 0, "strided(16, block=64)"),
    (lambda q, k, h: k // 64 % 16 == h % 16, "columns(16, phase=h % 16, block=64)"),
    (lambda q, k, h, M, N: (k <= q + N - M) & (k % 3 != 1), "causal - columns(3, phase=1)"),
    (lambda q, k, h, M, N: (k <= q + N - M) & ~(k < 4), "causal - sink(4)"),
    (lambda q, k, h, M, N: (k <= q + N - M) & (k >= 4), "causal - sink(4)"),
    (lambda q, k, h, M, N: q + N - M != k, "full - window(1)"),
    (lambda q, k, h, M, N: (k <= q + N - M) & ((q + N - M - k < 256) | ((q + N - M - k) % 256 == 0)),
     "causal & (window(255, M - 1) | strided(256))"),
    (lambda q, k, h, M, N: (k < 4) | ((q + N - M) // 8 == k // 8), "sink(4) | blocked(8)"),
    (lambda q, k, h: True, "full"),
]


@pytest.mark.parametrize("fn, expected", RECOGNISED)
def test_families_are_recognised(fn, expected):
    p = patternc.jit(fn)
    assert str(p.pattern.body) == expected
    assert not any(isinstance(n, Predicate) for n in p.primitives())


def test_pow2_rule_is_recognised_on_tokens_and_blocks():
    def rule(d):
        return (d == 0) | (d > 0) & ((d & (d - 1)) == 0)

    assert str(patternc.jit(lambda q, k, h, M, N: rule(q + N - M - k)).pattern.body) == "pow2"
    assert str(patternc.jit(lambda q, k, h, M, N: rule((q + N - M) // 16 - k // 16)).pattern.body) == "pow2(block=16)"
    raw = patternc.jit(lambda q, k, h: rule(q - k))  # raw rows: distances from the row, not the position
    assert not any(n.name == "pow2" for n in raw.primitives())


UNRECOGNISED = [
    lambda q, k, h: q - k > 4,  # a window can't exclude the diagonal from both sides
    # raw rows, FlexAttention's top-left convention: keys up to the row, not the position, so
    # for M < N a window ending before the query (and for M > N, one past it)
    lambda q, k, h: q >= k,
    lambda q, k, h: (q >= k) & (q - k < 1024),
    lambda q, k, h: abs(q - k) <= 3,
    lambda q, k, h: q != k,
    lambda q, k, h: (q >= k) & ~(k < 4),
    # block boundaries and residues that move with N - M
    lambda q, k, h: q // 64 == k // 64,
    lambda q, k, h: (q - k) % 8 == 0,
    lambda q, k, h: q % 8 == k % 8,
    lambda q, k, h: where(h == 0, q >= k, k < 8),
    lambda q, k, h: (q * k) % 7 == 3,
    lambda q, k, h: (q - k) % 4 == 1,
    lambda q, k, h: k % 4 == 7,  # never true; a columns() with that phase would be rejected
    lambda q, k, h: (q >= k) ^ (k < 5),
]


@pytest.mark.parametrize("fn", UNRECOGNISED)
def test_the_rest_stays_a_predicate_with_the_same_mask(fn):
    p = patternc.jit(fn)
    assert any(isinstance(n, Predicate) for n in p.primitives())
    for M, N in ((9, 9), (5, 12), (12, 5)):
        mask = p.mask(M, N, heads=2)
        q, k, h = torch.arange(M).view(1, M, 1), torch.arange(N).view(1, 1, N), torch.arange(2).view(2, 1, 1)
        expected = fn(q, k, h)
        assert torch.equal(mask, torch.as_tensor(expected).expand(2, M, N))


def test_partial_recognition_keeps_the_recognisable_part():
    fn = lambda q, k, h, M, N: (k <= q + N - M) & (q + N - M - k < 64) & ((q * k) % 3 == 0)  # noqa: E731
    p = patternc.jit(fn)
    names = sorted(n.name for n in p.primitives())
    assert names == ["causal", "predicate", "window"]
    assert "predicate(lambda q, k, h: q * k % 3 == 0)" in str(p.pattern.body)  # raw rows again
    # a raw bound that no window states on every shape stays in the predicate, the rest is kept
    assert str(patternc.jit(lambda q, k, h: (q >= k) & (k % 3 != 1)).pattern.body) == \
        "predicate(lambda q, k, h: q >= k) - columns(3, phase=1)"
    whole = Pattern(Predicate(fn(Sym("q"), Sym("k"), Sym("h"), Sym("M"), Sym("N")).term))
    for M, N in ((70, 70), (3, 80), (80, 3)):
        same_masks(p.pattern, whole, M, N, 1)


# Random predicates: recognition alone (without the safety net in trace) must equal the predicate
# on every shape, M != N included.

_bound = st.integers(-3, 12)
_mod = st.integers(1, 5)


@st.composite
def predicates(draw, depth=0):
    q, k, h = Sym("q"), Sym("k"), Sym("h")
    unit = draw(st.sampled_from([None, None, 2, 3]))
    Q, K = (q, k) if unit is None else (q // unit, k // unit)
    kind = draw(st.integers(0, 10 if depth < 2 else 7))
    c, s = draw(_bound), draw(_mod)
    op = draw(st.sampled_from(["<", "<=", ">", ">=", "==", "!="]))
    cmp = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq,
           "!=": operator.ne}[op]
    if kind == 0:
        return cmp(Q - K, c)
    if kind == 1:
        return cmp(K - Q, c)
    if kind == 2:
        return cmp(K, c)
    if kind == 3:
        return cmp(c, Q - K + draw(st.integers(-2, 2)))
    if kind == 4:
        return ((Q - K) % s == draw(st.integers(0, 1))) if draw(st.booleans()) else (Q % s == K % s)
    if kind == 5:
        return K % s == draw(st.integers(-1, 5))
    if kind == 6:
        return (K % s == h % s) if draw(st.booleans()) else (q // s == k // s)
    if kind == 7:
        return cmp(abs(Q - K), c)
    a, b = draw(predicates(depth + 1)), draw(predicates(depth + 1))
    return {8: a & b, 9: a | b, 10: a & ~b}[kind]


@settings(max_examples=examples(150))
@given(pred=predicates(), M=st.integers(1, 20), N=st.integers(1, 20))
def test_recognition_is_exact(pred, M, N):
    term = pred.term if isinstance(pred, Sym) else patternc.ir.expr.Term.const(bool(pred))
    recognised = Pattern(recognize(term))
    general = Pattern(Predicate(term))
    try:
        expected = general.mask(M, N, 3)
    except PatternError:
        return
    try:
        got = recognised.mask(M, N, 3)
    except PatternError:
        # a recognised node may reject parameters on shapes where the predicate is merely empty;
        # trace() falls back to the predicate then (see test below)
        assert not isinstance(recognised.body, Predicate)
        return
    assert torch.equal(got, expected), f"{recognised.body} != {general.body} at M={M}, N={N}"


def test_trace_keeps_the_predicate_when_a_family_would_reject_a_shape():
    # window(w, N - 8) is exact wherever it is valid, but invalid for N < 8
    p = patternc.jit(lambda q, k, h, N: (q - k >= 8 - N) & (q - k <= 3))
    assert p.mask(4, 4).shape == (1, 4, 4)


# --------------------------------------------------------------------------- traced vs written


def at(p):
    """A predicate on query positions as jit takes it: `p(position, k, h)` -> `f(q, k, h, M, N)`."""
    return lambda q, k, h, M, N: p(q + N - M, k, h)


@st.composite
def equivalent_pairs(draw):
    """(predicate, pattern text, heads): the same pattern written both ways, the predicate on
    positions (`at`), so that both agree for every M, N."""
    w, n, b, s, r = (draw(st.integers(1, 12)), draw(st.integers(1, 6)), draw(st.integers(1, 6)),
                     draw(st.integers(1, 6)), draw(st.integers(1, 4)))
    c = draw(st.integers(0, s - 1))
    cases = [
        (at(lambda p, k, h: (p >= k) & (p - k < w)), f"causal & window({w})", 1),
        (at(lambda p, k, h: abs(p - k) < w), f"window({w})", 1),
        (at(lambda p, k, h: k < n), f"sink({n})", 1),
        (at(lambda p, k, h: p // b == k // b), f"blocked({b})", 1),
        (at(lambda p, k, h: (p - k) % s == 0), f"strided({s})", 1),
        (at(lambda p, k, h: k % s == c), f"columns({s}, phase={c})", 1),
        (at(lambda p, k, h: (p >= k) & ((p - k) % r == 0) & (p - k <= (w - 1) * r)),
         f"causal & window({w}, dilation={r})", 1),
        (at(lambda p, k, h: (p >= k) & ((p - k < w) | (k < n))), f"causal & (window({w}) | sink({n}))", 1),
        (at(lambda p, k, h: (p >= k) & ((p - k < w) | (k // b % s == h % s))),
         f"causal & (window({w}) | columns({s}, phase=h % {s}, block={b}))", 4),
        (at(lambda p, k, h: (p // b >= k // b) & (p // b - k // b < w)),
         f"causal(block={b}) & window({w}, block={b})", 1),
        (at(lambda p, k, h: (p >= k) & ~(p // b == k // b)), f"causal - blocked({b})", 1),
    ]
    return draw(st.sampled_from(cases))


@settings(max_examples=examples(120))
@given(case=equivalent_pairs(), M=st.integers(1, 40), N=st.integers(1, 40))
def test_traced_predicate_and_pattern_text_agree(case, M, N):
    fn, text, heads = case
    traced = patternc.jit(fn).pattern
    assert not any(isinstance(n, Predicate) for n in traced.primitives()), f"{text}: {traced.body}"
    same_masks(traced, patternc.compile(text), M, N, heads)


@settings(max_examples=examples(40))
@given(w=st.integers(1, 50), M=st.integers(1, 60), N=st.integers(1, 60))
def test_traced_predicate_is_its_python_meaning_for_any_lengths(w, M, N):
    fn = lambda q, k, h: (q >= k) & (q - k < w)  # noqa: E731
    q, k = torch.arange(M).view(1, M, 1), torch.arange(N).view(1, 1, N)
    assert torch.equal(patternc.jit(fn).mask(M, N), fn(q, k, 0).expand(1, M, N))


# --------------------------------------------------------------------------- the jit object


def test_decorator_forms_and_pattern_api():
    @patternc.jit
    def swa(q, k, h, M, N):
        p = q + N - M  # the query's position: queries are the last M of the N positions
        return (k <= p) & (p - k < 4)

    @patternc.jit(heads=4)
    def per_head(q, k, h):
        return k % 4 == h % 4

    assert isinstance(swa, JitPattern) and isinstance(swa.pattern, Pattern)
    assert swa.__name__ == "swa" and swa.pattern.name == "swa"
    assert torch.equal(swa.mask(8), patternc.compile("causal & window(4)").mask(8))
    assert str(swa) == str(swa.pattern) and "causal & window(4)" in str(swa)
    assert per_head.default_heads == 4 and per_head.mask(8).shape == (4, 8, 8)
    assert len(per_head.sections()) == 1
    combined = swa | patternc.compile("sink(2)")
    assert isinstance(combined, Pattern)
    assert torch.equal(combined.mask(8), patternc.compile("causal & window(4) | sink(2)").mask(8))


def test_extra_parameters_are_pattern_parameters():
    @patternc.jit
    def swa(q, k, h, w=4):
        return (q >= k) & (q - k < w)

    assert dict(swa.params)["w"].value == 4
    wider = swa.bind(w=6)
    assert isinstance(wider, JitPattern)
    assert torch.equal(wider.mask(10), patternc.compile("causal & window(6)").mask(10))
    assert torch.equal(patternc.jit(w=2)(swa.fn).mask(10), patternc.compile("causal & window(2)").mask(10))
    with pytest.raises(PatternError, match="unknown parameter"):
        patternc.jit(x=3)(swa.fn)


def test_calling_runs_attention_with_the_pattern(monkeypatch):
    import patternc.runtime

    seen = {}

    def fake_attention(q, k, v, pattern, **kw):
        seen.update(pattern=pattern, kw=kw)
        return "out"

    monkeypatch.setattr(patternc.runtime, "attention", fake_attention)
    f = patternc.jit(lambda q, k, h: k <= q)
    assert f(1, 2, 3, scale=0.5) == "out"
    assert seen == {"pattern": f.pattern, "kw": {"scale": 0.5}}


def test_predicate_primitive_is_not_pattern_text():
    with pytest.raises(PatternError, match="can't be written in pattern text"):
        patternc.compile("causal & predicate")
    p = patternc.jit(lambda q, k, h: (q * k) % 5 == 1)
    assert str(p.pattern.body) == "predicate(lambda q, k, h: q * k % 5 == 1)"


def test_predicate_patterns_lay_out():
    p = patternc.jit(lambda q, k, h: (q >= k) & ((q * k) % 3 == 0))
    layout = p.layout(64, block_m=16, block_n=16)
    assert 0 < layout.density <= 1


# --------------------------------------------------------------------------- errors in user code


def bad_and(q, k, h):
    return (q >= k) and (q - k < 4)


def bad_if(q, k, h):
    if q > k:
        return q - k < 4
    return k < 2


def bad_chain(q, k, h):
    return 0 <= q - k < 5


def bad_not(q, k, h):
    return not (q < k)


def bad_div(q, k, h):
    return q / 2 < k


def bad_float(q, k, h):
    return q < k * 0.5


def bad_torch(q, k, h):
    return torch.maximum(q, k) > 1


def bad_min(q, k, h):
    return min(q, k) > 3


def helper(q, k):
    return (q > k) or (k < 2)


def bad_nested(q, k, h):
    return helper(q, k) & (k < 9)


@pytest.mark.parametrize("fn, where, hint", [
    (bad_and, (bad_and, 1), "use & and |"),
    (bad_if, (bad_if, 1), "patternc.where"),
    (bad_chain, (bad_chain, 1), "(a < b) & (b < c)"),
    (bad_not, (bad_not, 1), "~"),
    (bad_div, (bad_div, 1), "//"),
    (bad_float, (bad_float, 1), "integer"),
    (bad_torch, (bad_torch, 1), "operators"),
    (bad_min, (bad_min, 1), "patternc.where"),
    (bad_nested, (helper, 1), "use & and |"),
])
def test_untraceable_predicates_point_at_the_line(fn, where, hint):
    with pytest.raises(PatternError) as info:
        patternc.jit(fn)
    err = info.value
    target, offset = where
    assert err.filename == __file__
    assert err.line == target.__code__.co_firstlineno + offset
    assert hint in err.hint
    text = err.format()
    assert f"test_jit.py:{err.line}:{err.column}: error:" in text and "^" in text


def test_results_that_are_not_conditions_are_errors():
    with pytest.raises(PatternError, match="returns a number"):
        patternc.jit(lambda q, k, h: q - k)
    with pytest.raises(PatternError, match="got None"):
        patternc.jit(lambda q, k, h: None)
    with pytest.raises(PatternError, match="mixes a boolean and a number"):
        patternc.jit(lambda q, k, h: (q >= k) & 1)
    with pytest.raises(PatternError, match=r"\(q, k\)"):
        patternc.jit(lambda q: q > 0)
    with pytest.raises(PatternError, match="decorates a function"):
        patternc.jit(42)
