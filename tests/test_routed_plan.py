"""Routed patterns laid out from runs of key tiles, against plain restatements from brute-force
masks: the routed plan (`runtime.routed.routed_plan`) against every tile classified in the two
static variants (the routed block chosen / not chosen) and its tables read off those classes row
by row; a routed layout on q and k (`layout.build.routed_runs`: the variants' runs cut by the
choice's) against the tiles of the routed mask."""
from __future__ import annotations

import numpy as np
import torch
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st

import patternc
from patternc.layout.build import routed_runs
from patternc.layout.routed import routed_node, static_variants
from patternc.runtime.routed import routed_plan

TEXTS = (
    "causal & topk(2, block={b})",
    "causal & topk(3, block={b}, query=token)",
    "causal & (window(40) | topk(threshold=0.9, block={b}, shared=group))",
    "topk(2, block={b})",
    "window(50) | topk(2, block={b}, threshold=0.5)",
    "causal & (window(70) - topk(2, block={b}))",
    "causal & (columns(3, phase=h % 3, block=16) | topk(2, block={b}))",
    "causal & (window(20) | sink(3) | random(2, block=16) | topk(2, block={b}))",
    "causal & (strided(24) | topk(1, block={b}))",
    "(causal & topk(3, block={b})) | sink(5)",
)


def tile_classes(pattern, M, N, heads, bm, bn, **data):
    """int8 [H, Mt, Nt]: 0 no visible pair, 2 all visible, 1 some (from `Pattern.mask`)."""
    mask = pattern.mask(M, N, heads=heads, **data).numpy()
    Mt, Nt = -(-M // bm), -(-N // bn)
    padded = np.zeros((heads, Mt * bm, Nt * bn), np.int64)
    padded[:, :M, :N] = mask
    seen = padded.reshape(heads, Mt, bm, Nt, bn).sum((2, 4))
    area = np.minimum(bm, M - np.arange(Mt) * bm)[:, None] * np.minimum(bn, N - np.arange(Nt) * bn)[None, :]
    return np.where(seen == 0, 0, np.where(seen == area, 2, 1)).astype(np.int8)


def restated(text, M, N, heads, bm, bn):
    """The plan's tables per head, tile by tile: (static_ptr, static_kt, static_cls, block_ptr,
    cand_kt, cand_cls), the width and the full / partial tiles per row with every block chosen."""
    pattern = patternc.compile(text)
    chosen, nothing, count, block = static_variants(pattern)
    ca, cb = (tile_classes(p, M, N, heads, bm, bn) for p in (chosen, nothing))
    cls = ca | (cb << 2)
    Mt, Nt, tpb = cls.shape[1], cls.shape[2], block // bn
    n_k = -(-N // block)
    heads_out, width = [], 0
    for h in range(heads):
        cand, static, block_ptr = [[]], [[]], np.zeros((Mt, n_k + 1), np.int64)
        for r in range(Mt):
            before = sum(len(c) for c in cand)
            for j in range(n_k + 1):
                block_ptr[r, j] = before + int((cls[h, r, :min(j * tpb, Nt)] != 0).sum())
            cand.append(list(np.nonzero(cls[h, r])[0]))
            static.append(list(np.nonzero(cb[h, r])[0]))
            width = max(width, len(cand[-1]))
        cand_kt, static_kt = np.concatenate(cand).astype(int), np.concatenate(static).astype(int)
        rows = np.repeat(np.arange(Mt), [len(c) for c in cand[1:]])
        s_rows = np.repeat(np.arange(Mt), [len(c) for c in static[1:]])
        heads_out.append((np.cumsum([len(c) for c in static]), static_kt, cls[h, s_rows, static_kt], block_ptr,
                          cand_kt, cls[h, rows, cand_kt]))
    if count is not None and routed_node(pattern).query == "block":
        width = min(width, int((cb != 0).sum(2).max()) + count * tpb)
    return heads_out, max(width, 1), (ca == 2).sum(2), (ca == 1).sum(2)


@settings(max_examples=examples(10), deadline=None)
@given(b=st.sampled_from([16, 32, 64]), M=st.integers(1, 200), extra=st.integers(0, 90), heads=st.integers(1, 3),
       tiles=st.sampled_from([(16, 16), (16, 32), (32, 16), (32, 32)]))
def test_plan_matches_a_tile_by_tile_restatement(b, M, extra, heads, tiles):
    bm, bn = min(tiles[0], b), min(tiles[1], b)
    for text in TEXTS:
        check_plan(text.format(b=b), M, M + extra, heads, bm, bn)


def check_plan(text, M, N, heads, bm, bn):
    plan = routed_plan(patternc.compile(text), M, N, heads, bm, bn, "cpu")
    expected, width, full, part = restated(text, M, N, heads, bm, bn)
    names = ("static_ptr", "static_kt", "static_cls", "block_ptr", "cand_kt", "cand_cls")
    for i, name in enumerate(names):
        table = getattr(plan, name).numpy()
        assert table.shape[0] in (1, heads), name
        for h, tables in enumerate(expected):
            want = tables[i]
            got = table[h if table.shape[0] > 1 else 0]
            assert np.array_equal(got[:len(want)], want), (name, h)
            assert not got[len(want):].any(), (name, h)  # padding of shorter heads
    assert plan.width == width
    work = torch.as_tensor(full).float() + 1.25 * torch.as_tensor(part).float()
    assert torch.equal(plan.row_order, torch.argsort(work, dim=1, descending=True, stable=True).to(torch.int32))
    assert torch.equal(plan.every.full_kv_num_blocks, torch.as_tensor(full, dtype=torch.int32))


@settings(max_examples=examples(10), deadline=None)
@given(b=st.sampled_from([16, 32, 64]), M=st.integers(1, 200), extra=st.integers(0, 90),
       group=st.sampled_from([(1, 1), (2, 1), (3, 3), (4, 2)]), tiles=st.sampled_from([(16, 16), (16, 32), (32, 16)]),
       seed=st.integers(0, 2**16))
def test_routed_layout_matches_the_routed_mask(b, M, extra, group, tiles, seed):
    (heads, kv_heads), N = group, M + extra
    bm, bn = min(tiles[0], b), min(tiles[1], b)
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(heads, M, 8, generator=g), torch.randn(kv_heads, N, 8, generator=g)
    for text in TEXTS:
        pattern = patternc.compile(text.format(b=b))
        if "query=token" not in text:  # the fast path, not the table lookup
            assert routed_runs(pattern, M, N, heads, bm, bn, {"q": q, "k": k}) is not None
        layout = pattern.layout(M, N, heads=heads, block_m=bm, block_n=bn, q=q, k=k)
        want = tile_classes(pattern, M, N, heads, bm, bn, q=q, k=k)
        assert np.array_equal(layout.block_map().numpy(), want), text
