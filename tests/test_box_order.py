"""Box order (layout/box.py): grid patterns laid out so that a tile is a box of the grid.

- the permutation against one written here with numpy reshapes (groups, then boxes, then cells);
- every tile's class against a brute-force mask (NATTEN's rule restated in numpy,
  `neighborhood_reference`) permuted by it, on fixed cases and a hypothesis property
  (`order="box"`: box order even where `auto` keeps natural order);
- `order="auto"`: box order where it reaches fewer tiles, natural order where rows of the grid
  suit the windows better; at the suite's sizes, box order visits fewer tiles, fewer of them
  partial (layouts only);
- the generated kernels (forward, and dQ/dK/dV) against the fp64 dense reference, in the
  interpreter, with q, k, v and the outputs in the caller's token order;
- TMA descriptors where a tile is one box of an undilated grid, refused elsewhere (the runtime
  reads such tiles through pointers); what grids refuse anyway: packed documents, M != N.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import examples
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from test_backward_kernels import SMALL
from test_backward_kernels import check as check_gradients
from test_kernels import check as check_forward
from test_layout import tile_truth
from test_primitive_neighborhood import neighborhood_reference

import patternc
from patternc.codegen import make_spec
from patternc.layout import FULL, PARTIAL
from patternc.runtime.attention import _device_tag, _prepare

CASES = [  # (grid, size, stride, dilation, causal), tiles (block_m, block_n)
    (((16, 16), (5, 5), (1, 1), (1, 1), (False, False)), (16, 16)),
    (((16, 16), (5, 5), (1, 1), (1, 1), (False, False)), (32, 16)),
    (((16, 32), (3, 5), (1, 1), (2, 2), (False, False)), (16, 32)),
    (((16, 16), (5, 5), (2, 3), (1, 2), (False, False)), (16, 16)),
    (((8, 16, 16), (4, 8, 8), (2, 4, 4), (1, 1, 1), (False, False, False)), (64, 32)),
    (((8, 16, 16), (4, 5, 5), (1, 1, 1), (1, 1, 1), (True, False, False)), (16, 16)),
    (((8, 8, 16), (3, 3, 5), (1, 2, 1), (2, 1, 2), (True, False, False)), (16, 32)),
]


def text_of(grid, size, stride, dilation, causal) -> str:
    flag = ", ".join("true" if c else "false" for c in causal)
    return (f"grid({', '.join(map(str, grid))})\nneighborhood(({', '.join(map(str, size))}), "
            f"stride=({', '.join(map(str, stride))}), dilation=({', '.join(map(str, dilation))}), causal=({flag}))")


def box_permutation(grid, dilation, boxes) -> np.ndarray:
    """The token at each layout position, by reshapes: coordinates split into (group, position in
    the group), positions into (box of the largest tile, box of the smallest inside it, cell),
    then the axes ordered groups, large boxes, small boxes, cells (each row-major)."""
    n = len(grid)
    small, large = boxes[0], boxes[-1]
    split = []  # per dimension: (large boxes, small boxes per large, cells, group), outer to inner
    for L, r, s, b in zip(grid, dilation, small, large):
        split += [L // r // b, b // s, s, r]
    tokens = np.arange(math.prod(grid)).reshape(split)
    axes = [4 * d + 3 for d in range(n)] + [4 * d + j for j in range(3) for d in range(n)]
    return tokens.transpose(axes).ravel()


def check_classes(text, grid, size, stride, dilation, causal, bm, bn, heads=1):
    pattern = patternc.compile(text)
    N = math.prod(grid)
    layout = pattern.layout(N, heads=heads, block_m=bm, block_n=bn, order="box")
    order = layout.permutation
    assert order is not None and order.name == "box order", f"{text!r} at {bm}x{bn}: {order}"
    want_order = box_permutation(grid, order.dilation, order.boxes)
    assert np.array_equal(order.order().numpy(), want_order), f"{text!r}: the permutation differs"
    for b in (bm, bn):  # every tile is a box of one dilation group: its tokens span as many cells
        tiles = np.stack(np.unravel_index(want_order.reshape(-1, b), grid), -1)  # [tiles, b, dims]
        groups = tiles % np.array(order.dilation)
        span = (tiles.max(1) - tiles.min(1)) // np.array(order.dilation) + 1
        assert (groups == groups[:, :1]).all() and (span.prod(-1) == b).all(), f"{text!r}: a tile of {b} is no box"
    mask = neighborhood_reference(grid, size, stride, dilation, causal)
    permuted = mask[want_order][:, want_order][None]
    anyv, allv = tile_truth(permuted, bm, bn)
    want = np.where(allv, FULL, np.where(anyv, PARTIAL, 0))
    got = layout.block_map().numpy()
    bad = np.argwhere(got != want[0][None])
    assert not len(bad), (f"{text!r} at {bm}x{bn}: tile (head, query tile, key tile) {bad[0].tolist()} is "
                          f"{got[tuple(bad[0])]}, the mask says {want[0][tuple(bad[0][1:])]}")
    natural = pattern.layout(N, heads=heads, block_m=bm, block_n=bn, order="natural")
    assert natural.permutation is None
    return layout, natural


@pytest.mark.parametrize("case,tiles", CASES, ids=[text_of(*c).replace("\n", " ") + f" {t}" for c, t in CASES])
def test_layout_classes_against_the_mask(case, tiles):
    check_classes(text_of(*case), *case, *tiles)


@st.composite
def grid_cases(draw):
    """A 2-D or 3-D grid whose dilation groups split into boxes of both tile sizes (every side a
    power of two, at least as many tokens as a tile), a neighborhood on it, tiles."""
    ndim = draw(st.sampled_from([2, 3]))
    grid = tuple(draw(st.sampled_from([4, 8, 16] if ndim == 2 else [4, 8])) for _ in range(ndim))
    size, stride, dilation, causal = [], [], [], []
    for L in grid:
        r = draw(st.sampled_from([1, 2]))
        K = draw(st.integers(1, L // r))
        size.append(K), dilation.append(r), stride.append(draw(st.integers(1, K))), causal.append(draw(st.booleans()))
    bm, bn = draw(st.sampled_from([(16, 16), (32, 16), (16, 32)]))
    assume(math.prod(grid) // math.prod(dilation) >= max(bm, bn))
    return (grid, tuple(size), tuple(stride), tuple(dilation), tuple(causal)), (bm, bn)


@settings(max_examples=examples(10))
@given(drawn=grid_cases())
def test_box_layouts_match_the_mask(drawn):
    (grid, size, stride, dilation, causal), (bm, bn) = drawn
    check_classes(text_of(grid, size, stride, dilation, causal), grid, size, stride, dilation, causal, bm, bn)


SUITE = {  # benchmarks/suite.py's rows, at their 16k tokens
    "natten2d": "grid(128, 128)\nneighborhood((13, 13))",
    "natten2d_dil": "grid(128, 128)\nneighborhood((7, 7), dilation=(2, 2))",
    "gna3d": "grid(16, 32, 32)\nneighborhood((8, 16, 16), stride=(4, 8, 8))",
}


@pytest.mark.parametrize("name", sorted(SUITE))
@pytest.mark.parametrize("tiles", [(64, 64), (128, 64)])
def test_box_order_visits_fewer_partial_tiles_at_suite_sizes(name, tiles):
    pattern = patternc.compile(SUITE[name])
    boxes, rows = (pattern.layout(16384, block_m=tiles[0], block_n=tiles[1], order=o) for o in ("auto", "natural"))
    assert boxes.permutation is not None and rows.permutation is None
    b, r = boxes.counts, rows.counts
    assert b["full"] >= r["full"] and b["partial"] < r["partial"], f"{name} {tiles}: box {b}, natural {r}"
    assert b["full"] + b["partial"] < 0.7 * (r["full"] + r["partial"]), f"{name} {tiles}: box {b}, natural {r}"
    if name == "gna3d":  # its stride groups hold whole boxes: most visited tiles are full
        assert b["full"] > b["partial"], f"{name} {tiles}: {b}"


KERNEL_CASES = [  # (text, length, H, Hkv, config)
    ("grid(8, 16)\nneighborhood((3, 5))", 128, 2, 1, {}),
    ("grid(16, 16)\nneighborhood((5, 5))", 256, 2, 2, {"block_m": 32}),
    ("grid(8, 16)\nneighborhood((3, 3), dilation=(2, 2))", 128, 2, 1, {}),
    ("grid(8, 16)\nneighborhood((4, 5), stride=(2, 3), dilation=(1, 2))", 128, 1, 1, {"block_n": 32}),
    ("grid(4, 8, 8)\nneighborhood((2, 3, 3), stride=(1, 2, 2), causal=(true, false, false))", 256, 2, 1, {}),
    ("grid(8, 16)\nneighborhood((3, 5))", 128, 2, 1, {"memory": "tma"}),  # 5-D descriptors [B, H, 8, 16, D]
    # a 3-D grid's view would be 6-D: "tma" reads pointers
    ("grid(4, 8, 8)\nneighborhood((3, 3, 5), causal=(true, false, false))", 256, 2, 2, {"memory": "tma"}),
]
CONFIG = {"block_m": 16, "block_n": 16, "num_warps": 4, "num_stages": 1, "order": "box"}


@pytest.mark.parametrize("text,N,H,Hkv,changes", KERNEL_CASES, ids=[c[0].replace("\n", " ") for c in KERNEL_CASES])
def test_kernels_in_box_order(interpret, text, N, H, Hkv, changes):
    config = dict(CONFIG, **changes)
    check_forward(text, N, N, H, Hkv, 16, torch.float32, config)
    check_gradients(text, N, N, H, Hkv, 16, torch.float32, dict(SMALL, order="box", **changes))


def test_training_through_the_public_api(interpret):
    text = "grid(4, 8, 8)\nneighborhood((3, 4, 4), dilation=(1, 2, 2), causal=(true, false, false))"
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, h, 256, 16, generator=g, dtype=torch.float64).float().requires_grad_() for h in (4, 2, 2))
    out = patternc.attention(q, k, v, text, config={"order": "box"})
    out.backward(torch.ones_like(out))
    ref_q, ref_k, ref_v = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref = patternc.reference_attention(ref_q, ref_k, ref_v, text)
    ref.backward(torch.ones_like(ref))
    assert (out.double() - ref).abs().max() < 1e-4
    for x, r in ((q, ref_q), (k, ref_k), (v, ref_v)):
        assert (x.grad.double() - r.grad).abs().max() < 1e-4


@pytest.mark.parametrize("text,tiles,tma", [
    ("grid(8, 16)\nneighborhood((3, 5))", (16, 16), True),
    ("grid(8, 16)\nneighborhood((3, 3), dilation=(2, 2))", (16, 16), False),  # a box of a dilation group
    ("grid(8, 16)\nneighborhood((3, 5))", (32, 16), False),  # a 32-token tile is two boxes of 16
    ("grid(2, 8, 8)\nneighborhood((1, 3, 5))", (16, 16), False),  # [B, H, 2, 8, 8, D]: 6-D, more than TMA takes
])
def test_tma_where_a_tile_is_a_box_of_the_grid(interpret, text, tiles, tma):
    pattern = patternc.compile(text)
    layout = pattern.layout(128, block_m=tiles[0], block_n=tiles[1], order="box")
    assert layout.permutation.tma == tma
    spec = {"heads": 1, "M": 128, "N": 128, "head_dim": 16, "block_m": tiles[0], "block_n": tiles[1], "num_warps": 4,
            "num_stages": 1, "tma": True, **layout.permutation.kernel_order}
    if not tma:
        with pytest.raises(ValueError, match="this box order reads tiles through pointers"):
            make_spec(pattern, **spec)
    config = dict(CONFIG, block_m=tiles[0], block_n=tiles[1], memory="tma")
    module, _ = _prepare(pattern, 1, 1, 128, 128, 16, config, "cpu", _device_tag(torch.device("cpu")))
    source = open(module.__file__).read()
    assert "box_token" in source and ("TensorDescriptor" in source) == tma


@pytest.mark.parametrize("text,N,tiles,boxed", [
    ("grid(128, 128)\nneighborhood((13, 13))", 16384, (64, 64), True),
    ("grid(16, 48, 48)\nneighborhood((3, 11, 11), dilation=(1, 2, 2))", 36864, (128, 64), True),
    # a window of 1 frame: boxes across frames hold pairs that never see each other, rows don't
    ("grid(16, 32, 32)\nneighborhood((1, 7, 7))", 16384, (64, 64), False),
    ("grid(2, 4096)\nneighborhood((1, 33))", 8192, (64, 64), False),
    ("grid(12, 12)\nneighborhood((5, 5))", 144, (32, 32), False),  # no box of 32 tokens divides 12 x 12
])
def test_auto_picks_box_order_where_it_visits_fewer_tiles(text, N, tiles, boxed):
    pattern = patternc.compile(text)
    auto, natural = (pattern.layout(N, block_m=tiles[0], block_n=tiles[1], order=o) for o in ("auto", "natural"))
    assert (auto.permutation is not None) == boxed, f"{text!r}: {auto.permutation}"
    visited = [x.counts["full"] + x.counts["partial"] for x in (auto, natural)]
    assert visited[0] < visited[1] if boxed else visited[0] == visited[1], f"{text!r}: auto, natural visit {visited}"


def test_documents_and_other_lengths_are_refused(interpret):
    text = "grid(8, 16)\nneighborhood((3, 5))"
    q = torch.randn(1, 1, 128, 16)
    with pytest.raises(patternc.PatternError, match="grid"):
        patternc.attention(q, q, q, text, documents=torch.tensor([0, 64, 128], dtype=torch.int32))
    with pytest.raises(patternc.PatternError, match="needs M == N"):
        patternc.attention(q[:, :, :64], q, q, text)
    layout = patternc.compile(text).layout(128, block_m=16, block_n=16, order="box")
    with pytest.raises(ValueError, match="packed documents need pointers and natural token order"):
        make_spec(patternc.compile(text), heads=1, M=128, N=128, head_dim=16, block_m=16, block_n=16, num_warps=4,
                  num_stages=1, documents=True, **layout.permutation.kernel_order)


def test_natural_order_box_order_and_flex_export():
    pattern = patternc.compile("grid(16, 16)\nneighborhood((5, 5))")
    assert pattern.layout(256, block_m=16, block_n=16, order="natural").permutation is None
    with pytest.raises(patternc.PatternError, match="box order"):
        pattern.layout(256, block_m=16, block_n=16, order="box").to_flex_block_mask()
    for text, N in (("grid(12, 12)\nneighborhood((5, 5))", 144), ("causal & window(5, dilation=2)", 128)):
        with pytest.raises(patternc.PatternError, match="box order needs"):
            patternc.compile(text).layout(N, block_m=32, block_n=32, order="box")


# ---------------------------------------------------------------------------------------- GPU

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
GPU_CASES = [  # the suite's patterns on smaller grids, and a causal video with dilation
    ("grid(64, 64)\nneighborhood((13, 13))", 4096),
    ("grid(64, 64)\nneighborhood((7, 7), dilation=(2, 2))", 4096),
    ("grid(8, 16, 16)\nneighborhood((4, 8, 8), stride=(2, 4, 4))", 2048),
    ("grid(8, 16, 32)\nneighborhood((3, 7, 7), dilation=(1, 2, 2), causal=(true, false, false))", 4096),
]
GPU_CONFIGS = [  # "tma" reads pointers in box order
    {"block_m": 128, "block_n": 64, "num_warps": 8, "num_stages": 3, "order": "box"},
    {"block_m": 64, "block_n": 64, "num_warps": 4, "num_stages": 3, "memory": "tma", "order": "box"},
]


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("text,N", GPU_CASES, ids=[c[0].replace("\n", " ") for c in GPU_CASES])
@pytest.mark.parametrize("config", GPU_CONFIGS, ids=["128x64", "64x64-tma"])
def test_gpu_box_order(text, N, config):
    check_forward(text, N, N, 4, 2, 128, torch.bfloat16, config, device="cuda")
    check_gradients(text, N, N, 4, 2, 128, torch.bfloat16, config, device="cuda")
