"""Block tables: primitives whose rule is a lookup `table[h, Q, K]` (random, topk).

`lookup` evaluates the lookup in every domain: torch index tensors (the reference mask),
intervals (exact tile classification through 2-D prefix sums), plain ints, and symbols where
a rule is traced for a kernel (`AS_ARGUMENT`): there the lookup stays a term `table(slot, h, Q, K)`
and the kernel receives the table as its tensor argument `slot`, built on the host by
`kernel_tables` (the static primitives that `per_head_tables`, through their `Primitive.table`
hook; routed ones get theirs from the routing kernels). FlexAttention's mask_mod reads the same
tables, as plain tensors.
"""
from __future__ import annotations

import numpy as np

from ..ir.expr import Interval, Sym, Term, Truth, _is_torch

# a `Context.data` key: the rule is traced with its tables as arguments, `table_primitives` in order
AS_ARGUMENT = "tables as arguments"


def table_slot(node, ctx) -> int | None:
    """`node`'s table argument where ctx traces tables as arguments (`AS_ARGUMENT`), else None."""
    slots = ctx.data.get(AS_ARGUMENT)
    return None if slots is None else slots.index(node)


def lookup(table_for_head, h, Q, K, slot: int | None = None):
    """`table[h, Q, K]` for `table_for_head(head) -> bool ndarray [nQ, nK]` (called only where
    the lookup is evaluated: traced, with the table an argument `slot`, it is `table(slot, h, Q, K)`)."""
    if isinstance(Q, Interval) or isinstance(K, Interval):
        head = int(Interval.of(h).lo.reshape(-1)[0])
        return rectangle_truth(_table_sums(table_for_head(head)), Interval.of(Q), Interval.of(K))
    if isinstance(Q, Sym) or isinstance(K, Sym):
        if slot is None:
            raise NotImplementedError("a table lookup is traced only where the table is an argument (kernels)")
        return Sym(Term("table", tuple(x.term if isinstance(x, Sym) else Term.const(x) for x in (slot, h, Q, K))))
    if _is_torch(Q) or _is_torch(K):
        import torch

        ref = Q if _is_torch(Q) else K
        hs = range(int(h.max()) + 1) if _is_torch(h) else [int(h)]
        table = torch.as_tensor(np.stack([table_for_head(i) for i in hs]), device=ref.device)
        nQ, nK = table.shape[1:]
        hidx = h if _is_torch(h) else 0
        inside = (Q >= 0) & (Q < nQ) & (K < nK)  # query positions are negative where M > N
        return table[hidx, Q.clamp(0, nQ - 1), K.clamp(max=nK - 1)] & inside
    t = table_for_head(int(h))
    return bool(t[Q, K]) if 0 <= Q < t.shape[0] and K < t.shape[1] else False


def rectangle_truth(sums: np.ndarray, rows: Interval, cols: Interval) -> Truth:
    """Is some / every entry of a bool table true over rectangles rows x cols (exactly, from its
    prefix sums `_prefix_sums(table)`)? Entries outside the table are false (query positions
    before the first key, where M > N)."""
    n_rows, n_cols = sums.shape[0] - 1, sums.shape[1] - 1
    r0, r1 = np.clip(rows.lo, 0, n_rows), np.clip(rows.hi + 1, 0, n_rows)
    c0, c1 = np.clip(cols.lo, 0, n_cols), np.clip(cols.hi + 1, 0, n_cols)
    count = sums[r1, c1] - sums[r0, c1] - sums[r1, c0] + sums[r0, c0]
    area = np.maximum(rows.hi + 1 - rows.lo, 0) * np.maximum(cols.hi + 1 - cols.lo, 0)
    return Truth(count > 0, count < area)


# a layout classifies tiles against one table many times (chunks, refinement): the prefix sums of
# the last tables, up to SUMS_BYTES of them, keyed by the table's memory (an entry holds its
# table, which nothing mutates, so the memory can't be another table's while it is cached)
_SUMS: dict = {}
SUMS_BYTES = 1 << 28


def _table_sums(table: np.ndarray) -> np.ndarray:
    key = (table.__array_interface__["data"][0], table.shape, table.strides, table.dtype.str)
    if key in _SUMS:
        return _SUMS[key][1]
    sums = _prefix_sums(table)
    while _SUMS and sum(s.nbytes for _, s in _SUMS.values()) + sums.nbytes > SUMS_BYTES:
        _SUMS.pop(next(iter(_SUMS)))
    if sums.nbytes <= SUMS_BYTES:
        _SUMS[key] = (table, sums)
    return sums


def _prefix_sums(table: np.ndarray) -> np.ndarray:
    dtype = np.int32 if table.size < 2**31 else np.int64  # counts up to the table's size
    sums = np.zeros((table.shape[0] + 1, table.shape[1] + 1), dtype=dtype)
    sums[1:, 1:] = table
    np.cumsum(sums, 0, out=sums)
    return np.cumsum(sums, 1, out=sums)


def table_primitives(exprs) -> list:
    """The distinct static primitives of `exprs` whose rule looks up a table (`per_head_tables`,
    not `routed`), in order of first appearance: the table arguments of a kernel, in order."""
    out = []
    for expr in exprs:
        for node in expr.walk():
            if not node.children() and node.per_head_tables and not node.routed and node not in out:
                out.append(node)
    return out


def rule_tables(pattern, M: int, N: int, heads: int) -> list[np.ndarray]:
    """The tables `pattern`'s rules look up at lengths M, N, one per `table_primitives` entry:
    bool `[heads, rows, cols]` (`Primitive.table`, in blocks where the primitive has `block=`)."""
    sections = pattern.sections(heads)
    out = []
    for node in table_primitives([s.expr for s in sections]):
        section = next(s for s in sections if any(n == node for n in s.expr.walk()))
        ctx = pattern.context(section, M, N, 0)
        p = node.params(ctx)
        b = getattr(p, "block", None)
        table_for_head = node.table(p, ctx if b is None else ctx.blocked(b))
        if table_for_head is None:
            raise node.missing_hook("table", "a kernel reading its table")
        out.append(np.stack([table_for_head(h) for h in range(heads)]))
    return out


def kernel_tables(pattern, M: int, N: int, heads: int, device="cpu") -> tuple:
    """The tables a kernel of `pattern` receives (`rule_tables`) as int32 `[heads, rows, words]`,
    entry `[h, r, c]` being bit `c % 32` of word `c // 32`."""
    import torch

    return tuple(torch.as_tensor(pack_bits(t), device=device) for t in rule_tables(pattern, M, N, heads))


def pack_bits(table: np.ndarray) -> np.ndarray:
    """bool `[H, rows, cols]` -> int32 `[H, rows, ceil(cols / 32)]`, column c in bit c % 32 of word c // 32."""
    H, rows, cols = table.shape
    padded = np.zeros((H, rows, 32 * max(1, -(-cols // 32))), dtype=bool)
    padded[..., :cols] = table
    return np.packbits(padded, axis=-1, bitorder="little").view("<i4").astype(np.int32)
