"""Routed patterns (`topk`) at run time.

A routed pattern's tiles depend on q and k, but only through one bit per (key block, query
block): whether topk chose it. With blocks made of whole tiles, every tile's class is one of
two static layouts, the pattern with topk replaced by `full` (chosen) or by nothing (not
chosen). Both are built analytically once per shape (`routed_plan`); per call Triton kernels
(`routing.py`) pool, score and select on the device and write each tile row's index tables
from the static part's tiles and the chosen blocks' (no host synchronisation, no K/V gathers,
no N x N buffers). Partial tiles carry the choice to the attention kernel in their index
entries (bit 30), where the predicate reads it; with `query=token` each query row reads its
own choice from a bit per key block.

Packed documents (`documents=`): each document routes alone, as the sequence it is (see
`patternc.ir.documents`). The plan is the one of the packed length (a document is never longer,
and the rules read no length), in document-relative tiles; the routing kernels pool each
document's blocks, choose among its own and write one table line per (document, tile row),
document after document, clipped at its end. The attention kernel's programs (one per document
tile, `codegen/programs.py`) move the tables' base to their document's first line, as they move
q, k and v to its first token.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache, partial

import numpy as np

from ..errors import PatternError
from ..ir.pattern import Pattern, under_causal
from ..layout import FULL, PARTIAL
from ..layout.build import build_runs
from ..layout.cache import cached_layout
from ..layout.layout import columns, row_order
from ..layout.routed import pieces, routed_node, static_variants
from ..primitives import Primitive
from ..primitives.tables import kernel_tables

SELECTED_BIT = 1 << 30


@dataclass(frozen=True, eq=False)
class RoutedPlan:
    """What a routed pattern needs per shape, built once from its two static layouts: the
    candidate tiles of every tile row (the union of both layouts, sorted by key tile) with their
    class when their key block is chosen / not chosen (`cls` = chosen | other << 2), where each
    key block's candidates start (`block_ptr [Hp, Mt, nK+1]`), and the static part's candidates
    (other class not empty: `static_*`). int tensors on the device, Hp = 1 when every head has
    the same plan. `width`: the index tables' width; `row_order`: longest rows first.
    `layout(q, k)` runs the selection kernels."""

    topk: Primitive
    causal: bool
    block_m: int
    block_n: int
    width: int
    row_order: object
    static_ptr: object  # [Hp, Mt+1]
    static_kt: object  # [Hp, S]
    static_cls: object
    block_ptr: object  # [Hp, Mt, nK+1]
    cand_kt: object  # [Hp, P]
    cand_cls: object
    tables: tuple = ()  # the predicate's tables of bits (static primitives that look one up: random)
    every_layout: object = None  # () -> the Layout with every key block chosen (cached)

    @cached_property
    def every(self):
        """The static Layout with every key block chosen: it orders packed documents' programs.
        Built on first use (its tables are as large as causal's; calls without documents never read it)."""
        return self.every_layout()

    # the topk's options, as the routing kernels take them (`routing.route`)
    block = property(lambda self: int(self.topk.block.value))
    count = property(lambda self: None if self.topk.count is None else int(self.topk.count.value))
    threshold = property(lambda self: self.topk.threshold)
    shared = property(lambda self: self.topk.shared)
    query = property(lambda self: self.topk.query)

    def layout(self, q, k, documents=None) -> RoutedLayout:
        """Select on the device (q `[B, H, M, D]`, k `[B, Hkv, N, D]`) and build the index tables;
        `documents` (checked int32 boundaries, M == N): within each packed document."""
        from .routing import route

        n_k = -(-k.shape[2] // self.block)
        if self.query == "token" and n_k > 1024:
            raise PatternError(f"topk(query=token) routes among at most 1024 key blocks, got {n_k}", self.topk.span,
                               "use a larger block= or query=block")
        return RoutedLayout(**route(self, q, k, documents), tables=self.tables,
                            every=None if documents is None else self.every)


def fit_tiles(pattern: Pattern, cfg: dict) -> dict:
    """`cfg` with its tiles halved (down to 16) until they divide the routing block."""
    block = static_variants(pattern)[3]
    cfg = dict(cfg)
    for side in ("block_m", "block_n"):
        while block % cfg[side] and cfg[side] > 16:
            cfg[side] //= 2
    return cfg


@lru_cache(maxsize=64)
def routed_plan(pattern: Pattern, M: int, N: int, heads: int, block_m: int, block_n: int, device: str) -> RoutedPlan:
    import torch

    chosen, nothing, count, block = static_variants(pattern)
    if block % block_m or block % block_n:
        raise PatternError(f"topk(block={block}) needs tiles that divide it, got {block_m}x{block_n}", pattern.span,
                           "pick block_m and block_n dividing the routing block")
    a = build_runs(chosen, M, N, heads, block_m, block_n, order="natural")[0]
    b = build_runs(nothing, M, N, heads, block_m, block_n, order="natural")[0]
    Mt, Nt, n_k = -(-M // block_m), -(-N // block_n), -(-N // block)
    built = {}  # heads that share both tilings share their candidates
    for h in range(heads):
        if (id(a[h]), id(b[h])) not in built:
            built[id(a[h]), id(b[h])] = _candidates(a[h], b[h], Mt, Nt, n_k, block // block_n)
    per_head = [built[id(a[h]), id(b[h])] for h in range(heads)]
    width = max(t[-1] for t in per_head) if Mt else 0
    most_other = max(int((_row_tiles(*t[0], Mt) + _row_tiles(*t[1], Mt)).max(initial=0)) for t in b)
    node = routed_node(pattern)
    if count is not None and node.query == "block":  # at most `count` chosen blocks on top of the static part
        width = min(width, most_other + count * (block // block_n))
    if all(t is per_head[0] or all(np.array_equal(x, y) for x, y in zip(per_head[0][:6], t[:6])) for t in per_head):
        per_head = per_head[:1]

    def stack(i):
        parts = [t[i] for t in per_head]
        if len(parts) == 1 and len(parts[0]):
            return torch.as_tensor(parts[0][None], device=device)
        out = np.zeros((len(parts), max(max(p.shape[0] for p in parts), 1)) + parts[0].shape[1:], parts[0].dtype)
        for h, part in enumerate(parts):
            out[h, :len(part)] = part
        return torch.as_tensor(out, device=device)

    counts = [torch.as_tensor(np.stack([_row_tiles(*t[kind], Mt) for t in a]), device=device) for kind in (1, 0)]
    every = partial(cached_layout, chosen, M, N, heads, block_m, block_n, "natural", device)
    return RoutedPlan(node, under_causal(pattern.expr), block_m, block_n, max(width, 1), row_order(*counts),
                      *(stack(i) for i in range(6)), kernel_tables(pattern, M, N, heads, device), every)


def _row_tiles(row, lo, hi, Mt: int):
    """int32 `[Mt]`: the tiles of runs (row, lo, hi) in each row."""
    return np.bincount(row, weights=hi - lo, minlength=Mt).astype(np.int32)


def _candidates(a, b, Mt: int, Nt: int, n_k: int, tpb: int):
    """One head's plan tables from the runs `(partial, full)` of its two static layouts (`a`: the
    key block chosen, `b`: not), tpb key tiles a routing block: (static_ptr, static_kt,
    static_cls, block_ptr, cand_kt, cand_cls, widest row). Made from runs of candidate tiles of
    one class (the elementary pieces between the runs' ends), never tile by tile: tables of
    columns are the runs expanded, `block_ptr` the runs' ends summed twice along each row."""
    stride = Nt + 1
    start, end, cls = pieces(a, b, stride)
    row, lo = np.divmod(start, stride)
    hi = lo + (end - start)
    row_ptr = _row_ptr(row, lo, hi, Mt)
    static = (cls >> 2) != 0
    s_row, s_lo, s_hi = row[static], lo[static], hi[static]
    # block_ptr[r, j]: candidates before row r, plus row r's below key tile min(j * tpb, Nt). Each run
    # end c adds +-max(0, j * tpb - c) along its row: second differences at j = c // tpb + 1 and + 2
    block_ptr = np.zeros((Mt, n_k + 1), np.int32)
    ends = np.concatenate([lo, hi])
    sign = np.repeat(np.array([1, -1], np.int32), len(lo))
    j = ends // tpb + 1
    first = (j * tpb - ends).astype(np.int32) * sign
    for at, value in ((j, first), (j + 1, tpb * sign - first)):
        inside = at <= n_k
        np.add.at(block_ptr, (np.concatenate([row, row])[inside], at[inside]), value[inside])
    np.cumsum(block_ptr, axis=1, out=block_ptr)
    block_ptr[:, 0] += row_ptr[:-1].astype(np.int32)
    np.cumsum(block_ptr, axis=1, out=block_ptr)
    return (_row_ptr(s_row, s_lo, s_hi, Mt).astype(np.int32), columns(s_lo, s_hi, np.int32),
            np.repeat(cls[static], s_hi - s_lo), block_ptr, columns(lo, hi, np.int32), np.repeat(cls, hi - lo),
            int(np.diff(row_ptr).max(initial=0)))


def _row_ptr(row, lo, hi, Mt: int):
    """int64 `[Mt + 1]`: the entries of runs (row, lo, hi), sorted by row, before each row."""
    before = np.concatenate([[0], np.cumsum(hi - lo)])
    return before[np.searchsorted(row, np.arange(Mt + 1))]


def select(q, k, pattern: Pattern):
    """The routed choice by the reference (torch): bool `[B, H, ceil(M/b), ceil(N/b)]` (per
    token, `[B, H, M, ceil(N/b)]`, for `query=token`), from q `[B, H, M, D]`, k `[B, Hkv, N, D]`."""
    import torch

    node = routed_node(pattern)
    static_variants(pattern)  # checks that k and block are constants
    causal = under_causal(pattern.expr)
    return torch.stack([node.select(q[b], k[b], causal) for b in range(q.shape[0])])


@dataclass(frozen=True, eq=False)
class RoutedLayout:
    """Index tables per (batch x head) in the static Layout's format (`[B*H, Mt]`,
    `[B*H, Mt, W]`), `row_order`, and the choice they came from: `selection`, bool
    `[B, H, nQ, nK]` (per token, `[B, H, M, nK]`, for `query=token`, where the kernel reads the
    packed `choice_words [B*H, M, ceil(nK/32)]` and `block`, the routing block).

    Over packed documents (`lines` set) the tables have a line per (document, tile row) and
    `selection` is per document block, document after document (`[B, H, blocks, nK]`, key blocks
    relative to the document; rows past the last document's blocks unspecified) or per token
    (key blocks relative to its document); `every` orders the kernel's programs."""

    kv_num_blocks: object
    kv_indices: object
    full_kv_num_blocks: object
    full_kv_indices: object
    row_order: object
    key_tiles: int
    block: int
    batch: int
    block_choice: object = None  # bool [B, H, nQ, nK] (query=block)
    choice_words: object = None  # int32 [B*H, M, words] (query=token)
    key_blocks: int = 0
    tables: tuple = ()  # the predicate's tables of bits, as `Layout.block_tables()`
    lines: tuple | None = None  # packed documents: per table line its tile row and first column, the columns
    every: object = None  # the static Layout with every key block chosen (RoutedPlan.every)

    def block_tables(self) -> tuple:
        return self.tables

    # the transposed tables the backward's dK/dV kernel reads, built from these on first use
    q_num_blocks = property(lambda self: self._transposed["q_num_blocks"])
    q_indices = property(lambda self: self._transposed["q_indices"])
    full_q_num_blocks = property(lambda self: self._transposed["full_q_num_blocks"])
    full_q_indices = property(lambda self: self._transposed["full_q_indices"])

    @cached_property
    def _transposed(self) -> dict:
        from .routing import transposed

        return transposed(self.full_kv_num_blocks, self.full_kv_indices, self.kv_num_blocks, self.kv_indices,
                          self.key_tiles, self.lines)

    @property
    def selection(self):
        import torch

        if self.choice_words is None:
            return self.block_choice
        BH, M, W = self.choice_words.shape
        bits = (self.choice_words[..., None] >> torch.arange(32, device=self.choice_words.device)) & 1
        return bits.view(self.batch, BH // self.batch, M, W * 32)[..., :self.key_blocks].bool()

    def block_map(self):
        """int8 `[B*H, Mt, Nt]`: 0 skipped, 1 partial, 2 full (for plots and checks)."""
        import torch

        if self.lines is not None:
            raise PatternError("a packed-documents call's tables hold a line per (document, tile row), in "
                               "document-relative tiles: no block map of the packed sequence")
        BH, Mt, _ = self.kv_indices.shape
        out = torch.zeros(BH, Mt, self.key_tiles, dtype=torch.int8)
        for table, counts, kind in ((self.kv_indices, self.kv_num_blocks, PARTIAL),
                                    (self.full_kv_indices, self.full_kv_num_blocks, FULL)):
            table, counts = table.cpu(), counts.cpu()
            b, r, c = (torch.arange(table.shape[2]) < counts[..., None]).nonzero(as_tuple=True)
            out[b, r, (table[b, r, c] & (SELECTED_BIT - 1)).long()] = kind
        return out
