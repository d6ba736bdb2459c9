"""`random(r, block=b, seed=s)`: BigBird's random key blocks, checked against its contract:
`min(r, key blocks)` whole key blocks per query block, deterministic in the seed, different
across seeds and heads, and composing with `| & -` like any mask."""
from __future__ import annotations

import numpy as np
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import cdiv, leaf_case, mask_of, same

MAXLEN = 96

# the language leaves the draw itself unspecified, so there is no mask to restate: the tests
# below check the contract instead
case = None


@settings(max_examples=examples(100))
@given(M=st.integers(1, MAXLEN), N=st.integers(1, MAXLEN), b=st.integers(1, 9), count=st.integers(1, 6),
       seed=st.integers(0, 2 ** 31), H=st.integers(1, 3))
def test_random_picks_count_distinct_key_blocks(M, N, b, count, seed, H):
    text = f"random({count}, block={b}, seed={seed})"
    m = mask_of(text, M, N, H)
    nQ, nK = cdiv(M, b), cdiv(N, b)
    for h in range(H):
        for Q in range(nQ):
            rows = m[h, Q * b:(Q + 1) * b]
            assert (rows == rows[0]).all(), "every query of a block sees the same keys"
            blocks = [rows[0, K * b:(K + 1) * b] for K in range(nK)]
            assert all(x.all() or not x.any() for x in blocks), "key blocks are taken whole"
            assert sum(bool(x.all()) for x in blocks) == min(count, nK)
    same(mask_of(text, M, N, H), m, "deterministic")


def test_random_differs_across_seeds_and_heads():
    a = mask_of("random(3, block=4, seed=1)", 64, 64, 2)
    b = mask_of("random(3, block=4, seed=2)", 64, 64, 2)
    assert a.any() and b.any()
    assert not np.array_equal(a[0], b[0]), "seeds give different blocks"
    assert not np.array_equal(a[0], a[1]), "heads give different blocks"
    assert np.array_equal(a, mask_of("random(3, block=4, seed=1)", 64, 64, 2))
    # the default seed is 0 and is deterministic too
    assert np.array_equal(mask_of("random(2, block=8)", 64), mask_of("random(2, block=8, seed=0)", 64))


@settings(max_examples=examples(100))
@given(M=st.integers(4, 64), count=st.integers(1, 3), seed=st.integers(0, 99), b=st.integers(1, 8),
       other=leaf_case())
def test_combinators_with_random_blocks(M, count, seed, b, other):
    r = f"random({count}, block={b}, seed={seed})"
    text, _ = other
    R, O = mask_of(r, M, M, 2), mask_of(text, M, M, 2)
    same(mask_of(f"{r} | {text}", M, M, 2), R | O, "|")
    same(mask_of(f"{r} & ({text})", M, M, 2), R & O, "&")
    same(mask_of(f"{r} - ({text})", M, M, 2), R & ~O, "-")
