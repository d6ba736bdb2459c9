"""`segments(w, dilation=r, offset=o)` (LongNet's dilated attention, DESIGN.md's language table):
`p // w == k // w` and `(p % w) % r == o` and `(k % w) % r == o` on query positions
`p = q + N - M`, restated in numpy, with offsets that use the head index, lengths M != N, and
LongNet's mixture of segment lengths."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import mask_of, per_head, positions, same

import patternc
from patternc.errors import PatternError


def segments(M, N, H, w, r=1, offset=lambda h: 0):
    p, k = positions(M, N)
    return per_head(lambda h: (p // w == k // w) & ((p % w) % r == offset(h)) & ((k % w) % r == offset(h)), H)


@st.composite
def case(draw):
    w = draw(st.integers(1, 40))
    r = draw(st.integers(1, 5))
    kind = draw(st.sampled_from(["plain", "const", "head"]))
    if r == 1 or kind == "plain":
        text = f"segments({w})" if r == 1 else f"segments({w}, dilation={r})"
        return text, lambda M, N, H: segments(M, N, H, w, r)
    if kind == "const":
        o = draw(st.integers(0, r - 1))
        return f"segments({w}, dilation={r}, offset={o})", lambda M, N, H: segments(M, N, H, w, r, lambda h: o)
    return (f"segments({w}, dilation={r}, offset=h % {r})",
            lambda M, N, H: segments(M, N, H, w, r, lambda h: h % r))


def test_picture():
    m = mask_of("segments(4, dilation=2, offset=1)", 8)[0]
    assert ["".join(".#"[int(x)] for x in row) for row in m] == [
        "........", ".#.#....", "........", ".#.#....", "........", ".....#.#", "........", ".....#.#"]


@settings(max_examples=40)
@given(M=st.integers(1, 96), N=st.integers(1, 96), H=st.integers(1, 6))
def test_longnet_mixture(M, N, H):
    text = ("causal & (segments(8) | segments(16, dilation=2, offset=h % 2) "
            "| segments(32, dilation=4, offset=h % 4))")
    p, k = positions(M, N)
    want = (k <= p) & (segments(M, N, H, 8) | segments(M, N, H, 16, 2, lambda h: h % 2)
                               | segments(M, N, H, 32, 4, lambda h: h % 4))
    same(mask_of(text, M, N, H), want, text)


@pytest.mark.parametrize("text, message", [
    ("segments(8, dilation=2, offset=2)", "offset must be in 0..1, got 2"),
    ("segments(8, offset=1)", "offset must be in 0..0, got 1"),
    ("segments(0)", "length must be >= 1"),
    ("segments(8, dilation=0)", "dilation must be >= 1"),
])
def test_bad_parameters_are_located_errors(text, message):
    with pytest.raises(PatternError, match=message) as e:
        patternc.compile(text)
    assert e.value.span is not None


def test_offset_checked_on_every_head():
    p = patternc.compile("segments(8, dilation=2, offset=h)")
    p.mask(16, heads=2)
    with pytest.raises(PatternError, match="offset must be in 0..1, got 2"):
        p.mask(16, heads=3)


def test_residue_order_where_the_dilation_divides_the_length():
    dilated = patternc.compile("segments(256, dilation=4, offset=h % 4)")
    layout = dilated.layout(4096, heads=4, block_m=64, block_n=64)
    assert layout.permutation is not None and layout.permutation.modulus == 4
    natural = dilated.layout(4096, heads=4, block_m=64, block_n=64, order="natural")
    assert layout.density < natural.density / 3  # one class of four takes part
    assert patternc.compile("segments(250, dilation=4)").layout(4000, block_m=50, block_n=50).permutation is None


def test_analysis_is_exact():
    from patternc.analysis import analyze

    [a] = analyze(patternc.compile("segments(64, dilation=4, offset=1)"))
    assert a.exact, a.basis
    assert str(a.count) == "4" or float(a.count.subs("N", 64 * 100)) == 4.0  # 16 of 64 tokens see 16 keys
