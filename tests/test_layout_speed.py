"""The fast paths of the layout builder give exactly the tiles of the brute-force mask.

Each path is checked where it differs from the plain interval classification:

- candidate keys as merged range sets (`_merge`, `_intersect`) against Python sets;
- neighborhood tiles on any token range (boxes of the grid, windows searched per dimension, no
  L x L table) against rectangle counts of `Pattern.mask`;
- compositions of distance-only rules (`window`, `strided`, `causal`) classified from one table
  over d, in token order and on the strided token sets of residue order;
- `settle` (splitting, element-wise evaluation of small pieces, stopping at the first proof that
  a tile is partial) on compositions the interval rules leave undecided;
- heads whose rule reads h built in one batch, and runs of key tiles decided by their first tile;
- the transposed tables, built on first read, against a stable re-sort of the tiles;
- memory: layouts that used to build an L x L table or an N-wide candidate list stay small.

Performance itself is measured by benchmarks/layout_speed.py; tests never assert on wall time.
"""
from __future__ import annotations

import numpy as np
import pytest
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st
from test_layout import check_block_map, check_csr

import patternc
from patternc.ir.expr import Interval
from patternc.layout.build import _intersect, _merge, classify
from patternc.layout.residue import ResidueOrder
from patternc.primitives import Context

# --------------------------------------------------------------------------- range sets


def as_set(x, y) -> set:
    return {int(v) for a, b in zip(x, y) for v in range(a, b)}


ranges = st.lists(st.tuples(st.integers(0, 60), st.integers(0, 60)), max_size=12)


@settings(max_examples=examples(200))
@given(a=ranges, b=ranges)
def test_range_sets_merge_and_intersect(a, b):
    def merged(rs):
        x = np.array([lo for lo, _ in rs], np.int64)
        y = np.array([hi for _, hi in rs], np.int64)
        return _merge(x, y)

    ma, mb = merged(a), merged(b)
    for x, y in (ma, mb):
        assert (y > x).all() and (x[1:] > y[:-1]).all(), "sorted, disjoint, not touching"
    assert as_set(*ma) == {v for lo, hi in a for v in range(lo, hi)}
    got = _intersect(ma, mb)
    assert as_set(*got) == as_set(*ma) & as_set(*mb)
    assert (got[1] > got[0]).all() and (got[0][1:] > got[1][:-1]).all()


# --------------------------------------------------------------------------- rectangles


def rectangle_counts(mask: np.ndarray, q_lo, q_hi, k_lo, k_hi):
    """(visible count, area) of mask[q_lo..q_hi, k_lo..k_hi] (inclusive), by prefix sums."""
    sums = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.int64)
    sums[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
    count = sums[q_hi + 1, k_hi + 1] - sums[q_lo, k_hi + 1] - sums[q_hi + 1, k_lo] + sums[q_lo, k_lo]
    return count, (q_hi - q_lo + 1) * (k_hi - k_lo + 1)


def random_rectangles(data, M, N, n=300):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    q = np.sort(rng.integers(0, M, (n, 2)), axis=1)
    k = np.sort(rng.integers(0, N, (n, 2)), axis=1)
    return q[:, 0], q[:, 1], k[:, 0], k[:, 1]


@st.composite
def neighborhood_text(draw):
    ndim = draw(st.integers(1, 3))
    grid = [draw(st.integers(1, 60 if ndim == 1 else 9)) for _ in range(ndim)]
    K = [draw(st.integers(1, L)) for L in grid]
    r = [draw(st.integers(1, L // k)) for L, k in zip(grid, K)]
    s = [draw(st.integers(1, k)) for k in K]
    c = [draw(st.booleans()) for _ in grid]

    def fmt(v):
        return "(" + ", ".join(str(x).lower() for x in v) + ("," if len(v) == 1 else "") + ")"

    return (f"grid({', '.join(map(str, grid))})\n"
            f"neighborhood({fmt(K)}, stride={fmt(s)}, dilation={fmt(r)}, causal={fmt(c)})")


@settings(max_examples=examples(120))
@given(text=neighborhood_text(), data=st.data())
def test_neighborhood_tiles_on_any_token_range(text, data):
    """Any query range x key range of flattened tokens, boxes of the grid or not."""
    pattern = patternc.compile(text)
    N = pattern.fixed_length
    mask = pattern.mask(N).numpy()[0]
    q_lo, q_hi, k_lo, k_hi = random_rectangles(data, N, N)
    count, area = rectangle_counts(mask, q_lo, q_hi, k_lo, k_hi)
    ctx = Context(N, N, 0, pattern.grid_shape(N, N), {})
    truth, undecided = classify(pattern.expr, ctx, Interval(q_lo, q_hi), Interval(k_lo, k_hi), 16, 16)
    assert not undecided.any(), f"{text}: neighborhood tiles are exact"
    assert np.array_equal(truth.can_true, count > 0), text
    assert np.array_equal(truth.can_false, count < area), text


def distance_expr(draw, depth=2):
    if depth == 0 or draw(st.integers(0, 2)) == 0:
        return draw(st.sampled_from([
            "causal", f"window({draw(st.integers(1, 40))})",
            f"window({draw(st.integers(0, 30))}, {draw(st.integers(0, 30))})",
            f"window({draw(st.integers(1, 12))}, dilation={draw(st.integers(2, 5))})",
            f"strided({draw(st.integers(1, 20))})"]))
    op = draw(st.sampled_from(["|", "&", "-"]))
    return f"({distance_expr(draw, depth - 1)}) {op} ({distance_expr(draw, depth - 1)})"


@settings(max_examples=examples(150))
@given(data=st.data())
def test_distance_compositions_are_exact(data):
    """Compositions of rules of d alone: one table over d, exact on every rectangle (ragged
    lengths shift positions) and, in residue order, on strided token sets."""
    text = distance_expr(data.draw, 3)
    pattern = patternc.compile(f"({text}) | window(0, 0)")  # a composition, never one primitive
    M, N = data.draw(st.integers(1, 120)), data.draw(st.integers(1, 120))
    mask = pattern.mask(M, N).numpy()[0]
    ctx = Context(M, N, 0, None, {})
    q_lo, q_hi, k_lo, k_hi = random_rectangles(data, M, N)
    truth, undecided = classify(pattern.expr, ctx, Interval(q_lo, q_hi), Interval(k_lo, k_hi), 16, 16)
    count, area = rectangle_counts(mask, q_lo, q_hi, k_lo, k_hi)
    assert not undecided.any(), text
    assert np.array_equal(truth.can_true, count > 0), text
    assert np.array_equal(truth.can_false, count < area), text
    # residue order: tokens c + r*i of one class per range
    r = data.draw(st.integers(2, 4))
    L = data.draw(st.integers(1, 30))
    order = ResidueOrder(r, L)
    square = pattern.mask(r * L).numpy()[0]
    ctx = Context(r * L, r * L, 0, None, {})
    perm = order.tokens(np.arange(r * L))
    q_lo, q_hi, k_lo, k_hi = random_rectangles(data, r * L, r * L)
    same_q, same_k = q_lo // L == q_hi // L, k_lo // L == k_hi // L  # ranges inside one class
    q_lo, q_hi, k_lo, k_hi = (x[same_q & same_k] for x in (q_lo, q_hi, k_lo, k_hi))
    truth, undecided = classify(pattern.expr, ctx, order.token_interval(Interval(q_lo, q_hi)),
                                order.token_interval(Interval(k_lo, k_hi)), 16, 16)
    count, area = rectangle_counts(square[perm][:, perm], q_lo, q_hi, k_lo, k_hi)
    assert not undecided.any(), f"{text} residue {r}"
    assert np.array_equal(truth.can_true, count > 0), f"{text} residue {r}"
    assert np.array_equal(truth.can_false, count < area), f"{text} residue {r}"


# --------------------------------------------------------------------------- whole layouts


HARD = [  # compositions the interval rules leave undecided, so settle decides them
    "(strided(3) | columns(5)) & (strided(7) | columns(11))",
    "causal & pow2",
    "segments(20, dilation=3) | window(4)",
    "(window(9) | columns(4)) - (strided(5) | sink(3))",
    "causal & (window(30) | columns(7, phase=h % 7))",
    "window(6, dilation=3) & (columns(3) | global(40..47))",
    "(window(20) | strided(8)) & (window(50) | strided(12))",
    "blocked(24) & (strided(5) | sink(9)) | causal & window(3)",
]


@pytest.mark.parametrize("text", HARD)
@pytest.mark.parametrize("M,N,tiles", [(200, 200, (16, 16)), (173, 240, (32, 16)), (96, 96, (64, 64))])
def test_hard_compositions_match_the_mask(text, M, N, tiles):
    pattern = patternc.compile(text)
    mask = pattern.mask(M, N, 2).numpy()
    for order in ("auto", "natural"):
        layout = pattern.layout(M, N, heads=2, block_m=tiles[0], block_n=tiles[1], order=order)
        got = check_block_map(layout, mask, f"{text!r} M={M} N={N} tiles {tiles} order={order}")
        check_csr(layout, got, text)


@pytest.mark.parametrize("text", [
    "causal & (window(5 + h) | strided(3))",  # a table over d per head: not shared by the batch
    "window(3 + h % 2, 2) | columns(5, phase=h % 5, block=4)",
    "causal & (window(40) | columns(4, phase=h % 4, block=8))",  # runs decided by their first tile
    "(columns(8, phase=h % 8) | sink(2 + h)) - window(h, 0)",
    "columns(3 + h, phase=h) & causal",  # a period per head
])
@pytest.mark.parametrize("M,N,tiles", [(200, 200, (32, 32)), (256, 256, (16, 64)), (150, 230, (32, 16))])
def test_heads_in_one_batch_match_the_mask(text, M, N, tiles):
    """Heads whose rule reads h are built in one batch, runs of key tiles alike by their first tile."""
    pattern = patternc.compile(text)
    mask = pattern.mask(M, N, 5).numpy()
    layout = pattern.layout(M, N, heads=5, block_m=tiles[0], block_n=tiles[1])
    got = check_block_map(layout, mask, f"{text!r} M={M} N={N} tiles {tiles}")
    check_csr(layout, got, text)


@settings(max_examples=examples(30))
@given(text=neighborhood_text(), bm=st.integers(4, 40), bn=st.integers(4, 40))
def test_neighborhood_layouts_on_tiles_that_are_not_boxes(text, bm, bn):
    pattern = patternc.compile(text)
    N = pattern.fixed_length
    layout = pattern.layout(N, block_m=bm, block_n=bn)
    assert layout.refined_tiles == 0, "neighborhood tiles are exact on any token range"
    check_block_map(layout, pattern.mask(N).numpy(), f"{text!r} tiles {bm}x{bn}")


def test_token_ranges_that_are_boxes_are_found_from_their_ends():
    """`_is_box` against its definition: the range's tokens fill the box of their coordinates."""
    from patternc.primitives.neighborhood import _digits, _is_box

    grid = (3, 4, 5)
    lo, hi = (x.ravel() for x in np.meshgrid(np.arange(60), np.arange(60), indexing="ij"))
    coords = np.stack(np.unravel_index(np.arange(60), grid), 1)
    want = [a <= b and b - a + 1 == np.prod(np.ptp(coords[a:b + 1], 0) + 1) for a, b in zip(lo, hi)]
    np.testing.assert_array_equal(_is_box(lo, hi, _digits(grid, lo), _digits(grid, hi)), want)


def test_transposed_tables_are_built_on_first_read():
    layout = patternc.compile("causal & (window(100) | sink(4))").layout(1000, heads=2, block_m=64, block_n=32)
    assert layout.__dict__.get("q_indices") is None, "not built with the forward tables"
    got = layout.block_map().numpy()
    check_csr(layout, got, "lazy transposes")
    assert layout.__dict__.get("q_indices") is not None


@pytest.mark.parametrize("text,S,tiles,limit_mib", [
    ("grid(32768)\nneighborhood(1025)", 32768, (64, 64), 64),  # was an L x L prefix-sum table: 8 GiB
    ("grid(16, 48, 48)\nneighborhood((3, 11, 11), dilation=(1, 2, 2))", 36864, (128, 128), 64),
    ("causal & (window(1024) | sink(4))", 1 << 20, (128, 128), 96),  # a sink: transposes not built
])
def test_build_memory_stays_small(text, S, tiles, limit_mib):
    import tracemalloc

    pattern = patternc.compile(text)
    tracemalloc.start()
    layout = pattern.layout(S, block_m=tiles[0], block_n=tiles[1])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert layout.counts["partial"] + layout.counts["full"] > 0
    assert peak < limit_mib << 20, f"{text!r}: peak traced memory {peak / 2**20:.1f} MiB"


def test_too_many_candidate_tiles_is_a_clear_error(monkeypatch):
    """Layouts whose candidate tiles would be classified by splitting past the limit are refused
    with the numbers, not built until memory runs out; rules of d alone never split."""
    from patternc.layout import build

    monkeypatch.setattr(build, "MAX_CANDIDATES", 1000)
    with pytest.raises(patternc.PatternError, match="classifying 8,192 candidate tiles"):
        patternc.compile("columns(5, phase=h % 5)").layout(1024, heads=2, block_m=16, block_n=16)
    check_block_map(patternc.compile("causal & strided(3)").layout(1024, block_m=16, block_n=16, order="natural"),
                    patternc.compile("causal & strided(3)").mask(1024).numpy(), "d alone")
