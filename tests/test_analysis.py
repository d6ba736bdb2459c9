"""patternc.analysis: closed forms against brute-force counts from the reference mask."""
from __future__ import annotations

import json
from fractions import Fraction

import pytest
import sympy as sp
import torch
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st

import patternc
from patternc import analysis
from patternc.analysis import N, analyze


def mean_count(pattern: patternc.Pattern, n: int, heads: int | None = None) -> Fraction:
    """Mean visible keys per query over all heads, from Pattern.mask (M = N = n)."""
    m = pattern.mask(n, n, heads)
    return Fraction(int(m.sum()), m.shape[0] * n)


def at(expr, n):
    return sp.nsimplify(expr.subs(N, n))


def rational(f: Fraction):
    return sp.Rational(f.numerator, f.denominator)


# --------------------------------------------------------------------------- known closed forms


@pytest.mark.parametrize("text, count, limit, cost", [
    ("causal", N / 2 + sp.Rational(1, 2), sp.Rational(1, 2), "O(N^2)"),
    ("full", N, 1, "O(N^2)"),
    ("causal & window(1024)", 1024 - sp.Rational(1023 * 1024, 2) / N, 1024 / N, "O(N*w)"),
    ("window(16)", 31 - sp.Rational(2 * 15 * 16, 2) / N, 31 / N, "O(N*w)"),
    ("blocked(64)", sp.Integer(64), 64 / N, "O(N*w)"),
    ("causal & (window(64) | sink(4))", 68 - sp.Rational(2278) / N, 68 / N, "O(N*w)"),
    ("causal & (window(32) | strided(32))", None, sp.Rational(1, 64), "O(N^2)"),
    ("neighborhood(7)", sp.Integer(7), 7 / N, "O(N*w)"),
    ("columns(8, phase=h % 8)", N / 8, sp.Rational(1, 8), "O(N^2)"),
])
def test_closed_forms(text, count, limit, cost):
    [a] = analyze(patternc.compile(text))
    assert a.exact and a.basis.startswith("exact for N >= ")
    if count is not None:
        assert sp.simplify(a.count - count) == 0, a.count
    assert sp.simplify(a.density_limit - limit) == 0, a.density_limit
    assert sp.simplify(a.density - a.count / N) == 0
    assert a.cost == cost
    assert not a.empty_rows


def test_closed_forms_match_the_mask_where_they_hold():
    for text in ("causal & window(24)", "window(5, 2) | sink(3)", "blocked(6) - window(2)",
                 "causal & window(6, dilation=3)", "strided(4) & window(9)", "global(0, 5..7)",
                 "neighborhood(5, causal=true)", "causal & (window(4, block=4) | columns(3, phase=1, block=4))"):
        p = patternc.compile(text)
        [a] = analyze(p)
        assert a.exact, text
        assert a.samples, text  # cross-checked against the mask already
        for n, measured in a.samples.items():
            assert at(a.count, n) == rational(mean_count(p, n)) == sp.nsimplify(measured)


def test_lone_primitives_with_their_own_closed_forms():
    [a] = analyze(patternc.compile("pow2(block=4)"))
    assert a.exact and a.cost == "O(N log N)"
    for n in (4, 16, 64, 256):
        assert sp.simplify(a.count.subs(N, n) - rational(mean_count(patternc.compile("pow2(block=4)"), n))) == 0
    [r] = analyze(patternc.compile("random(3, block=4, seed=1)"))
    assert r.exact and r.count == 12
    moba = patternc.compile("causal & topk(3, block=8)")
    [m] = analyze(moba)
    assert m.exact and "routed" in m.basis
    for n in (24, 40, 64):
        g = torch.Generator().manual_seed(n)
        q, k = torch.randn(1, n, 8, generator=g), torch.randn(1, n, 8, generator=g)
        mask = moba.mask(n, q=q, k=k)
        assert at(m.count, n) == sp.Rational(int(mask.sum()), n)


# --------------------------------------------------------------------------- the derivation, on random compositions


@st.composite
def leaves(draw):
    b = draw(st.sampled_from([None, None, None, 2, 3]))
    blk = f", block={b}" if b else ""
    kind = draw(st.integers(0, 12))
    i = st.integers
    if kind == 0:
        return "causal" + (f"(block={b})" if b else "")
    if kind == 1:
        return f"window({draw(i(1, 9))}{blk})"
    if kind == 2:
        return f"window({draw(i(0, 6))}, {draw(i(0, 6))}{blk})"
    if kind == 3:
        return f"window({draw(i(1, 5))}, dilation={draw(i(2, 4))}{blk})"
    if kind == 4:
        return f"sink({draw(i(1, 6))}{blk})"
    if kind == 5:
        return f"blocked({draw(i(1, 6))}{blk})"
    if kind == 6:
        return f"strided({draw(i(1, 5))}{blk})"
    if kind == 7:
        s = draw(i(1, 5))
        return f"columns({s}, phase={draw(i(0, s - 1))}{blk})"
    if kind == 8:
        return f"global({draw(i(0, 5))}, {draw(i(7, 9))}..{draw(i(10, 12))})"
    if kind == 9:
        return f"neighborhood({draw(i(1, 6))}{', causal=true' if draw(st.booleans()) else ''})"
    if kind == 10:  # parameters that grow with the length
        return f"window({draw(i(0, 5))}, N - {draw(i(1, 9))}{blk})"
    if kind == 11:
        return f"sink(N - {draw(i(0, 9))}{blk})"
    return "full"


@st.composite
def compositions(draw, depth=0):
    if depth >= 2 or draw(st.integers(0, 2)) == 0:
        return draw(leaves())
    op = draw(st.sampled_from(["|", "&", "-"]))
    return f"({draw(compositions(depth + 1))} {op} {draw(compositions(depth + 1))})"


@settings(max_examples=examples(40))
@given(text=compositions())
def test_derivation_matches_brute_force_counts(text):
    """The derived row sum S(N) is exact at every valid length (N >= N0, multiples of P), and an
    empty-row witness is a row the mask leaves empty."""
    p = patternc.compile(text)
    [section] = p.sections()
    try:
        found = analysis.derive(section.expr, [0])
    except analysis.NoClosedForm:
        return
    P, n0 = found.period, found.n0
    first = max(-(-n0 // P) * P, P)
    lengths = [first + j * P for j in range(4)]
    for n in lengths:
        S = sum(c * n**i for i, c in enumerate(found.coeffs))
        assert S == mean_count(p, n) * n, f"{text}: S({n})"
    if found.empty is not None:
        n, _, q = found.empty
        assert not p.mask(n)[0, q].any(), f"{text}: row {q} at N={n} is not empty"
    else:
        for n in lengths[:2]:
            assert p.mask(n).any(-1).all(), f"{text}: an empty row at N={n} was missed"


# --------------------------------------------------------------------------- empty rows, numeric results, sections


def test_empty_rows():
    [a] = analyze(patternc.compile("window(8) - window(8)"))
    assert a.exact and a.count == 0 and a.empty_rows
    [b] = analyze(patternc.compile("sink(4) & blocked(2)"))
    assert b.empty_rows
    n, head, q = b.empty_example
    assert q >= 4 and not patternc.compile("sink(4) & blocked(2)").mask(n)[head, q].any()
    [c] = analyze(patternc.compile("full - neighborhood(4, causal=true)"))  # only at N = 4: row 3
    assert c.empty_rows and c.empty_example == (4, 0, 3)
    [d] = analyze(patternc.compile("causal & window(16)"))
    assert not d.empty_rows and "mask checked" in d.empty_basis


def test_results_without_a_closed_form_say_numeric():
    p = patternc.compile("causal & (window(4, block=8) | pow2(block=8))")
    [a] = analyze(p)
    assert not a.exact and a.basis.startswith("numeric")
    assert a.cost in ("O(N log N)", "~O(N log N)")
    for n, measured in a.samples.items():
        assert Fraction(measured).limit_denominator(n) == mean_count(p, n)
    jit = patternc.jit(lambda q, k, h: (q >= k) & ((q * k) % 3 == 0))
    [b] = analyze(jit.pattern)
    assert not b.exact and b.basis.startswith("numeric") and b.cost == "O(N^2)"


def test_per_head_sections_and_json():
    text = """
pattern mixed:
    heads 0..1: causal & window(8)
    heads 2..3: columns(4, phase=h % 4)
"""
    p = patternc.compile(text)
    results = analyze(p)
    assert [r.heads for r in results] == [(0, 1), (2, 3)]
    assert sp.simplify(results[0].count - (8 - sp.Rational(28) / N)) == 0
    assert results[1].count == N / 4
    data = json.loads(json.dumps([r.to_dict() for r in results]))
    assert data[0]["keys_per_query"] == "8 - 28/N" and data[1]["exact"] is True


def test_mask_rows_is_the_mask_by_rows():
    text = "pattern p:\n    heads 0..1: causal & window(3)\n    heads 2: causal & topk(2, block=4)\n"
    p = patternc.compile(text)
    data = analysis.routed_data(p, 16, 16, 3)
    full = p.mask(16, q=data["q"], k=data["k"])
    got = torch.cat([analysis.mask_rows(p, 16, range(r, min(16, r + 5)), [0, 1, 2], data=data)
                     for r in range(0, 16, 5)], dim=1)
    assert torch.equal(got, full)
