"""The Triton kernels behind routed patterns (`topk`): pool, then score, select and write the
layout's index tables. Two launches per call, no host synchronisation.

`pool_blocks`: one program per block of tokens, keys first, then queries (when they route by
block): each averages its block in fp32 (the last block may be short) into one buffer of means.
Only blocks some choice depends on: under causal no query block competes for the last key block,
and without a threshold the first query blocks, with at most k - 1 eligible blocks, take them all.
`select_blocks` (`query=block`): grid (groups of QB query blocks, B * units), a unit being one
query head (`shared=head`) or one GQA group (`shared=group`). Each program scores its QB mean
queries against every key mean at once (one fp32 product), picks blocks (top-k by repeated
argmax, ties to the lower index, or by cumulative softmax mass), writes the choice and then all
its tile rows' index tables, many rows at a time.
`select_tokens` (`query=token`): grid (query tiles, B * units); every query token routes by
itself, and a tile row records per key block whether any / all of its rows chose it.

A tile row's tables are written in two passes over the plan (see `RoutedPlan`): the static part's
tiles (visible whatever is chosen), each classed by its key block's choice, then the tiles only
chosen blocks add, block by block. Work and memory per call are O(tiles visited), never O(N^2);
no copy of K or V.

Packed documents (`route(..., documents=)`, the kernels' DOCS): each document routes alone, as
the sequence it is. Blocks are numbered document after document (`Documents`: small tables built
from the boundaries on the device): `pool_blocks` pools every block of every document over its
own tokens; a `select_blocks` program takes QB blocks of one document and a `select_tokens`
program one tile row of one, and reads only that document's key means (its own block and the
causal rule in document positions, as without documents). The plan is the packed length's, in
document-relative tiles; the row writer puts a document's tile rows at its own table lines
(one per (document, tile row), document after document) and drops the tiles past its end.
Program tables bound the work by the boundaries' shape (a few idle programs per document), so
nothing waits for the host.

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

# launch shapes (benchmarks/routed_selection.py times the alternatives): rows a pooling program
# loads at once and its warps; the largest score row (key blocks, padded) scored QB = 16 query
# blocks at a time by one product (beyond it: one query block per program)
POOL_ROWS, POOL_WARPS = 64, 4
DOT_KEY_BLOCKS = 1024
ROW_STEP = 1024  # candidates the row writer handles per step (rows x candidates per row)


@triton.jit
def _pool(X, stride_xb, stride_xh, stride_xn, OUT, p, heads, length, n_blocks, first, pooled, block, BLOCKS,
          HEAD_DIM: tl.constexpr, ROWS: tl.constexpr, FOLD: tl.constexpr, DOCS: tl.constexpr):
    """OUT[bh * n_blocks + j] = mean of x[b, h, j*block : (j+1)*block] (bh = b * heads + h) for
    the p-th of the blocks j = first .. first + pooled - 1 of every (b, h); with DOCS, of block j
    of the packed documents (`BLOCKS` [j] = its first token and length; none past the last).
    Each step loads ROWS rows and folds them onto FOLD rows of sums (rows FOLD apart sit in one
    thread: no exchange between threads until the end)."""
    bh = p // pooled
    j = first + p % pooled
    if DOCS:
        lo = tl.load(BLOCKS + 2 * j)
        n = tl.load(BLOCKS + 2 * j + 1)
    else:
        lo = j * block
        n = tl.minimum(block, length - lo)
    offs_d = tl.arange(0, HEAD_DIM)
    base = X + (bh // heads).to(tl.int64) * stride_xb + (bh % heads).to(tl.int64) * stride_xh \
        + lo.to(tl.int64) * stride_xn
    acc = tl.zeros([FOLD, HEAD_DIM], dtype=tl.float32)
    for r0 in range(0, n, ROWS):
        rows = r0 + tl.arange(0, ROWS)
        x = tl.load(base + rows[:, None] * stride_xn + offs_d[None, :], mask=(rows < n)[:, None], other=0.0)
        acc += tl.sum(tl.reshape(x.to(tl.float32), [ROWS // FOLD, FOLD, HEAD_DIM]), axis=0)
    tl.store(OUT + (bh.to(tl.int64) * n_blocks + j) * HEAD_DIM + offs_d, tl.sum(acc, axis=0) / tl.maximum(n, 1))


@triton.jit
def pool_blocks(Q, stride_qb, stride_qh, stride_qm, K, stride_kb, stride_kh, stride_kn, MEANS, BLOCKS,
                H, Hkv, M, N, n_q, n_k, block, k_means, k_pooled, k_programs, q_first,
                HEAD_DIM: tl.constexpr, ROWS: tl.constexpr, FOLD: tl.constexpr, DOCS: tl.constexpr):
    """MEANS [k_means + B*H*n_q, HEAD_DIM] fp32: the key blocks' means ([B, Hkv, n_k]
    flattened: k_means), then the query blocks' ([B, H, n_q]), one program per block. Only the blocks
    some choice depends on: key blocks 0 .. k_pooled - 1 (k_programs = B * Hkv * k_pooled
    programs), then query blocks q_first .. n_q - 1 (none for query=token); the others' rows are
    left as they are, and `select_blocks` reads none of them. With DOCS, n_q = n_k = k_pooled
    bound the packed documents' blocks, listed in `BLOCKS` (`documents`)."""
    p = tl.program_id(0)
    if p < k_programs:
        _pool(K, stride_kb, stride_kh, stride_kn, MEANS, p, Hkv, N, n_k, 0, k_pooled, block, BLOCKS, HEAD_DIM, ROWS,
              FOLD, DOCS)
    else:
        _pool(Q, stride_qb, stride_qh, stride_qm, MEANS + k_means.to(tl.int64) * HEAD_DIM, p - k_programs, H, M, n_q,
              q_first, n_q - q_first, block, BLOCKS, HEAD_DIM, ROWS, FOLD, DOCS)


@triton.jit
def _classify(kt, cls, r, TOKEN: tl.constexpr):
    """(kind, entry, other class) of candidates: a candidate's class is its class in the pattern
    with topk := all keys where its key block is chosen, else with topk := none (`cls`: chosen |
    other << 2). `r`: its key block's choice, 1 / 0, or with TOKEN any | all << 1 over the row's
    queries (mixed: partial, each row reads its own bit)."""
    chosen_cls = cls & 3
    other_cls = cls >> 2
    if TOKEN:
        mixed = tl.where((chosen_cls == FULL) & (other_cls == FULL), FULL,
                         tl.where((chosen_cls | other_cls) != 0, PARTIAL, 0))
        kind = tl.where(r >= 2, chosen_cls, tl.where(r == 0, other_cls, mixed))
        entry = kt
    else:
        kind = tl.where(r != 0, chosen_cls, other_cls)
        entry = kt | (r << 30)  # the kernel's predicate reads the choice of partial tiles
    return kind, entry, other_cls


@triton.jit
def _emit(full_rows, part_rows, kt, entry, kind, valid, n_full, n_part):
    """Append candidates ([rows, C], in order) of kind FULL / PARTIAL to their rows' tables."""
    is_full = valid & (kind == FULL)
    is_part = valid & (kind == PARTIAL)
    tl.store(full_rows[:, None] + (n_full[:, None] + tl.cumsum(is_full.to(tl.int32), axis=1) - 1), kt, mask=is_full)
    tl.store(part_rows[:, None] + (n_part[:, None] + tl.cumsum(is_part.to(tl.int32), axis=1) - 1), entry, mask=is_part)
    return n_full + tl.sum(is_full.to(tl.int32), axis=1), n_part + tl.sum(is_part.to(tl.int32), axis=1)


@triton.jit
def _write_rows(rows, valid_rows, bh, ph, route_rows, picked_rows, n_picked, most_picked,
                STATIC_PTR, STATIC_KT, STATIC_CLS, BLOCK_PTR, CAND_KT, CAND_CLS, s_ptr, s_cand, b_ptr, b_row, cand,
                FULL_NUM, FULL_IDX, PART_NUM, PART_IDX, s_num, s_idx, s_idx_m, block, line0, key_tiles,
                TOKEN: tl.constexpr, SC: tl.constexpr, KPC: tl.constexpr, TPB: tl.constexpr, BLOCK_N: tl.constexpr):
    """The tables of tile rows `rows` ([R], of batch x head `bh`, plan head `ph`: 0 when all
    heads share one plan), written at table lines line0 + rows: the static part's tiles, then
    those of the `n_picked` ([R]) key blocks listed at `picked_rows` (chosen; with TOKEN, chosen
    by any of the row's queries), at most `most_picked`; key tiles below `key_tiles` only (a
    document's end). `route_rows` points at each row's choice per key block (`_classify`'s r).
    Every row at once: SC static candidates, then KPC blocks of at most TPB tiles, per step."""
    lines = line0 + rows
    full_rows = FULL_IDX + bh * s_idx + lines.to(tl.int64) * s_idx_m
    part_rows = PART_IDX + bh * s_idx + lines.to(tl.int64) * s_idx_m
    static = STATIC_PTR + ph * s_ptr + rows
    start = tl.load(static, mask=valid_rows, other=0)
    n_static = tl.load(static + 1, mask=valid_rows, other=0) - start
    n_full = tl.zeros(rows.shape, dtype=tl.int32)
    n_part = tl.zeros(rows.shape, dtype=tl.int32)
    for c0 in range(0, tl.max(n_static, axis=0), SC):
        offs = c0 + tl.arange(0, SC)
        listed = offs[None, :] < n_static[:, None]
        at = ph * s_cand + start[:, None] + offs[None, :]
        kt = tl.load(STATIC_KT + at, mask=listed, other=0)
        valid = listed & (kt < key_tiles)
        cls = tl.load(STATIC_CLS + at, mask=valid, other=0).to(tl.int32)
        r = tl.load(route_rows[:, None] + kt * BLOCK_N // block, mask=valid, other=0).to(tl.int32)
        kind, entry, _ = _classify(kt, cls, r, TOKEN)
        n_full, n_part = _emit(full_rows, part_rows, kt, entry, kind, valid, n_full, n_part)
    # the chosen blocks' own tiles: step t covers blocks t0 + e // TPB, their tiles e % TPB
    e = tl.arange(0, KPC * TPB)
    nth, tile = e // TPB, e % TPB
    blocks = BLOCK_PTR + ph * b_ptr + rows * b_row
    for t0 in range(0, most_picked, KPC):
        listed = (t0 + nth)[None, :] < n_picked[:, None]
        j = tl.load(picked_rows[:, None] + (t0 + nth)[None, :], mask=listed, other=0)
        first = tl.load(blocks[:, None] + j, mask=listed, other=0)
        listed = listed & (tile[None, :] < tl.load(blocks[:, None] + j + 1, mask=listed, other=0) - first)
        at = ph * cand + first + tile[None, :]
        kt = tl.load(CAND_KT + at, mask=listed, other=0)
        valid = listed & (kt < key_tiles)
        cls = tl.load(CAND_CLS + at, mask=valid, other=0).to(tl.int32)
        if TOKEN:
            r = tl.load(route_rows[:, None] + j, mask=valid, other=0).to(tl.int32)
        else:
            r = valid.to(tl.int32)  # chosen
        kind, entry, other_cls = _classify(kt, cls, r, TOKEN)
        kind = tl.where(other_cls == 0, kind, 0)  # the static pass wrote the others
        n_full, n_part = _emit(full_rows, part_rows, kt, entry, kind, valid, n_full, n_part)
    tl.store(FULL_NUM + bh * s_num + lines, n_full, mask=valid_rows)
    tl.store(PART_NUM + bh * s_num + lines, n_part, mask=valid_rows)


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
def _means_slice(qbar, kbar, d0, rows, keys, n_q, unit_heads, HEAD_DIM: tl.constexpr, D_CHUNK: tl.constexpr):
    """Columns d0 .. d0 + D_CHUNK of the unit's mean queries at `qbar` ([QB] pointers; the mean
    over its `unit_heads` heads) and of the key means at `kbar`, zeros where `rows` / `keys` are
    false."""
    offs_d = d0 + tl.arange(0, D_CHUNK)
    qs = tl.zeros([rows.shape[0], D_CHUNK], dtype=tl.float32)
    for hh in range(unit_heads):
        qs += tl.load(qbar[:, None] + hh * n_q * HEAD_DIM + offs_d[None, :], mask=rows[:, None], other=0.0)
    kb = tl.load(kbar + tl.arange(0, keys.shape[0])[:, None] * HEAD_DIM + offs_d[None, :], mask=keys[:, None],
                 other=0.0)
    return qs / unit_heads, kb


@triton.jit
def _part(PROGRAMS, DOCINFO, n_k, tiles_m, key_tiles, block, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
          DOCS: tl.constexpr):
    """A selection program's part (a group of query blocks, or a tile row), then its sequence's
    first token, length, first routing block, first table line, key blocks, tile rows and key
    tiles. With DOCS, of its document alone (`PROGRAMS`: each program's document and part;
    `DOCINFO`: each document's first token, length, first block and first line), else of the
    whole sequence (the program id, zeros and the counts given)."""
    if DOCS:
        info = DOCINFO + 4 * tl.load(PROGRAMS + 2 * tl.program_id(0))
        length = tl.load(info + 1)
        return (tl.load(PROGRAMS + 2 * tl.program_id(0) + 1), tl.load(info), length, tl.load(info + 2),
                tl.load(info + 3), tl.cdiv(length, block), tl.cdiv(length, BLOCK_M), tl.cdiv(length, BLOCK_N))
    else:
        return tl.program_id(0), 0, 0, 0, 0, n_k, tiles_m, key_tiles


@triton.jit
def _idle(PROGRAMS, DOCS: tl.constexpr):
    """Is this a program past the last document's share (DOCS: grids are bounds)?"""
    if DOCS:
        return tl.load(PROGRAMS + 2 * tl.program_id(0)) < 0
    else:
        return False


@triton.jit
def select_blocks(
    MEANS,  # fp32 [B*Hkv*n_k + B*H*n_q, D]: the key blocks' means, then the query blocks' (pool_blocks)
    SEL,  # uint8 [B, H, n_q, n_k]: 1 where chosen
    PICKED,  # int32 [B * units, n_q, NKP] scratch: the chosen blocks' indices, ascending
    # the plan (RoutedPlan) and its head strides (0 when heads share it), then the tables
    STATIC_PTR, STATIC_KT, STATIC_CLS, BLOCK_PTR, CAND_KT, CAND_CLS, plan_per_head, s_ptr, s_cand, b_ptr, b_row, cand,
    FULL_NUM, FULL_IDX, PART_NUM, PART_IDX, s_num, s_idx, s_idx_m,
    # packed documents (DOCS): each program's (document, group of QB of its query blocks), each
    # document's (first token, length, first routing block, first table line)
    PROGRAMS, DOCINFO,
    H, n_q, n_k, k_means, k_pooled, q_first, tiles_m, key_tiles, block, count, threshold, scale, group, unit_heads,
    q_rows, k_rows, k_cols,  # rows per head of the query means, choice and scratch; of the key means; choice columns
    CAUSAL: tl.constexpr, THRESHOLD: tl.constexpr, HEAD_DIM: tl.constexpr, NKP: tl.constexpr, QB: tl.constexpr,
    D_CHUNK: tl.constexpr, ROWS: tl.constexpr, SC: tl.constexpr, KPC: tl.constexpr, TPB: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOCS: tl.constexpr,
):
    unit = tl.program_id(1)
    units = H // unit_heads
    b = unit // units
    h0 = (unit % units) * unit_heads
    if _idle(PROGRAMS, DOCS):
        return
    # with DOCS, a document alone, as a sequence of its own: its blocks from first_block, tile rows from line0
    part, _, _, first_block, line0, n_k, tiles_m, key_tiles = _part(PROGRAMS, DOCINFO, n_k, tiles_m, key_tiles,
                                                                      block, BLOCK_M, BLOCK_N, DOCS)
    if DOCS:
        n_q = n_k
        k_pooled = n_k
    qb = part * QB + tl.arange(0, QB)  # this program's query blocks
    valid_qb = qb < n_q
    pooled_qb = valid_qb & (qb >= q_first)
    offs_k = tl.arange(0, NKP)

    # the unit's mean queries against every key block's mean key, D_CHUNK of D at a time (the
    # next slice loads while this one is multiplied): a product in fp32 (QB >= 16), or a sum of
    # products (one query block); means that were not pooled (pool_blocks) read as zeros
    kbar = MEANS + ((b * (H // group) + h0 // group).to(tl.int64) * k_rows + first_block) * HEAD_DIM
    qbar = MEANS + (k_means + ((b * H + h0) * q_rows + first_block + qb).to(tl.int64)) * HEAD_DIM
    scores = tl.zeros([QB, NKP], dtype=tl.float32)
    qs, kb = _means_slice(qbar, kbar, 0, pooled_qb, offs_k < k_pooled, q_rows, unit_heads, HEAD_DIM, D_CHUNK)
    for d0 in range(0, HEAD_DIM, D_CHUNK):
        more = d0 + D_CHUNK < HEAD_DIM
        qs_next, kb_next = _means_slice(qbar, kbar, d0 + D_CHUNK, pooled_qb & more, (offs_k < k_pooled) & more, q_rows,
                                        unit_heads, HEAD_DIM, D_CHUNK)
        if QB >= 16:
            scores = tl.dot(qs, tl.trans(kb), scores, input_precision="ieee")
        else:
            scores += tl.sum(kb[None, :, :] * qs[:, None, :], axis=2)
        qs, kb = qs_next, kb_next

    # the own block is always kept; under causal only earlier blocks compete
    own = qb + n_k - n_q
    if CAUSAL:
        eligible = offs_k[None, :] < own[:, None]
    else:
        eligible = (offs_k[None, :] != own[:, None]) & (offs_k < n_k)[None, :]
    rest = tl.where(eligible, scores, float("-inf"))
    chosen = _pick(rest, _share(rest, eligible, scale, THRESHOLD), (offs_k[None, :] == own[:, None]).to(tl.int32),
                   count, threshold, offs_k)
    chosen = tl.where(valid_qb[:, None], chosen, 0)
    n_picked = tl.sum(chosen, axis=1)
    picked = PICKED + (unit.to(tl.int64) * q_rows + first_block + qb) * NKP
    tl.store(picked[:, None] + tl.cumsum(chosen, axis=1) - 1, tl.broadcast_to(offs_k[None, :], [QB, NKP]),
             mask=chosen != 0)
    for hh in range(unit_heads):
        tl.store(SEL + (((b * H + h0 + hh).to(tl.int64) * q_rows + first_block + qb) * k_cols)[:, None]
                 + offs_k[None, :], chosen.to(tl.uint8), mask=valid_qb[:, None] & (offs_k < k_cols)[None, :])
    tl.debug_barrier()  # the rows below read the choice back from memory

    rows_per_block = block // BLOCK_M
    first = part * QB * rows_per_block
    last = tl.minimum(first + QB * rows_per_block, tiles_m)
    most_picked = tl.max(n_picked, axis=0)
    for r0 in range(first, last, ROWS):
        rows = r0 + tl.arange(0, ROWS)
        valid_rows = rows < last
        row_qb = rows // rows_per_block
        # each row's count of chosen blocks, from its query block's (held in registers)
        n_row = tl.sum(tl.where(row_qb[:, None] == qb[None, :], n_picked[None, :], 0), axis=1)
        n_row = tl.where(valid_rows, n_row, 0)
        picked_rows = PICKED + (unit.to(tl.int64) * q_rows + first_block + row_qb) * NKP
        for hh in range(unit_heads):
            bh = (b * H + h0 + hh).to(tl.int64)
            _write_rows(rows, valid_rows, bh, (h0 + hh) * plan_per_head,
                        SEL + (bh * q_rows + first_block + row_qb) * k_cols, picked_rows, n_row, most_picked,
                        STATIC_PTR, STATIC_KT, STATIC_CLS, BLOCK_PTR, CAND_KT, CAND_CLS, s_ptr, s_cand, b_ptr, b_row,
                        cand, FULL_NUM, FULL_IDX, PART_NUM, PART_IDX, s_num, s_idx, s_idx_m, block, line0, key_tiles,
                        False, SC, KPC, TPB, BLOCK_N)


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
    PROGRAMS, DOCINFO,  # packed documents (DOCS): each program's (document, tile row), as select_blocks'
    H, M, N, n_k, k_pooled, tiles_m, key_tiles, block, count, threshold, scale, group, unit_heads,
    words_rows, state_rows, k_rows, k_cols,  # rows per head of WORDS, of STATE and PICKED, of KBAR; STATE's columns
    CAUSAL: tl.constexpr, THRESHOLD: tl.constexpr, HEAD_DIM: tl.constexpr, D_CHUNK: tl.constexpr,
    SUB_M: tl.constexpr, NKP: tl.constexpr, WORDS_PER_ROW: tl.constexpr, SC: tl.constexpr, KPC: tl.constexpr,
    TPB: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOCS: tl.constexpr,
):
    units = H // unit_heads
    b = tl.program_id(1) // units
    h0 = (tl.program_id(1) % units) * unit_heads
    if _idle(PROGRAMS, DOCS):
        return
    # with DOCS, a document alone, as a sequence of its own: q and the words moved to its first token
    row, start, length, first_block, line0, n_k, tiles_m, key_tiles = _part(PROGRAMS, DOCINFO, n_k, tiles_m,
                                                                             key_tiles, block, BLOCK_M, BLOCK_N, DOCS)
    if DOCS:
        Q += start.to(tl.int64) * stride_qm
        WORDS += start.to(tl.int64) * WORDS_PER_ROW
        M = length
        N = length
        k_pooled = n_k
    offs_k = tl.arange(0, NKP)
    kbar = KBAR + ((b * (H // group) + h0 // group).to(tl.int64) * k_rows + first_block) * HEAD_DIM
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
            kb = tl.load(kbar + offs_k[:, None] * HEAD_DIM + offs_d[None, :], mask=(offs_k < k_pooled)[:, None],
                         other=0.0)
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
            word_rows = WORDS + ((b * H + h0 + hh).to(tl.int64) * words_rows) * WORDS_PER_ROW
            tl.store(word_rows + offs_m[:, None] * WORDS_PER_ROW + tl.arange(0, WORDS_PER_ROW)[None, :], words,
                     mask=valid_m[:, None])
        any_row = any_row | tl.max(chosen, axis=0)
        all_rows = all_rows & tl.min(tl.where(valid_m[:, None], chosen, 1), axis=0)
    picked = PICKED + (tl.program_id(1).to(tl.int64) * state_rows + line0 + row) * NKP
    tl.store(picked + tl.cumsum(any_row, axis=0) - 1, offs_k, mask=any_row != 0)
    for hh in range(unit_heads):
        state_row = STATE + ((b * H + h0 + hh).to(tl.int64) * state_rows + line0 + row) * k_cols
        tl.store(state_row + offs_k, (any_row | (all_rows << 1)).to(tl.uint8), mask=offs_k < k_cols)
    tl.debug_barrier()  # the row below reads the state back from memory

    rows = row + tl.arange(0, 1)  # one tile row, as the row writer takes them
    n_picked = tl.zeros([1], dtype=tl.int32) + tl.sum(any_row, axis=0)
    for hh in range(unit_heads):
        bh = (b * H + h0 + hh).to(tl.int64)
        _write_rows(rows, rows < tiles_m, bh, (h0 + hh) * plan_per_head,
                    STATE + (bh * state_rows + line0 + rows) * k_cols, picked + 0 * rows, n_picked,
                    tl.max(n_picked, axis=0), STATIC_PTR, STATIC_KT, STATIC_CLS, BLOCK_PTR, CAND_KT, CAND_CLS, s_ptr,
                    s_cand, b_ptr, b_row, cand, FULL_NUM, FULL_IDX, PART_NUM, PART_IDX, s_num, s_idx, s_idx_m, block,
                    line0, key_tiles, True, SC, KPC, TPB, BLOCK_N)


def route(plan, q, k, documents=None) -> dict:
    """Select on the device (q `[B, H, M, D]`, k `[B, Hkv, N, D]`) and write the index tables of
    one call: `kv_num_blocks`, `kv_indices`, `full_kv_num_blocks`, `full_kv_indices` per (batch x
    head) and what the attention kernel reads besides (`row_order`, `block`, the choice).
    `plan`: a `RoutedPlan`, or an object with its tensors and its topk's options (`block`,
    `count`, `threshold`, `shared`, `query`). Two kernel launches and five allocations.

    `documents` (int32 cumulative boundaries, M == N): each document routes alone (the module's
    docstring; `Documents`); the tables' lines are then (document, tile row) pairs, document after document
    (line `first line + row`, the first line as `programs.document_tiles` numbers it), holding
    document-relative key tiles; the choice is per document block (`block_choice [B, H, blocks,
    nK]`, a document's blocks from its first, key blocks relative to it; per token, words of
    document-relative key blocks); `lines` says for `transposed` whose each line is."""
    import torch
    from triton import next_power_of_2 as pow2

    B, H, M, D = q.shape
    Hkv, N = k.shape[1], k.shape[2]
    b = plan.block
    n_q, n_k, Mt, key_tiles = -(-M // b), -(-N // b), -(-M // plan.block_m), -(-N // plan.block_n)
    q = q if q.stride(-1) == 1 else q.contiguous()
    k = k if k.stride(-1) == 1 else k.contiguous()
    device = q.device
    by_block = plan.query == "block"

    count = n_k if plan.count is None else plan.count - 1  # blocks picked besides the own one
    # pool only the blocks a choice depends on: under causal no query block ever competes for the
    # last key block, and without a threshold a query block with at most `count` eligible
    # blocks takes them all, whatever the scores (select_blocks skips their scores)
    k_pooled = n_k - 1 if plan.causal else n_k
    if by_block and plan.threshold is None:
        q_first = min(max(count + 1 - n_k + n_q, 0), n_q) if plan.causal else (n_q if n_k <= count else 0)
    else:
        q_first = 0
    packed = None
    if documents is not None:  # every document's blocks pooled, from tables of the documents
        packed = documents_of(documents, N, b, plan.block_m, plan.block_n)
        n_q = k_pooled = packed.blocks
        q_first = 0
    k_means = B * Hkv * (n_k if packed is None else packed.blocks)
    means = torch.empty(k_means + (B * H * n_q if by_block else 0), D, dtype=torch.float32, device=device)
    rows = min(POOL_ROWS, pow2(b))
    # rows of one thread's 16-byte loads lie 512 * warps / (D * bytes) apart (at least `warps`)
    fold = min(rows, max(POOL_WARPS, 512 * POOL_WARPS // (D * q.element_size())))
    k_programs = B * Hkv * k_pooled
    programs = k_programs + (B * H * (n_q - q_first) if by_block else 0)
    if programs:  # none: a single key block under causal, every query block taking all
        pool_blocks[(programs,)](q, q.stride(0), q.stride(1), q.stride(2), k, k.stride(0), k.stride(1), k.stride(2),
                                 means, means if packed is None else packed.spans, H, Hkv, M, N, n_q,  # (unused)
                                 n_k if packed is None else packed.blocks, b, k_means, k_pooled, k_programs, q_first,
                                 HEAD_DIM=D, ROWS=rows, FOLD=fold, DOCS=packed is not None, num_warps=POOL_WARPS)
    lines = Mt if packed is None else packed.lines
    tables = torch.empty(2, B * H, lines, plan.width, dtype=torch.int32, device=device)  # full, partial
    counts = torch.empty(2, B * H, lines, dtype=torch.int32, device=device)
    full_counts, part_counts, full_table, part_table = counts[0], counts[1], tables[0], tables[1]
    unit = H // Hkv if plan.shared == "group" else 1
    tensors = (plan.static_ptr, plan.static_kt, plan.static_cls, plan.block_ptr, plan.cand_kt, plan.cand_cls,
               0 if plan.cand_kt.shape[0] == 1 else 1, plan.static_ptr.stride(0), plan.static_kt.stride(0),
               plan.block_ptr.stride(0), plan.block_ptr.stride(1), plan.cand_kt.stride(0), full_counts, full_table,
               part_counts, part_table, full_counts.stride(0), full_table.stride(0), full_table.stride(1))
    after = (count, 2.0 if plan.threshold is None else float(plan.threshold), D ** -0.5, H // Hkv, unit)
    # per step of the row writer: KPC chosen blocks of at most TPB tiles each, SC static candidates
    # (with query=token a tile row's blocks are those any of its queries chose: many at once)
    tpb, sc = pow2(b // plan.block_n), 16
    kpc = min(16, pow2(count + 1)) if by_block else min(pow2(n_k), max(1, ROW_STEP // tpb))
    options = dict(CAUSAL=plan.causal, THRESHOLD=plan.threshold is not None, HEAD_DIM=D, SC=sc, KPC=kpc, TPB=tpb,
                   BLOCK_M=plan.block_m, BLOCK_N=plan.block_n, DOCS=packed is not None)
    out = dict(kv_num_blocks=part_counts, kv_indices=part_table, full_kv_num_blocks=full_counts,
               full_kv_indices=full_table, row_order=plan.row_order, key_tiles=key_tiles, block=b, batch=B)
    k_rows = n_k if packed is None else packed.blocks
    if packed is not None:
        out["lines"] = (packed.line_tile, packed.line_column, packed.columns)
    if by_block:
        nkp = max(16, pow2(n_k))
        qb = 16 if nkp <= DOT_KEY_BLOCKS else 1
        rows = min(pow2(qb * (b // plan.block_m)), max(1, ROW_STEP // max(kpc * tpb, sc)))
        choice = torch.empty(B, H, n_q, n_k, dtype=torch.uint8, device=device)
        picked = torch.empty(B * (H // unit), n_q, nkp, dtype=torch.int32, device=device)
        if packed is None:
            grid, where = -(-n_q // qb), (means, means)  # (no documents: the tables are never read)
        else:  # a program per group of qb blocks of one document
            where = (packed.groups(qb), packed.info)
            grid = where[0].shape[0]
        select_blocks[(grid, B * (H // unit))](
            means, choice, picked, *tensors, *where, H, n_q, n_k, k_means, k_pooled, q_first, Mt, key_tiles, b, *after,
            n_q, k_rows, n_k, NKP=nkp, QB=qb, D_CHUNK=16 if qb > 1 else max(1, min(D, 8192 // nkp)), ROWS=rows,
            num_warps=max(4, min(16, nkp // 64)), **options)
        return dict(out, block_choice=choice.view(torch.bool))
    if n_k > 1024:
        raise ValueError(f"topk(query=token) routes among at most 1024 key blocks, got {n_k}")
    nkp = max(32, pow2(n_k))
    words = torch.empty(B * H, M, nkp // 32, dtype=torch.int32, device=device)
    state = torch.empty(B * H, lines, n_k, dtype=torch.uint8, device=device)
    picked = torch.empty(B * (H // unit), lines, nkp, dtype=torch.int32, device=device)
    where = (means, means) if packed is None else (packed.line_programs, packed.info)  # a program per tile row
    select_tokens[(lines, B * (H // unit))](q, q.stride(0), q.stride(1), q.stride(2), means, words, state, picked,
                                            *tensors, *where, H, M, N, n_k, k_pooled, Mt, key_tiles, b, *after, M,
                                            lines, k_rows, n_k, D_CHUNK=min(D, 32),
                                            SUB_M=min(plan.block_m, max(16, 2048 // nkp)), NKP=nkp,
                                            WORDS_PER_ROW=nkp // 32, num_warps=4, **options)
    return dict(out, choice_words=words, key_blocks=n_k)


class Documents:
    """What the routing kernels read of packed documents (int32 cumulative boundaries [docs + 1]),
    built on the device with no host synchronisation (a dozen small tensor operations). `info`
    int32 [docs, 4]: each document's first token, length, first routing block and first table
    line (blocks and tile rows numbered document after document, as `programs.document_tiles`
    numbers tile rows); `spans` int32 [blocks, 2]: each routing block's first token and length
    (0 past the last); per table line, `line_programs` int32 [lines, 2] (its document and tile
    row; -1 past the last), `line_tile` (its row, -1 past the last) and `line_column` (its
    document's first line of the transposed tables). The counts are bounds from the boundaries'
    shape and the length N: `blocks` = ceil(N / block) + docs, `lines` = ceil(N / block_m) +
    docs, `columns` = ceil(N / block_n) + docs, each at most N (each holds a token)."""

    def __init__(self, documents, N: int, block: int, block_m: int, block_n: int):
        import torch

        docs = documents.shape[0] - 1
        starts = documents[:-1].long()
        lengths = documents[1:].long() - starts
        self.per_document = (lengths + block - 1) // block
        rows, cols = (lengths + block_m - 1) // block_m, (lengths + block_n - 1) // block_n
        self.blocks, self.lines, self.columns = (min(-(-N // b) + docs, N) for b in (block, block_m, block_n))
        self.info = torch.stack((starts, lengths, _firsts(self.per_document), _firsts(rows)), 1).to(torch.int32)
        owner, j = _enumerate(self.per_document, self.blocks)
        at = owner.clamp(min=0)
        spans = torch.stack((starts[at] + j * block, (lengths[at] - j * block).clamp(max=block)), 1)
        self.spans = torch.where(owner[:, None] >= 0, spans, 0).to(torch.int32)
        owner, row = _enumerate(rows, self.lines)
        self.line_programs = torch.stack((owner, row), 1).to(torch.int32)
        self.line_tile = torch.where(owner >= 0, row, -1)
        self.line_column = _firsts(cols)[owner.clamp(min=0)]
        self._groups = {}

    def groups(self, qb: int):
        """int32 [groups, 2]: (document, group) of every group of `qb` routing blocks of each
        document, (-1, 0) past the last."""
        import torch

        if qb not in self._groups:  # (kept with the rest: documents_of)
            n = (self.per_document + qb - 1) // qb
            self._groups[qb] = torch.stack(_enumerate(n, -(-self.blocks // qb) + n.shape[0]), 1).to(torch.int32)
        return self._groups[qb]


_DOCUMENTS = {}  # (id(documents), its version, N, block, block_m, block_n) -> (weakref, Documents)


def documents_of(documents, N: int, block: int, block_m: int, block_n: int) -> Documents:
    """`Documents`, once per boundaries tensor and shape (the layers of a model share them per
    step); not kept while a CUDA graph is captured."""
    import weakref

    import torch

    key = (id(documents), documents._version, N, block, block_m, block_n)
    hit = _DOCUMENTS.get(key)
    if hit is not None and hit[0]() is documents:
        return hit[1]
    found = Documents(documents, N, block, block_m, block_n)
    if not (documents.is_cuda and torch.cuda.is_current_stream_capturing()):
        if len(_DOCUMENTS) > 64:
            _DOCUMENTS.clear()
        _DOCUMENTS[key] = (weakref.ref(documents), found)
    return found


def _firsts(counts):
    """Where each of consecutive runs of `counts` items starts."""
    import torch

    return torch.cumsum(counts, 0) - counts


def _enumerate(counts, bound: int):
    """(owner, index) int64 [bound]: (i, j) for every j < counts[i], in order, then (-1, 0)."""
    import torch

    ends = torch.cumsum(counts, 0)
    p = torch.arange(bound, device=counts.device)
    owner = torch.searchsorted(ends, p, right=True)
    real = owner < counts.shape[0]
    at = owner.clamp(max=counts.shape[0] - 1)
    return torch.where(real, owner, -1), torch.where(real, p - (ends[at] - counts[at]), 0)


def transposed(full_kv_num_blocks, full_kv_indices, kv_num_blocks, kv_indices, key_tiles: int, lines=None) -> dict:
    """The tables the backward's dK/dV kernel reads, from a call's (`route`): per (batch x head,
    key tile) the query tiles that visit it, ascending, an entry being `query tile | choice << 30`
    like the forward's; built on the device with no host synchronisation (a dense [B*H, Nt, Mt]
    scatter, then a sort), width Mt. `lines`: a packed-documents call's (`route`'s `lines`): per
    line of the tables its tile row (-1: none) and its document's first line of the transposed
    tables, and how many there are; a line's key tile kt goes to that first line + kt. The
    counts are then views of their first Nt lines, as the backward's launch checks them: kernels
    read their documents' lines through the row stride, from each document's first."""
    import torch

    out = {}
    for name, counts, table in (("full_q", full_kv_num_blocks, full_kv_indices), ("q", kv_num_blocks, kv_indices)):
        BH, Mt, W = table.shape
        device = table.device
        tile, first, Nt = lines if lines is not None else (  # one sequence: line i is tile row i, from column 0
            torch.arange(Mt, device=device), torch.zeros(Mt, dtype=torch.int64, device=device), key_tiles)
        unused = torch.iinfo(torch.int32).max
        rows = tile.to(torch.int32).view(1, Mt, 1)
        # entries past a row's count, and lines of no row: anything
        valid = (torch.arange(W, device=device) < counts[..., None]) & (rows >= 0)
        key_tile = (first.view(1, Mt, 1) + (table & (SELECTED - 1))).clamp(0, Nt - 1)
        slot = (torch.arange(BH, device=device).view(BH, 1, 1) * Nt + key_tile) * Mt \
            + torch.arange(Mt, device=device).view(1, Mt, 1)
        dense = torch.full((BH * Nt * Mt + 1,), unused, dtype=torch.int32, device=device)
        dense.scatter_(0, torch.where(valid, slot, BH * Nt * Mt).flatten(),  # the last slot takes the unused
                       (rows.clamp(min=0) | (table & ~(SELECTED - 1))).expand(BH, Mt, W).flatten())
        dense = dense[:-1].view(BH, Nt, Mt)
        order = torch.where(dense == unused, unused, dense & (SELECTED - 1)).argsort(dim=-1)
        out[f"{name}_num_blocks"] = (dense != unused).sum(-1, dtype=torch.int32)[:, :key_tiles]
        out[f"{name}_indices"] = dense.gather(-1, order)
    return out
