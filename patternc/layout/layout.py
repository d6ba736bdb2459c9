"""`Layout`: the tiles a kernel visits, per (head, query tile), in FlexAttention's CSR format."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

EMPTY, PARTIAL, FULL = 0, 1, 2


def expand(row, lo, hi):
    """Runs [lo, hi) of columns per row -> (row, column) per entry, in order."""
    return np.repeat(row, hi - lo), columns(lo, hi)


def columns(lo, hi, dtype=np.int64):
    """The columns of runs [lo, hi), run after run, as one array of `dtype`."""
    counts = hi - lo
    ends = np.cumsum(counts)
    col = np.ones(int(ends[-1]) if len(ends) else 0, dtype)  # +1 per entry, a jump at each run's start
    nonempty = counts > 0
    lo, hi, starts = lo[nonempty], hi[nonempty], (ends - counts)[nonempty]
    col[starts] = lo - np.append(0, hi[:-1] - 1)
    return np.cumsum(col, out=col)


def row_order(full_counts, partial_counts):
    """int32 `[H, Mt]` from tile counts `[H, Mt]` (torch): query tiles by decreasing number of
    visited key tiles (partial tiles weigh a little more), the longest programs first."""
    import torch

    work = full_counts.float() + 1.25 * partial_counts.float()
    return torch.argsort(work, dim=1, descending=True, stable=True).to(torch.int32)


# tables are filled CHUNK entries at a time (passes over a block that stays in the cache)
CHUNK = 1 << 18


def _csr(rows: np.ndarray, lo: np.ndarray, hi: np.ndarray, n_rows: int):
    """(counts [n_rows], indices [n_rows, width]) int32 of the columns of runs [lo, hi) per row,
    the runs non-empty, sorted by row then column, not overlapping. Straight from the runs: a row's
    entry j is j + (lo - its position) of the run holding it, so the table is a prefix sum of that
    offset's changes, put at each run's first position (no per-entry index arrays)."""
    length = hi - lo
    small = int(length.sum()) + n_rows < 2**31  # positions fit int32 (fresh memory is the cost)
    ends = np.cumsum(length, dtype=np.int32 if small else np.int64)
    bounds = np.searchsorted(rows, np.arange(n_rows + 1))
    before = np.concatenate([np.zeros(1, ends.dtype), ends])[bounds]  # entries before each row
    counts = np.diff(before).astype(np.int32)
    width = max(int(counts.max(initial=0)), 1)
    indices = np.zeros((n_rows, width), dtype=np.int32)
    if not len(rows):
        return counts, indices
    start = np.subtract(ends, length, out=ends)
    start -= before[rows]  # each run's first position in its row
    at = np.multiply(rows, width, dtype=np.int64 if n_rows * width >= 2**31 else start.dtype)
    at += start
    if len(rows) == before[-1]:  # single tiles: put each one
        indices.reshape(-1)[at] = lo
        return counts, indices
    offset = (lo - start).astype(np.int32)
    change = np.diff(offset, prepend=np.int32(0))
    j = np.arange(width, dtype=np.int32)
    step = max(CHUNK // width, 1)
    for r0 in range(0, n_rows, step):
        r1 = min(r0 + step, n_rows)
        a, b = bounds[r0], bounds[r1]
        block = indices[r0:r1]
        if a == b:
            continue
        flat = block.reshape(-1)
        flat[at[a:b] - r0 * width] = change[a:b]
        flat[at[a] - r0 * width] = offset[a]  # the block's prefix sum starts at 0
        np.cumsum(flat, dtype=np.int32, out=flat)
        block += j
        block *= j < counts[r0:r1, None]  # entries past a row's count are 0
    return counts, indices


def _stack(per_head, build, device):
    """Stack a per-head build; heads that share one tiling share one array (expanded, no copy)."""
    import torch

    unique = {id(t): t for t in per_head}
    if len(unique) == 1:
        arrays = build(per_head[0])
        return [torch.as_tensor(a, device=device)[None].expand(len(per_head), *a.shape) for a in arrays]
    built = {key: build(t) for key, t in unique.items()}
    parts = list(zip(*(built[id(t)] for t in per_head)))
    out = []
    for arrays in parts:  # one array per head, index rows padded with zeros to the widest
        stacked = np.zeros((len(arrays), *np.max([a.shape for a in arrays], axis=0)), arrays[0].dtype)
        for h, a in enumerate(arrays):
            stacked[(h, *map(slice, a.shape))] = a
        out.append(torch.as_tensor(stacked, device=device))
    return out


@dataclass(frozen=True, eq=False)
class Layout:
    """Which key tiles each (head, query tile) visits, split into full and partial tiles.

    All index tensors are int32 torch tensors (heads that share a tiling share memory):

    - `full_kv_num_blocks [H, Mt]`, `full_kv_indices [H, Mt, W]`: key tiles where every
      element is visible (the kernel skips the predicate there);
    - `kv_num_blocks [H, Mt]`, `kv_indices [H, Mt, W]`: partial key tiles (predicate applied);
    - `full_q_num_blocks / full_q_indices / q_num_blocks / q_indices [H, Nt, ...]`: the
      transpose (key tile -> query tiles), for a backward pass; built on first read.

    Row r of `*_indices` holds `*_num_blocks[h, r]` valid entries, ascending; the rest is 0.
    `Mt = ceil(M / block_m)`, `Nt = ceil(N / block_n)`. `permutation` is None (tokens in their
    own order), a `ResidueOrder` or a `BoxOrder` (tiles count layout positions;
    `permutation.order()` gives the token at each position).
    """

    M: int
    N: int
    heads: int
    block_m: int
    block_n: int
    kv_num_blocks: object
    kv_indices: object
    full_kv_num_blocks: object
    full_kv_indices: object
    q_num_blocks: object = field(default=None, repr=False)  # the transposes: built on first read
    q_indices: object = field(default=None, repr=False)
    full_q_num_blocks: object = field(default=None, repr=False)
    full_q_indices: object = field(default=None, repr=False)
    pattern: object = field(default=None, repr=False)
    permutation: object = None
    refined_tiles: int = 0
    _runs: tuple = field(default=(), repr=False)
    _runs_cache: dict = field(default_factory=dict, repr=False)
    data: dict = field(default_factory=dict, repr=False)  # run-time inputs of routed patterns (q, k)

    @classmethod
    def from_runs(cls, per_head, M, N, block_m, block_n, pattern=None, refined_tiles=0, device="cpu",
                  permutation=None, data=None):
        """From per-head `(partial, full)` runs: `(qt, lo, hi)` arrays, query tile qt visiting key
        tiles [lo, hi), runs non-empty, sorted by (qt, lo), not overlapping; a head may reuse
        another's tuple."""
        n_qt = -(-M // block_m)

        def forward(t):
            return (*_csr(*t[0], n_qt), *_csr(*t[1], n_qt))

        kv, kvi, fkv, fkvi = _stack(per_head, forward, device)
        return cls(M, N, len(per_head), block_m, block_n, kv, kvi, fkv, fkvi,
                   pattern=pattern, permutation=permutation, refined_tiles=refined_tiles, _runs=tuple(per_head),
                   data=dict(data or {}))

    @classmethod
    def from_tiles(cls, per_head, M, N, block_m, block_n, **kw):
        """From per-head `(qt, kt, kind)` arrays sorted by (qt, kt); a head may reuse another's tuple."""
        runs = {id(t): tuple((t[0][t[2] == k], t[1][t[2] == k], t[1][t[2] == k] + 1) for k in (PARTIAL, FULL))
                for t in per_head}
        layout = cls.from_runs([runs[id(t)] for t in per_head], M, N, block_m, block_n, **kw)
        layout.__dict__["_tiles"] = tuple(per_head)
        return layout

    @cached_property
    def _tiles(self) -> tuple:
        """Per head `(qt, kt, kind)`, one entry per visited tile sorted by (qt, kt) (heads that share
        runs share them): the runs expanded, on first use."""

        def tiles(runs):
            parts = [(*expand(*r), np.full(int((r[2] - r[1]).sum()), kind, np.int8)) for kind, r in zip((PARTIAL, FULL), runs)]
            qt, kt, kind = (np.concatenate(x) for x in zip(*parts))
            order = np.lexsort((kt, qt))
            return qt[order], kt[order], kind[order]

        built = {id(t): tiles(t) for t in self._runs}
        return tuple(built[id(t)] for t in self._runs)

    def _transpose(self):
        """Build the transposed tables (`q_num_blocks`, ...) from the tiles."""
        n_kt = self.shape[2]

        def backward(t):
            qt, kt, kind = t
            # tiles come sorted by (qt, kt): a stable sort by kt gives (kt, qt) order
            order = np.argsort(kt.astype(np.uint16) if n_kt <= 1 << 16 else kt, kind="stable")
            qt, kt, kind = qt[order], kt[order], kind[order]
            f, p = kind == FULL, kind == PARTIAL
            return (*_csr(kt[p], qt[p], qt[p] + 1, n_kt), *_csr(kt[f], qt[f], qt[f] + 1, n_kt))

        tables = _stack(self._tiles, backward, self.kv_num_blocks.device)
        for name, table in zip(_TRANSPOSED, tables):
            object.__setattr__(self, name, table)

    # ------------------------------------------------------------------ summaries

    @property
    def shape(self) -> tuple[int, int, int]:
        """(H, Mt, Nt): heads, query tiles, key tiles."""
        return self.heads, -(-self.M // self.block_m), -(-self.N // self.block_n)

    @cached_property
    def counts(self) -> dict:
        """Tile counts over all heads: full, partial, empty, total."""
        full = int(self.full_kv_num_blocks.sum())
        partial = int(self.kv_num_blocks.sum())
        H, Mt, Nt = self.shape
        return {"full": full, "partial": partial, "empty": H * Mt * Nt - full - partial, "total": H * Mt * Nt}

    @property
    def density(self) -> float:
        """Visited tiles / all tiles."""
        c = self.counts
        return (c["full"] + c["partial"]) / c["total"]

    @property
    def ideal_speedup(self) -> float:
        """1 / density: the FLOP-bound speedup over dense attention at this tile shape."""
        return float("inf") if self.density == 0 else 1 / self.density

    def block_map(self):
        """int8 `[H, Mt, Nt]`: 0 skipped, 1 partial, 2 full (in the layout's token order)."""
        import torch

        H, Mt, Nt = self.shape
        out = np.zeros((H, Mt, Nt), dtype=np.int8)
        for h, (qt, kt, kind) in enumerate(self._tiles):
            out[h, qt, kt] = kind
        return torch.from_numpy(out)

    @cached_property
    def empty_rows(self) -> list:
        """Per head, the query rows with no visible key (int64 arrays). Computed on first use:
        rows whose tiles are all skipped, plus rows of visited tiles that evaluate empty."""
        import torch

        from ..ir.pattern import under_causal
        from ..primitives import Context

        out, cache = [], {}
        sections = self.pattern.sections(self.heads)
        for h in range(self.heads):
            tiles = self._tiles[h]
            if id(tiles) in cache:
                out.append(cache[id(tiles)])
                continue
            qt, kt, _ = tiles
            node = next(s.expr for s in sections if s.lo <= h <= s.hi)
            ctx = Context(self.M, self.N, h, self.pattern.grid_shape(self.M, self.N),
                          dict(self.data, causal=under_causal(node)))
            seen = np.zeros(self.M, bool)
            to_token = self.permutation.tokens if self.permutation is not None else (lambda p: p)
            for t in np.unique(qt):
                rows = to_token(torch.arange(t * self.block_m, min((t + 1) * self.block_m, self.M)))
                keys = to_token(torch.as_tensor(np.concatenate([
                    np.arange(c * self.block_n, min((c + 1) * self.block_n, self.N)) for c in kt[qt == t]])))
                vis = torch.as_tensor(node.visible(ctx, rows[:, None], keys[None, :]))
                seen[rows.numpy()] = vis.expand(len(rows), len(keys)).any(1).numpy()
            cache[id(tiles)] = np.nonzero(~seen)[0]
            out.append(cache[id(tiles)])
        return out

    @cached_property
    def row_order(self):
        """int32 `[H, Mt]`: query tiles by decreasing number of visited key tiles (partial tiles
        weigh a little more), so a kernel can start its longest programs first."""
        return row_order(self.full_kv_num_blocks, self.kv_num_blocks)

    def runs(self, max_runs: int = 4):
        """The visited tiles of each row as runs of consecutive key tiles, for kernels that loop
        over ranges instead of loading indices: `(full [H, Mt, Rf, 2], partial [H, Mt, Rp, 2])`
        int32 (start tile, end tile exclusive; unused runs are (0, 0)), or None when some row has
        more than `max_runs` runs of one kind."""
        cached = self._runs_cache.get(max_runs, False)
        if cached is not False:
            return cached
        _, Mt, _ = self.shape

        def build(runs):
            qt, lo, hi = runs
            if not len(qt):
                return np.zeros((Mt, 1, 2), np.int32)
            new = np.ones(len(qt), bool)
            new[1:] = (qt[1:] != qt[:-1]) | (lo[1:] != hi[:-1])  # runs that touch are one
            starts = np.nonzero(new)[0]
            ends = np.append(starts[1:], len(qt))
            rows = qt[starts]
            counts = np.bincount(rows, minlength=Mt)
            width = max(int(counts.max(initial=0)), 1)
            out = np.zeros((Mt, width, 2), np.int32)
            slot = np.arange(len(starts)) - (np.cumsum(counts) - counts)[rows]
            out[rows, slot, 0] = lo[starts]
            out[rows, slot, 1] = hi[ends - 1]
            return out

        import torch

        result = []
        for kind in (FULL, PARTIAL):
            per = {id(t): build(t[1] if kind == FULL else t[0]) for t in self._runs}  # (partial, full)
            width = max(a.shape[1] for a in per.values())
            if width > max_runs:
                self._runs_cache[max_runs] = None
                return None
            arrays = [np.pad(per[id(t)], ((0, 0), (0, width - per[id(t)].shape[1]), (0, 0))) for t in self._runs]
            result.append(torch.as_tensor(np.stack(arrays), device=self.kv_num_blocks.device))
        self._runs_cache[max_runs] = tuple(result)
        return self._runs_cache[max_runs]

    def block_tables(self) -> tuple:
        """The tables of bits a kernel's predicate reads for primitives whose rule looks up a
        table (`random`): int32 `[H, rows, words]` each, on the layout's device, built on first
        use (see `patternc.primitives.tables.kernel_tables`); () for arithmetic rules."""
        if "tables" not in self._runs_cache:
            from ..primitives.tables import kernel_tables

            self._runs_cache["tables"] = kernel_tables(self.pattern, self.M, self.N, self.heads,
                                                       self.kv_num_blocks.device)
        return self._runs_cache["tables"]

    def summary(self) -> dict:
        c = self.counts
        visited = c["full"] + c["partial"]
        return {
            "M": self.M, "N": self.N, "heads": self.heads, "block": f"{self.block_m}x{self.block_n}",
            "density": self.density, "ideal_speedup": self.ideal_speedup,
            "full": c["full"], "partial": c["partial"], "empty": c["empty"],
            "partial_share": c["partial"] / visited if visited else 0.0, "refined_tiles": self.refined_tiles,
        }

    # ------------------------------------------------------------------ interop

    def to_flex_block_mask(self, batch: int = 1):
        """The same layout as a FlexAttention `BlockMask` (mask_mod from `Pattern.mask_mod`)."""
        import torch
        from torch.nn.attention.flex_attention import BlockMask

        H, Mt, Nt = self.shape

        def widen(x):  # BlockMask wants index rows as wide as the key tiles
            x = x.contiguous()
            pad = Nt - x.shape[-1]
            return torch.nn.functional.pad(x, (0, pad)) if pad > 0 else x

        def b(x):
            return x.contiguous()[None].expand(batch, *x.shape).contiguous()

        if self.permutation is not None:
            from ..errors import PatternError

            raise PatternError(f"this layout orders tokens in {self.permutation.name}, which FlexAttention can't "
                               "follow",
                               None, "build it with pattern.layout(..., order='natural')")
        mask_mod = (self.pattern.mask_mod(self.M, self.N, self.heads, q=self.data.get("q"), k=self.data.get("k"),
                                          documents=self.data.get("documents"))
                    if self.pattern is not None else None)
        return BlockMask.from_kv_blocks(
            b(self.kv_num_blocks), b(widen(self.kv_indices)), b(self.full_kv_num_blocks),
            b(widen(self.full_kv_indices)), BLOCK_SIZE=(self.block_m, self.block_n), mask_mod=mask_mod,
            seq_lengths=(self.M, self.N))


class _Transposed:
    """A transposed table of `Layout`, built on first read (`Layout._transpose`): only a backward
    pass reads them, and a key tile that every query tile visits (a sink) makes them as wide as
    there are query tiles, Mt x Nt entries."""

    def __init__(self, name):
        self.name = name

    def __get__(self, layout, owner=None):
        if layout is None:
            return self
        if layout.__dict__.get(self.name) is None:
            layout._transpose()
        return layout.__dict__[self.name]

    def __set__(self, layout, value):
        layout.__dict__[self.name] = value


_TRANSPOSED = ("q_num_blocks", "q_indices", "full_q_num_blocks", "full_q_indices")
for _name in _TRANSPOSED:  # after @dataclass, which reads their defaults (None: not built yet)
    setattr(Layout, _name, _Transposed(_name))
