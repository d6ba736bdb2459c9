"""`neighborhood(size, stride, dilation, causal)`: NATTEN/GNA neighborhood attention over the
grid, against NATTEN's own window formulas (natten_cpu_commons.h), restated in Python."""
from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import mask_of, same

# the rule holds only on its grid (M == N == prod(grid)), so the generic any-length tests can't
# use it: test_neighborhood_matches_natten below draws grids and parameters together
case = None


def natten_start(i, L, K, r):
    """NATTEN's window start (natten_cpu_commons.h get_window_start), for odd K."""
    ns = K // 2
    if r <= 1:
        return max(i - ns, 0) + (i + ns >= L) * (L - i - ns - 1)
    ni = i - ns * r
    if ni < 0:
        return i % r
    if i + ns * r >= L:
        imodd = i % r
        a = (L // r) * r
        b = L - a
        if imodd < b:
            return L - b + imodd - 2 * ns * r
        return a + imodd - K * r
    return ni


def window_keys(L, K, s, r, causal, x):
    """Coordinates of the keys coordinate x sees along one dimension."""
    g, pos = x % r, x // r
    Lg = len(range(g, L, r))  # positions of x's dilation group
    if s > 1:  # strided: the group of s positions shares its leader's window
        first = pos // s * s
        pos = first if causal else min(first + s // 2, Lg - 1)
    lead = g + r * pos
    if causal:
        return {lead - j * r for j in range(K) if lead - j * r >= 0}
    if K % 2:
        start = natten_start(lead, L, K, r)
        return {start + j * r for j in range(K)}
    start = min(max(pos - K // 2, 0), Lg - K)  # even K: the documented clamp
    return {g + r * (start + j) for j in range(K)}


def neighborhood_reference(grid, K, s, r, causal):
    allowed = []
    for i, L in enumerate(grid):
        a = np.zeros((L, L), bool)
        for x in range(L):
            a[x, sorted(window_keys(L, K[i], s[i], r[i], causal, x))] = True
        allowed.append(a)
    coords = np.unravel_index(np.arange(math.prod(grid)), grid)
    out = np.ones((len(coords[0]), len(coords[0])), bool)
    for i, a in enumerate(allowed):
        out &= a[coords[i][:, None], coords[i][None, :]]
    return out


@st.composite
def neighborhood_case(draw, ndim, max_tokens):
    grid = []
    for i in range(ndim):
        budget = max_tokens // math.prod(grid) if grid else max_tokens
        rest = 2 ** (ndim - i - 1)  # leave room for the later dimensions
        grid.append(draw(st.integers(1, max(1, min(budget // rest, 40)))))
    K, s, r = [], [], []
    for L in grid:
        K.append(draw(st.integers(1, L)))
        r.append(draw(st.integers(1, L // K[-1])))
        s.append(draw(st.integers(1, K[-1])))
    causal = draw(st.booleans())
    return tuple(grid), tuple(K), tuple(s), tuple(r), causal


def neighborhood_text(grid, K, s, r, causal, scalar_ok=True):
    def fmt(v):
        if scalar_ok and len(set(v)) == 1:
            return str(v[0])
        return "(" + ", ".join(map(str, v)) + ("," if len(v) == 1 else "") + ")"
    args = [fmt(K)]
    if set(s) != {1}:
        args.append(f"stride={fmt(s)}")
    if set(r) != {1}:
        args.append(f"dilation={fmt(r)}")
    if causal:
        args.append("causal=true")
    expr = f"neighborhood({', '.join(args)})"
    if len(grid) == 1:
        return expr
    return f"pattern nb:\n    grid({', '.join(map(str, grid))})\n    {expr}\n"


@pytest.mark.parametrize("ndim,max_tokens", [(1, 150), (2, 200), (3, 200)])
@settings(max_examples=examples(200))
@given(data=st.data())
def test_neighborhood_matches_natten(ndim, max_tokens, data):
    grid, K, s, r, causal = data.draw(neighborhood_case(ndim, max_tokens))
    text = neighborhood_text(grid, K, s, r, causal, scalar_ok=data.draw(st.booleans()))
    P = math.prod(grid)
    got = mask_of(text, P, P)[0]
    same(got, neighborhood_reference(grid, K, s, r, causal), text)
    if not causal:
        assert (got.sum(1) == math.prod(K)).all(), "exactly prod(size) keys per query"


def test_neighborhood_examples_by_hand():
    m = mask_of("neighborhood(3)", 6)[0].astype(int)
    assert m.tolist() == [[1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0], [0, 1, 1, 1, 0, 0],
                          [0, 0, 1, 1, 1, 0], [0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1]]
    m = mask_of("neighborhood(3, dilation=2)", 6)[0].astype(int)
    assert m.tolist() == [[1, 0, 1, 0, 1, 0], [0, 1, 0, 1, 0, 1]] * 3
    m = mask_of("neighborhood(3, causal=true)", 5)[0].astype(int)
    assert m.tolist() == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 1, 1, 1]]
    # stride 2: positions {0,1} lead at 1, {2,3} at 3, {4,5} at 5, {6} clipped to 6
    m = mask_of("neighborhood(3, stride=2)", 7)[0].astype(int)
    rows = [[1, 1, 1, 0, 0, 0, 0]] * 2 + [[0, 0, 1, 1, 1, 0, 0]] * 2 + [[0, 0, 0, 0, 1, 1, 1]] * 3
    assert m.tolist() == rows
    # 2-D: the corner token sees the 3x3 block in the corner
    m = mask_of("pattern g:\n    grid(4, 5)\n    neighborhood((3, 3))\n", 20)[0]
    assert sorted(np.flatnonzero(m[0]).tolist()) == [0, 1, 2, 5, 6, 7, 10, 11, 12]
    assert (m.sum(1) == 9).all()


def test_neighborhood_scalar_broadcasts_over_the_grid():
    a = mask_of("pattern g:\n    grid(6, 7)\n    neighborhood(3, dilation=2)\n", 42)
    b = mask_of("pattern g:\n    grid(6, 7)\n    neighborhood((3, 3), dilation=(2, 2))\n", 42)
    assert a.any() and np.array_equal(a, b)
