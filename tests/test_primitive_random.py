"""`random(r, block=b, seed=s)`: BigBird's random key blocks, checked against its contract:
`min(r, key blocks)` whole key blocks per block of query positions, deterministic in the seed,
different across seeds and heads, and composing with `| & -` like any mask."""
from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
import torch
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import assert_close, cdiv, leaf_case, mask_of, reference_grads, same
from test_kernels import check
from test_training import inputs

import patternc

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
    nK = cdiv(N, b)
    pos = np.arange(M) + N - M  # query positions; blocks are blocks of positions
    for h in range(H):
        for Q in np.unique(pos[pos >= 0] // b):
            rows = m[h, pos // b == Q]
            assert (rows == rows[0]).all(), "every query of a block sees the same keys"
            blocks = [rows[0, K * b:(K + 1) * b] for K in range(nK)]
            assert all(x.all() or not x.any() for x in blocks), "key blocks are taken whole"
            assert sum(bool(x.all()) for x in blocks) == min(count, nK)
    same(mask_of(text, M, N, H), m, "deterministic")


def test_random_is_keyed_by_positions():
    # the last M queries over N keys see what the last M rows of N x N attention see (chunked
    # prefill), whether or not the block divides N - M; positions before 0 (M > N) see nothing
    for M, N, b in [(16, 64, 8), (13, 64, 8), (1, 50, 4)]:
        text = f"random(2, block={b}, seed=3)"
        same(mask_of(text, M, N, 2), mask_of(text, N, N, 2)[:, N - M:], text)
    assert not mask_of("random(2, block=4)", 20, 8)[0, :12].any()


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


# --------------------------------------------------------------------------- kernels

BIGBIRD = "window(3, block=16) | global(0..1, block=16) | random(3, block=16)"  # BigBird, on small blocks
TILES = {"block_m": 16, "block_n": 16, "num_warps": 4, "num_stages": 1}


@pytest.mark.parametrize("text, M, N, H, Hkv, config", [
    (BIGBIRD, 128, 128, 4, 2, TILES),
    (BIGBIRD, 72, 104, 2, 2, dict(TILES, block_m=32, iteration="table")),  # M != N, ragged tiles
    ("random(2, block=8, seed=3)", 80, 96, 3, 1, dict(TILES, memory="tma")),  # blocks inside tiles
    ("random(5, seed=2)", 40, 40, 2, 1, TILES),  # on tokens
    ("causal & random(2, block=16) - sink(3)", 64, 64, 2, 2, TILES),
    ("heads 0: window(2)\nheads 1..2: random(1, block=16, seed=7) | random(2, block=32, seed=1)", 96, 96, 3, 3,
     TILES),  # two tables, per-head sections
])
def test_kernel_reads_the_tables(interpret, text, M, N, H, Hkv, config):
    check(text, M, N, H, Hkv, 16, torch.float32, config, seed=M + N)


@pytest.mark.parametrize("text, M, N", [(BIGBIRD, 96, 96), ("causal & random(2, block=16, seed=5)", 48, 80)])
def test_generated_backward_reads_the_tables(interpret, text, M, N):
    pattern = patternc.compile(text)
    q, k, v = inputs(1, 2, 1, M, N, 16, seed=M)
    out = patternc.attention(q, k, v, pattern, config=TILES)
    dout = torch.randn_like(out)
    out.backward(dout)
    for got, want, name in zip((q.grad, k.grad, v.grad), reference_grads(q, k, v, pattern, dout), "qkv"):
        assert_close(got, want, 1e-4, f"{text!r} d{name}")


def test_kernel_tables_are_the_masks_tables():
    """The bits a kernel receives are the rule's table: unpacked, they give the mask again."""
    from patternc.primitives.tables import kernel_tables

    pattern = patternc.compile("random(3, block=4, seed=9) | causal & random(40, seed=1)")
    M = N = 70
    tables = kernel_tables(pattern, M, N, 2)
    assert [t.dtype for t in tables] == [torch.int32] * 2
    assert [tuple(t.shape) for t in tables] == [(2, cdiv(N, 4), 1), (2, N, 3)]
    bits = [((t[..., None] >> torch.arange(32)) & 1).flatten(-2).bool() for t in tables]
    blocks = bits[0][:, :, :cdiv(N, 4)].repeat_interleave(4, 1).repeat_interleave(4, 2)[:, :M, :N]
    tokens = bits[1][:, :, :N] & torch.ones(M, N, dtype=torch.bool).tril()
    assert torch.equal(blocks | tokens, pattern.mask(M, N, heads=2))
    assert not bits[0][:, :, cdiv(N, 4):].any() and not bits[1][:, :, N:].any()  # padding bits are 0


# --------------------------------------------------------------------------- analysis: counts in expectation


def test_analysis_of_bigbird_is_linear():
    """BigBird's keys per query level off: 5 window blocks, 2 global key blocks and 3 random ones
    (640 keys), plus the 128 global query rows that see all N keys (128 per query on average)."""
    from patternc.analysis import N, analyze

    [a] = analyze(patternc.compile("window(3, block=64) | global(0..1, block=64) | random(3, block=64)"))
    assert a.cost == "O(N*w)" and a.keys_limit == 768 and a.density_limit == 768 / N
    assert sp.simplify(a.count - (768 - sp.Rational(192512) / N + sp.Rational(15728640) / N**2)) == 0
    assert not a.exact and a.basis.startswith("expected over the random draws for N >= 448, N a multiple of 64")
    assert a.samples and all(abs(v - float(a.count.subs(N, n))) < 2 * 192 for n, v in a.samples.items())


@pytest.mark.parametrize("text, n, tolerance", [
    ("window(3, block=16) | global(0..1, block=16) | random(3, block=16)", 256, 0.01),
    ("causal & random(2, block=8) - random(1, block=8)", 128, 0.02),  # one family's draws are nested
    ("(window(5) & random(1)) | random(2, block=4, seed=3) - causal", 96, 0.03),
])
def test_expected_counts_are_the_mean_over_draws(text, n, tolerance):
    """Heads draw independently: the mean over many heads' masks approaches the expectation."""
    from patternc.analysis import N, derive

    pattern = patternc.compile(text)
    found = derive(pattern.sections(1)[0].expr, [0])
    assert found.expected and n >= found.n0 and n % found.period == 0
    measured = pattern.mask(n, heads=256).sum().item() / (256 * n)
    expected = float(found.count.subs(N, n))
    assert abs(measured - expected) <= tolerance * expected, (text, measured, expected)


def test_expected_count_by_hand():
    from patternc.analysis import N, analyze

    [a] = analyze(patternc.compile("causal & random(2, block=16)"))  # each key with probability 32 / N
    assert sp.simplify(a.count - 16 * (N + 1) / N) == 0 and a.cost == "O(N*w)"
    [b] = analyze(patternc.compile("random(3, block=8) - random(1, block=8)"))  # nested: 2 blocks left
    assert b.count == 16 and b.samples and set(b.samples.values()) == {16.0}
