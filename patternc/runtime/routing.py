"""The Triton kernels behind routed patterns (`topk`): pool, then score, select and write the
layout's index tables.

`pool_blocks`: grid (blocks, B * heads). Each program averages one block of tokens in fp32
(keys, and queries when they route by block).
`select_blocks` (`query=block`): grid (query blocks, B * units), a unit being one query head
(`shared=head`) or one GQA group (`shared=group`). Each program scores its unit's mean query
against every key mean, picks blocks (top-k by repeated argmax, ties to the lower index, or by
cumulative softmax mass), writes the choice and then its tile rows' index tables.
`select_tokens` (`query=token`): grid (query tiles, B * units); every query token routes by
itself, and a tile row records per key block whether any / all of its rows chose it.

A tile row's tables are written in two passes over the plan (see `RoutedPlan`): the static part's
tiles (visible whatever is chosen), each classed by its key block's choice, then the tiles only
chosen blocks add. Work and memory per call are O(tiles visited), never O(N^2); no copy of K or V.

`route(plan, q, k)` launches them and returns the call's layout tables; `transposed(...)` turns
them into the dK/dV kernel's (on the device, no host synchronisation). This file needs torch and
triton only: `patternc compile` writes it, as it is, into the standalone modules of routed
patterns, beside the plan's tables.
"""
from __future__ import annotations

import triton
import triton.language as tl

# tile classes, as kernel constants: patternc.layout's FULL and PARTIAL (tests/test_routed.py checks)
FULL, PARTIAL = tl.constexpr(2), tl.constexpr(1)
SELECTED = 1 << 30  # a partial entry's choice bit (runtime.routed.SELECTED_BIT)


@triton.jit
def pool_blocks(X, stride_xb, stride_xh, stride_xn, MEANS, heads, length, n_blocks, block,
                HEAD_DIM: tl.constexpr, ROWS: tl.constexpr):
    """MEANS[b, h, j] = mean of x[b, h, j*block : (j+1)*block] (fp32, the last block may be short)."""
    j = tl.program_id(0)
    bh = tl.program_id(1)
    lo = j * block
    n = tl.minimum(block, length - lo)
    offs_d = tl.arange(0, HEAD_DIM)
    base = X + (bh // heads).to(tl.int64) * stride_xb + (bh % heads).to(tl.int64) * stride_xh \
        + lo.to(tl.int64) * stride_xn
    acc = tl.zeros([HEAD_DIM], dtype=tl.float32)
    for r0 in range(0, block, ROWS):
        rows = r0 + tl.arange(0, ROWS)
        x = tl.load(base + rows[:, None] * stride_xn + offs_d[None, :], mask=(rows < n)[:, None], other=0.0)
        acc += tl.sum(x.to(tl.float32), axis=0)
    tl.store(MEANS + (bh.to(tl.int64) * n_blocks + j) * HEAD_DIM + offs_d, acc / n)


@triton.jit
def _append(KT, CLS, start, end, route, full_row, part_row, n_full, n_part, block,
            STATIC: tl.constexpr, TOKEN: tl.constexpr, CHUNK: tl.constexpr, BLOCK_N: tl.constexpr):
    """Append plan candidates [start, end) to one tile row's tables; returns the new counts.

    A candidate's class is its class in the pattern with topk := all keys where its key block
    is chosen, else with topk := none (`CLS`: chosen | other << 2). `route[j]` is key block j's
    choice: 1 / 0, or with TOKEN any | all << 1 over the row's queries (mixed: partial, each
    row reads its own bit). STATIC candidates are the static part's; the others come from chosen
    blocks, of which only tiles the static part lacks are taken."""
    for c0 in range(start, end, CHUNK):
        offs = c0 + tl.arange(0, CHUNK)
        valid = offs < end
        kt = tl.load(KT + offs, mask=valid, other=0)
        cls = tl.load(CLS + offs, mask=valid, other=0).to(tl.int32)
        chosen_cls = cls & 3
        other_cls = cls >> 2
        r = tl.load(route + kt * BLOCK_N // block, mask=valid, other=0).to(tl.int32)
        if TOKEN:
            mixed = tl.where((chosen_cls == FULL) & (other_cls == FULL), FULL,
                             tl.where((chosen_cls | other_cls) != 0, PARTIAL, 0))
            kind = tl.where(r >= 2, chosen_cls, tl.where(r == 0, other_cls, mixed))
            entry = kt
        else:
            kind = tl.where(r != 0, chosen_cls, other_cls)
            entry = kt | (r << 30)  # the kernel's predicate reads the choice of partial tiles
        if not STATIC:
            kind = tl.where(other_cls == 0, kind, 0)  # the static pass wrote the others
        is_full = valid & (kind == FULL)
        is_part = valid & (kind == PARTIAL)
        tl.store(full_row + n_full + tl.cumsum(is_full.to(tl.int32), axis=0) - 1, kt, mask=is_full)
        tl.store(part_row + n_part + tl.cumsum(is_part.to(tl.int32), axis=0) - 1, entry, mask=is_part)
        n_full += tl.sum(is_full.to(tl.int32), axis=0)
        n_part += tl.sum(is_part.to(tl.int32), axis=0)
    return n_full, n_part


@triton.jit
def _write_row(row, bh, ph, route, picked, n_picked,
               STATIC_PTR, STATIC_KT, STATIC_CLS, BLOCK_PTR, CAND_KT, CAND_CLS, s_ptr, s_cand, b_ptr, b_row, cand,
               FULL_NUM, FULL_IDX, PART_NUM, PART_IDX, s_num, s_idx, s_idx_m, block,
               TOKEN: tl.constexpr, STATIC_CHUNK: tl.constexpr, BLOCK_CHUNK: tl.constexpr, BLOCK_N: tl.constexpr):
    """One tile row's tables: the static part's tiles, then those of the `n_picked` key blocks
    listed at `picked` (chosen; with TOKEN, chosen by any of the row's queries). `ph`: the
    plan's head (0 when all heads share one plan)."""
    full_row = FULL_IDX + bh * s_idx + row * s_idx_m
    part_row = PART_IDX + bh * s_idx + row * s_idx_m
    static_ptr = STATIC_PTR + ph * s_ptr + row
    n_full, n_part = _append(STATIC_KT + ph * s_cand, STATIC_CLS + ph * s_cand, tl.load(static_ptr),
                             tl.load(static_ptr + 1), route, full_row, part_row,
                             tl.full([], 0, tl.int32), tl.full([], 0, tl.int32), block,
                             True, TOKEN, STATIC_CHUNK, BLOCK_N)
    block_ptr = BLOCK_PTR + ph * b_ptr + row * b_row
    for t in range(n_picked):
        j = tl.load(picked + t)
        n_full, n_part = _append(CAND_KT + ph * cand, CAND_CLS + ph * cand, tl.load(block_ptr + j),
                                 tl.load(block_ptr + j + 1), route, full_row, part_row, n_full, n_part, block,
                                 False, TOKEN, BLOCK_CHUNK, BLOCK_N)
    tl.store(FULL_NUM + bh * s_num + row, n_full)
    tl.store(PART_NUM + bh * s_num + row, n_part)


@triton.jit
def _pick(rest, mass_of, chosen, count, threshold, offs_k):
    """Per row of `rest` ([rows, NKP] scores, -inf where not eligible) add the best blocks to
    `chosen` one at a time, ties to the lower index, until `count` are taken or, with a
    threshold, their share `mass_of` reaches it."""
    top = tl.max(rest, axis=1)
    mass = tl.zeros(top.shape, dtype=tl.float32)
    taken = tl.full([], 0, tl.int32)
    active = (top > float("-inf")) & (mass < threshold) & (taken < count)
    while tl.max(active.to(tl.int32), axis=0) > 0:
        hit = (offs_k[None, :] == tl.argmax(rest, axis=1)[:, None]) & active[:, None]
        chosen = chosen | hit.to(tl.int32)
        mass += tl.sum(tl.where(hit, mass_of, 0.0), axis=1)
        rest = tl.where(hit, float("-inf"), rest)
        top = tl.max(rest, axis=1)
        taken += 1
        active = (top > float("-inf")) & (mass < threshold) & (taken < count)
    return chosen


@triton.jit
def _share(rest, eligible, scale, THRESHOLD: tl.constexpr):
    """Each eligible block's share of its row's routing softmax (zeros without a threshold)."""
    if THRESHOLD:
        top = tl.max(rest, axis=1)
        top = tl.where(top > float("-inf"), top, 0.0)
        e = tl.where(eligible, tl.exp((rest - top[:, None]) * scale), 0.0)
        return e / tl.maximum(tl.sum(e, axis=1), 1e-30)[:, None]
    else:
        return tl.zeros(rest.shape, dtype=tl.float32)


@triton.jit
def select_blocks(
    QBAR, KBAR,  # block means, fp32 contiguous: [B, H, n_q, D], [B, Hkv, n_k, D]
    SEL,  # uint8 [B, H, n_q, n_k]: 1 where chosen
    PICKED,  # int32 [B * units, n_q, NKP] scratch: the chosen blocks' indices
    # the plan (RoutedPlan) and its head strides (0 when heads share it), then the tables
    STATIC_PTR, STATIC_KT, STATIC_CLS, BLOCK_PTR, CAND_KT, CAND_CLS, plan_per_head, s_ptr, s_cand, b_ptr, b_row, cand,
    FULL_NUM, FULL_IDX, PART_NUM, PART_IDX, s_num, s_idx, s_idx_m,
    H, n_q, n_k, tiles_m, block, count, threshold, scale, group, unit_heads,
    CAUSAL: tl.constexpr, THRESHOLD: tl.constexpr, HEAD_DIM: tl.constexpr, D_CHUNK: tl.constexpr,
    NKP: tl.constexpr, STATIC_CHUNK: tl.constexpr, BLOCK_CHUNK: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    qb = tl.program_id(0)
    units = H // unit_heads
    b = tl.program_id(1) // units
    h0 = (tl.program_id(1) % units) * unit_heads
    offs_k = tl.arange(0, NKP)

    # the unit's mean query against every key block's mean key, one slice of D at a time
    qbar = QBAR + ((b * H + h0).to(tl.int64) * n_q + qb) * HEAD_DIM
    kbar = KBAR + ((b * (H // group) + h0 // group).to(tl.int64) * n_k) * HEAD_DIM
    scores = tl.zeros([NKP], dtype=tl.float32)
    for d0 in tl.static_range(0, HEAD_DIM, D_CHUNK):
        offs_d = d0 + tl.arange(0, D_CHUNK)
        qmean = tl.zeros([D_CHUNK], dtype=tl.float32)
        for hh in range(unit_heads):
            qmean += tl.load(qbar + hh * n_q * HEAD_DIM + offs_d)
        kb = tl.load(kbar + offs_k[:, None] * HEAD_DIM + offs_d[None, :], mask=(offs_k < n_k)[:, None], other=0.0)
        scores += tl.sum(kb * (qmean / unit_heads)[None, :], axis=1)

    # the own block is always kept; under causal only earlier blocks compete
    own = qb + n_k - n_q
    if CAUSAL:
        eligible = offs_k < own
    else:
        eligible = (offs_k != own) & (offs_k < n_k)
    rest = tl.where(eligible, scores, float("-inf"))[None, :]  # one row: the helpers take [rows, NKP]
    chosen = _pick(rest, _share(rest, eligible[None, :], scale, THRESHOLD), (offs_k == own).to(tl.int32)[None, :],
                   count, threshold, offs_k)
    chosen = tl.max(chosen, axis=0)
    picked = PICKED + (tl.program_id(1).to(tl.int64) * n_q + qb) * NKP
    tl.store(picked + tl.cumsum(chosen, axis=0) - 1, offs_k, mask=chosen != 0)
    for hh in range(unit_heads):
        tl.store(SEL + ((b * H + h0 + hh).to(tl.int64) * n_q + qb) * n_k + offs_k, chosen.to(tl.uint8),
                 mask=offs_k < n_k)
    tl.debug_barrier()  # the rows below read the choice back from memory

    for hh in range(unit_heads):
        bh = (b * H + h0 + hh).to(tl.int64)
        for row in range(qb * block // BLOCK_M, tl.minimum((qb + 1) * block // BLOCK_M, tiles_m)):
            _write_row(row, bh, (h0 + hh) * plan_per_head, SEL + (bh * n_q + qb) * n_k, picked,
                       tl.sum(chosen, axis=0), STATIC_PTR, STATIC_KT, STATIC_CLS, BLOCK_PTR, CAND_KT, CAND_CLS,
                       s_ptr, s_cand, b_ptr, b_row, cand, FULL_NUM, FULL_IDX, PART_NUM, PART_IDX, s_num, s_idx, s_idx_m, block,
                       False, STATIC_CHUNK, BLOCK_CHUNK, BLOCK_N)


@triton.jit
def select_tokens(
    Q, stride_qb, stride_qh, stride_qm,  # q [B, H, M, D], last dim contiguous
    KBAR,  # [B, Hkv, n_k, D] fp32 contiguous
    WORDS,  # int32 [B, H, M, WORDS_PER_ROW]: bit j of a query's words = key block j chosen
    STATE,  # uint8 [B, H, tiles_m, n_k]: per tile row and key block, any | all << 1
    PICKED,  # int32 [B * units, tiles_m, NKP] scratch: key blocks some row of the tile chose
    # the plan (RoutedPlan) and its head strides (0 when heads share it), then the tables
    STATIC_PTR, STATIC_KT, STATIC_CLS, BLOCK_PTR, CAND_KT, CAND_CLS, plan_per_head, s_ptr, s_cand, b_ptr, b_row, cand,
    FULL_NUM, FULL_IDX, PART_NUM, PART_IDX, s_num, s_idx, s_idx_m,
    H, M, N, n_k, tiles_m, block, count, threshold, scale, group, unit_heads,
    CAUSAL: tl.constexpr, THRESHOLD: tl.constexpr, HEAD_DIM: tl.constexpr, D_CHUNK: tl.constexpr,
    SUB_M: tl.constexpr, NKP: tl.constexpr, WORDS_PER_ROW: tl.constexpr, STATIC_CHUNK: tl.constexpr,
    BLOCK_CHUNK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    row = tl.program_id(0)
    units = H // unit_heads
    b = tl.program_id(1) // units
    h0 = (tl.program_id(1) % units) * unit_heads
    offs_k = tl.arange(0, NKP)
    kbar = KBAR + ((b * (H // group) + h0 // group).to(tl.int64) * n_k) * HEAD_DIM
    any_row = tl.zeros([NKP], dtype=tl.int32)
    all_rows = tl.full([NKP], 1, dtype=tl.int32)
    for m0 in range(row * BLOCK_M, (row + 1) * BLOCK_M, SUB_M):
        offs_m = m0 + tl.arange(0, SUB_M)
        valid_m = offs_m < M
        scores = tl.zeros([SUB_M, NKP], dtype=tl.float32)
        for d0 in tl.static_range(0, HEAD_DIM, D_CHUNK):
            offs_d = d0 + tl.arange(0, D_CHUNK)
            qs = tl.zeros([SUB_M, D_CHUNK], dtype=tl.float32)
            for hh in range(unit_heads):
                base = Q + b.to(tl.int64) * stride_qb + (h0 + hh).to(tl.int64) * stride_qh
                qs += tl.load(base + offs_m[:, None] * stride_qm + offs_d[None, :], mask=valid_m[:, None],
                              other=0.0).to(tl.float32)
            kb = tl.load(kbar + offs_k[:, None] * HEAD_DIM + offs_d[None, :], mask=(offs_k < n_k)[:, None], other=0.0)
            scores += tl.dot(qs / unit_heads, tl.trans(kb), input_precision="tf32x3")
        # own block (t + N - M) // b; a negative position has none
        shifted = offs_m + N - M
        own = tl.where(shifted >= 0, shifted // block, -1)
        if CAUSAL:
            eligible = offs_k[None, :] < own[:, None]
        else:
            eligible = (offs_k[None, :] != own[:, None]) & (offs_k[None, :] < n_k)
        rest = tl.where(eligible, scores, float("-inf"))
        chosen = _pick(rest, _share(rest, eligible, scale, THRESHOLD), (offs_k[None, :] == own[:, None]).to(tl.int32),
                       count, threshold, offs_k)
        chosen = tl.where(valid_m[:, None] & (offs_k < n_k)[None, :], chosen, 0)  # rows past M choose nothing
        words = tl.sum(tl.reshape(chosen, [SUB_M, WORDS_PER_ROW, 32]) << tl.arange(0, 32)[None, None, :], axis=2)
        for hh in range(unit_heads):
            word_rows = WORDS + ((b * H + h0 + hh).to(tl.int64) * M) * WORDS_PER_ROW
            tl.store(word_rows + offs_m[:, None] * WORDS_PER_ROW + tl.arange(0, WORDS_PER_ROW)[None, :], words,
                     mask=valid_m[:, None])
        any_row = any_row | tl.max(chosen, axis=0)
        all_rows = all_rows & tl.min(tl.where(valid_m[:, None], chosen, 1), axis=0)
    picked = PICKED + (tl.program_id(1).to(tl.int64) * tiles_m + row) * NKP
    tl.store(picked + tl.cumsum(any_row, axis=0) - 1, offs_k, mask=any_row != 0)
    for hh in range(unit_heads):
        state_row = STATE + ((b * H + h0 + hh).to(tl.int64) * tiles_m + row) * n_k
        tl.store(state_row + offs_k, (any_row | (all_rows << 1)).to(tl.uint8), mask=offs_k < n_k)
    tl.debug_barrier()  # the row below reads the state back from memory

    for hh in range(unit_heads):
        bh = (b * H + h0 + hh).to(tl.int64)
        _write_row(row, bh, (h0 + hh) * plan_per_head, STATE + (bh * tiles_m + row) * n_k, picked,
                   tl.sum(any_row, axis=0), STATIC_PTR, STATIC_KT, STATIC_CLS, BLOCK_PTR, CAND_KT, CAND_CLS,
                   s_ptr, s_cand, b_ptr, b_row, cand, FULL_NUM, FULL_IDX, PART_NUM, PART_IDX, s_num, s_idx, s_idx_m, block,
                   True, STATIC_CHUNK, BLOCK_CHUNK, BLOCK_N)


def route(plan, q, k) -> dict:
    """Select on the device (q `[B, H, M, D]`, k `[B, Hkv, N, D]`) and write the index tables of
    one call: `kv_num_blocks`, `kv_indices`, `full_kv_num_blocks`, `full_kv_indices` per (batch x
    head) and what the attention kernel reads besides (`row_order`, `block`, the choice).
    `plan`: a `RoutedPlan`, or an object with its tensors and its topk's options (`block`,
    `count`, `threshold`, `shared`, `query`)."""
    import torch
    from triton import next_power_of_2 as pow2

    B, H, M, D = q.shape
    Hkv, N = k.shape[1], k.shape[2]
    b = plan.block
    n_q, n_k, Mt, key_tiles = -(-M // b), -(-N // b), -(-M // plan.block_m), -(-N // plan.block_n)
    q = q if q.stride(-1) == 1 else q.contiguous()
    k = k if k.stride(-1) == 1 else k.contiguous()
    device = q.device

    def means(x, n):
        out = torch.empty(x.shape[0], x.shape[1], n, D, dtype=torch.float32, device=device)
        pool_blocks[(n, x.shape[0] * x.shape[1])](x, x.stride(0), x.stride(1), x.stride(2), out, x.shape[1],
                                                  x.shape[2], n, b, HEAD_DIM=D, ROWS=min(64, pow2(b)), num_warps=4)
        return out

    kbar = means(k, n_k)
    tables = [torch.empty(B * H, Mt, plan.width, dtype=torch.int32, device=device) for _ in range(2)]
    counts = [torch.empty(B * H, Mt, dtype=torch.int32, device=device) for _ in range(2)]
    unit = H // Hkv if plan.shared == "group" else 1
    shared_plan = plan.cand_kt.shape[0] == 1
    tensors = (plan.static_ptr, plan.static_kt, plan.static_cls, plan.block_ptr, plan.cand_kt, plan.cand_cls,
               0 if shared_plan else 1, plan.static_ptr.stride(0), plan.static_kt.stride(0), plan.block_ptr.stride(0),
               plan.block_ptr.stride(1), plan.cand_kt.stride(0), counts[0], tables[0], counts[1], tables[1],
               counts[0].stride(0), tables[0].stride(0), tables[0].stride(1))
    count = n_k if plan.count is None else plan.count - 1
    after = (count, 2.0 if plan.threshold is None else float(plan.threshold), D ** -0.5, H // Hkv, unit)
    options = dict(CAUSAL=plan.causal, THRESHOLD=plan.threshold is not None, HEAD_DIM=D, STATIC_CHUNK=64,
                   BLOCK_CHUNK=max(16, pow2(b // plan.block_n)), BLOCK_M=plan.block_m, BLOCK_N=plan.block_n,
                   num_warps=4)
    out = dict(kv_num_blocks=counts[1], kv_indices=tables[1], full_kv_num_blocks=counts[0], full_kv_indices=tables[0],
               row_order=plan.row_order, key_tiles=key_tiles, block=b, batch=B)
    if plan.query == "block":
        nkp = pow2(n_k)
        choice = torch.empty(B, H, n_q, n_k, dtype=torch.uint8, device=device)
        picked = torch.empty(B * (H // unit), n_q, nkp, dtype=torch.int32, device=device)
        select_blocks[(n_q, B * (H // unit))](means(q, n_q), kbar, choice, picked, *tensors, H, n_q, n_k, Mt, b,
                                              *after, D_CHUNK=max(16, min(D, 4096 // nkp)), NKP=nkp, **options)
        return dict(out, block_choice=choice.view(torch.bool))
    if n_k > 1024:
        raise ValueError(f"topk(query=token) routes among at most 1024 key blocks, got {n_k}")
    nkp = max(32, pow2(n_k))
    words = torch.empty(B * H, M, nkp // 32, dtype=torch.int32, device=device)
    state = torch.empty(B * H, Mt, n_k, dtype=torch.uint8, device=device)
    picked = torch.empty(B * (H // unit), Mt, nkp, dtype=torch.int32, device=device)
    select_tokens[(Mt, B * (H // unit))](q, q.stride(0), q.stride(1), q.stride(2), kbar, words, state, picked,
                                         *tensors, H, M, N, n_k, Mt, b, *after, D_CHUNK=min(D, 32),
                                         SUB_M=min(plan.block_m, max(16, 2048 // nkp)), NKP=nkp,
                                         WORDS_PER_ROW=nkp // 32, **options)
    return dict(out, choice_words=words, key_blocks=n_k)


def transposed(full_kv_num_blocks, full_kv_indices, kv_num_blocks, kv_indices, key_tiles: int) -> dict:
    """The tables the backward's dK/dV kernel reads, from a call's (`route`): per (batch x head,
    key tile) the query tiles that visit it, ascending, an entry being `query tile | choice << 30`
    like the forward's; built on the device with no host synchronisation (a dense [B*H, Nt, Mt]
    scatter, then a sort), width Mt."""
    import torch

    out = {}
    for name, counts, table in (("full_q", full_kv_num_blocks, full_kv_indices), ("q", kv_num_blocks, kv_indices)):
        BH, Mt, W = table.shape
        Nt, device = key_tiles, table.device
        unused = torch.iinfo(torch.int32).max
        valid = torch.arange(W, device=device) < counts[..., None]
        rows = torch.arange(Mt, device=device, dtype=torch.int32).view(1, Mt, 1)
        key_tile = (table & (SELECTED - 1)).clamp(max=Nt - 1)  # entries past a row's count: anything
        slot = (torch.arange(BH, device=device).view(BH, 1, 1) * Nt + key_tile) * Mt + rows
        dense = torch.full((BH * Nt * Mt + 1,), unused, dtype=torch.int32, device=device)
        dense.scatter_(0, torch.where(valid, slot, BH * Nt * Mt).flatten(),  # the last slot takes the unused
                       (rows | (table & ~(SELECTED - 1))).expand(BH, Mt, W).flatten())
        dense = dense[:-1].view(BH, Nt, Mt)
        order = torch.where(dense == unused, unused, dense & (SELECTED - 1)).argsort(dim=-1)
        out[f"{name}_num_blocks"] = (dense != unused).sum(-1, dtype=torch.int32)
        out[f"{name}_indices"] = dense.gather(-1, order)
    return out
