"""The two Triton kernels behind routed patterns (`topk`): pool the keys, then per query block
score, select and write the layout's index tables.

`pool_keys`: grid (key blocks, B * Hkv). Each program averages one key block in fp32.
`select_and_compact`: grid (query blocks, B * units), a unit being one query head (`shared=head`)
or one GQA group (`shared=group`). Each program pools its query block (over the unit's heads),
scores it against every key mean, picks the blocks (top-k by repeated argmax, ties to the lower
index, or by cumulative softmax mass), writes the choice, and then compacts the candidate tiles
of its tile rows into the index tables the attention kernel reads: a candidate's class is its
class in the pattern with topk := all keys when its block is chosen, else with topk := none.

Memory: the key means `[B, Hkv, N/b, D]`, the choice `[B, H, M/b, N/b]` and the tables
`[B*H, M/BLOCK_M, W]`; nothing of size N x N, no copy of K or V.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .. import layout

FULL, PARTIAL = tl.constexpr(layout.FULL), tl.constexpr(layout.PARTIAL)  # tile classes, as kernel constants


@triton.jit
def pool_keys(K, stride_kb, stride_kh, stride_kn, KBAR, Hkv, N, n_k, block,
              HEAD_DIM: tl.constexpr, ROWS: tl.constexpr):
    """KBAR[b, h, j] = mean of k[b, h, j*block : (j+1)*block] (fp32, the last block may be short)."""
    j = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // Hkv
    h = bh % Hkv
    lo = j * block
    n = tl.minimum(block, N - lo)
    offs_d = tl.arange(0, HEAD_DIM)
    base = K + b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh + lo.to(tl.int64) * stride_kn
    acc = tl.zeros([HEAD_DIM], dtype=tl.float32)
    for r0 in range(0, block, ROWS):
        rows = r0 + tl.arange(0, ROWS)
        x = tl.load(base + rows[:, None] * stride_kn + offs_d[None, :], mask=(rows < n)[:, None], other=0.0)
        acc += tl.sum(x.to(tl.float32), axis=0)
    tl.store(KBAR + (bh.to(tl.int64) * n_k + j) * HEAD_DIM + offs_d, acc / n)


@triton.jit
def select_and_compact(
    Q, stride_qb, stride_qh, stride_qm,  # q [B, H, M, D], last dim contiguous
    KBAR,  # [B, Hkv, n_k, D] fp32 contiguous
    SEL,  # uint8 [B, H, n_q, n_k] contiguous: 1 where chosen
    ROW_PTR, CAND_KT, CAND_CLS, stride_plan,  # the plan: per head (or one for all, stride 0)
    FULL_NUM, FULL_IDX, PART_NUM, PART_IDX, stride_num, stride_idx, stride_idx_m,
    H, M, N, n_q, n_k, tiles_m, block, count, threshold, scale, group, unit_heads,
    CAUSAL: tl.constexpr, THRESHOLD: tl.constexpr, HEAD_DIM: tl.constexpr, D_CHUNK: tl.constexpr,
    ROWS: tl.constexpr, NKP: tl.constexpr, CAND_CHUNK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    qb = tl.program_id(0)
    units = H // unit_heads
    b = tl.program_id(1) // units
    h0 = (tl.program_id(1) % units) * unit_heads
    kvh = h0 // group
    offs_k = tl.arange(0, NKP)
    q_lo = qb * block
    q_n = tl.minimum(block, M - q_lo)

    # scores of the unit's mean query against every key block's mean key, one slice of D at a time
    scores = tl.zeros([NKP], dtype=tl.float32)
    kbar = KBAR + ((b * (H // group) + kvh).to(tl.int64) * n_k) * HEAD_DIM
    for d0 in tl.static_range(0, HEAD_DIM, D_CHUNK):
        offs_d = d0 + tl.arange(0, D_CHUNK)
        qsum = tl.zeros([D_CHUNK], dtype=tl.float32)
        for hh in range(unit_heads):
            base = Q + b.to(tl.int64) * stride_qb + (h0 + hh).to(tl.int64) * stride_qh + q_lo.to(tl.int64) * stride_qm
            for r0 in range(0, block, ROWS):
                rows = r0 + tl.arange(0, ROWS)
                x = tl.load(base + rows[:, None] * stride_qm + offs_d[None, :], mask=(rows < q_n)[:, None], other=0.0)
                qsum += tl.sum(x.to(tl.float32), axis=0)
        qmean = qsum / (q_n * unit_heads)
        kb = tl.load(kbar + offs_k[:, None] * HEAD_DIM + offs_d[None, :], mask=(offs_k < n_k)[:, None], other=0.0)
        scores += tl.sum(kb * qmean[None, :], axis=1)

    # the own block is always kept; under causal only earlier blocks compete
    own = qb + n_k - n_q
    if CAUSAL:
        eligible = offs_k < own
    else:
        eligible = (offs_k != own) & (offs_k < n_k)
    rest = tl.where(eligible, scores, float("-inf"))
    chosen = (offs_k == own).to(tl.int32)
    top = tl.max(rest, axis=0)
    if THRESHOLD:
        mass_of = tl.where(eligible, tl.exp((rest - tl.where(top > float("-inf"), top, 0.0)) * scale), 0.0)
        mass_of = mass_of / tl.sum(mass_of, axis=0)
    else:
        mass_of = tl.zeros([NKP], dtype=tl.float32)
    taken = tl.full([], 0, tl.int32)
    mass = tl.full([], 0.0, tl.float32)
    while (taken < count) & (top > float("-inf")) & (mass < threshold):
        hit = offs_k == tl.argmax(rest, axis=0)  # ties: the lower index
        chosen = chosen | hit.to(tl.int32)
        mass += tl.sum(tl.where(hit, mass_of, 0.0), axis=0)
        rest = tl.where(hit, float("-inf"), rest)
        top = tl.max(rest, axis=0)
        taken += 1
    for hh in range(unit_heads):
        sel_row = SEL + (((b * H + h0 + hh).to(tl.int64) * n_q + qb) * n_k)
        tl.store(sel_row + offs_k, chosen.to(tl.uint8), mask=offs_k < n_k)
    tl.debug_barrier()  # the rows below read the choice back from memory

    # the unit's tile rows: each candidate tile takes its class by its key block's choice
    row_lo = q_lo // BLOCK_M
    row_hi = tl.minimum((q_lo + block) // BLOCK_M, tiles_m)
    for hh in range(unit_heads):
        h = h0 + hh
        bh = (b * H + h).to(tl.int64)
        sel_row = SEL + (bh * n_q + qb) * n_k
        plan = h.to(tl.int64) * stride_plan
        for row in range(row_lo, row_hi):
            start = tl.load(ROW_PTR + plan + row)
            end = tl.load(ROW_PTR + plan + row + 1)
            n_full = tl.full([], 0, tl.int32)
            n_part = tl.full([], 0, tl.int32)
            full_row = FULL_IDX + bh * stride_idx + row * stride_idx_m
            part_row = PART_IDX + bh * stride_idx + row * stride_idx_m
            for c0 in range(start, end, CAND_CHUNK):
                offs = c0 + tl.arange(0, CAND_CHUNK)
                valid = offs < end
                kt = tl.load(CAND_KT + plan + offs, mask=valid, other=0)
                cls = tl.load(CAND_CLS + plan + offs, mask=valid, other=0).to(tl.int32)
                bit = tl.load(sel_row + kt * BLOCK_N // block, mask=valid, other=0).to(tl.int32)
                kind = tl.where(bit != 0, cls & 3, cls >> 2)
                is_full = valid & (kind == FULL)
                is_part = valid & (kind == PARTIAL)
                tl.store(full_row + n_full + tl.cumsum(is_full.to(tl.int32), axis=0) - 1, kt, mask=is_full)
                tl.store(part_row + n_part + tl.cumsum(is_part.to(tl.int32), axis=0) - 1, kt | (bit << 30),
                         mask=is_part)
                n_full += tl.sum(is_full.to(tl.int32), axis=0)
                n_part += tl.sum(is_part.to(tl.int32), axis=0)
            tl.store(FULL_NUM + bh * stride_num + row, n_full)
            tl.store(PART_NUM + bh * stride_num + row, n_part)


@triton.jit
def select_tokens_and_compact(
    Q, stride_qb, stride_qh, stride_qm,  # q [B, H, M, D], last dim contiguous
    KBAR,  # [B, Hkv, n_k, D] fp32 contiguous
    WORDS,  # int32 [B, H, M, WORDS_PER_ROW] contiguous: bit j of a row = key block j chosen
    STATE,  # uint8 [B, H, tiles_m, n_k] contiguous: per tile row and key block, any | all << 1
    ROW_PTR, CAND_KT, CAND_CLS, stride_plan,
    FULL_NUM, FULL_IDX, PART_NUM, PART_IDX, stride_num, stride_idx, stride_idx_m,
    H, M, N, n_k, tiles_m, block, count, threshold, scale, group, unit_heads,
    CAUSAL: tl.constexpr, THRESHOLD: tl.constexpr, HEAD_DIM: tl.constexpr, D_CHUNK: tl.constexpr,
    SUB_M: tl.constexpr, NKP: tl.constexpr, WORDS_PER_ROW: tl.constexpr, CAND_CHUNK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """`query=token`: one program per (tile row, batch x unit). Every query token routes by
    itself (SUB_M rows at a time); a candidate tile is chosen-class when all its rows chose its
    key block, other-class when none did, and partial (each row reads its own bit) when mixed."""
    row = tl.program_id(0)
    units = H // unit_heads
    b = tl.program_id(1) // units
    h0 = (tl.program_id(1) % units) * unit_heads
    kvh = h0 // group
    offs_k = tl.arange(0, NKP)
    kbar = KBAR + ((b * (H // group) + kvh).to(tl.int64) * n_k) * HEAD_DIM
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
        chosen = (offs_k[None, :] == own[:, None]).to(tl.int32)
        top = tl.max(rest, axis=1)
        if THRESHOLD:
            mass_of = tl.where(eligible, tl.exp((rest - tl.where(top > float("-inf"), top, 0.0)[:, None]) * scale), 0.0)
            mass_of = mass_of / tl.maximum(tl.sum(mass_of, axis=1), 1e-30)[:, None]
        else:
            mass_of = tl.zeros([SUB_M, NKP], dtype=tl.float32)
        mass = tl.zeros([SUB_M], dtype=tl.float32)
        taken = tl.full([], 0, tl.int32)
        active = (top > float("-inf")) & (mass < threshold) & (taken < count)
        while tl.max(active.to(tl.int32), axis=0) > 0:
            hit = (offs_k[None, :] == tl.argmax(rest, axis=1)[:, None]) & active[:, None]  # ties: lower index
            chosen = chosen | hit.to(tl.int32)
            mass += tl.sum(tl.where(hit, mass_of, 0.0), axis=1)
            rest = tl.where(hit, float("-inf"), rest)
            top = tl.max(rest, axis=1)
            taken += 1
            active = (top > float("-inf")) & (mass < threshold) & (taken < count)
        bits = tl.reshape(chosen, [SUB_M, WORDS_PER_ROW, 32]) << tl.arange(0, 32)[None, None, :]
        words = tl.sum(bits, axis=2)
        for hh in range(unit_heads):
            word_rows = WORDS + ((b * H + h0 + hh).to(tl.int64) * M) * WORDS_PER_ROW
            tl.store(word_rows + offs_m[:, None] * WORDS_PER_ROW + tl.arange(0, WORDS_PER_ROW)[None, :], words,
                     mask=valid_m[:, None])
        any_row = any_row | tl.max(chosen, axis=0)
        all_rows = all_rows & tl.min(tl.where(valid_m[:, None], chosen, 1), axis=0)
    for hh in range(unit_heads):
        state_row = STATE + ((b * H + h0 + hh).to(tl.int64) * tiles_m + row) * n_k
        tl.store(state_row + offs_k, (any_row | (all_rows << 1)).to(tl.uint8), mask=offs_k < n_k)
    tl.debug_barrier()  # the candidates below read the state back from memory

    for hh in range(unit_heads):
        h = h0 + hh
        bh = (b * H + h).to(tl.int64)
        state_row = STATE + (bh * tiles_m + row) * n_k
        plan = h.to(tl.int64) * stride_plan
        start = tl.load(ROW_PTR + plan + row)
        end = tl.load(ROW_PTR + plan + row + 1)
        n_full = tl.full([], 0, tl.int32)
        n_part = tl.full([], 0, tl.int32)
        full_row = FULL_IDX + bh * stride_idx + row * stride_idx_m
        part_row = PART_IDX + bh * stride_idx + row * stride_idx_m
        for c0 in range(start, end, CAND_CHUNK):
            offs = c0 + tl.arange(0, CAND_CHUNK)
            valid = offs < end
            kt = tl.load(CAND_KT + plan + offs, mask=valid, other=0)
            cls = tl.load(CAND_CLS + plan + offs, mask=valid, other=0).to(tl.int32)
            state = tl.load(state_row + kt * BLOCK_N // block, mask=valid, other=0).to(tl.int32)
            chosen_cls = cls & 3
            other_cls = cls >> 2
            mixed = tl.where((chosen_cls == FULL) & (other_cls == FULL), FULL,
                             tl.where((chosen_cls | other_cls) != 0, PARTIAL, 0))
            kind = tl.where(state >= 2, chosen_cls, tl.where(state == 0, other_cls, mixed))
            is_full = valid & (kind == FULL)
            is_part = valid & (kind == PARTIAL)
            tl.store(full_row + n_full + tl.cumsum(is_full.to(tl.int32), axis=0) - 1, kt, mask=is_full)
            tl.store(part_row + n_part + tl.cumsum(is_part.to(tl.int32), axis=0) - 1, kt, mask=is_part)
            n_full += tl.sum(is_full.to(tl.int32), axis=0)
            n_part += tl.sum(is_part.to(tl.int32), axis=0)
        tl.store(FULL_NUM + bh * stride_num + row, n_full)
        tl.store(PART_NUM + bh * stride_num + row, n_part)
