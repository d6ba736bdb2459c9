"""The reference, by rows: the brute-force mask of a section in chunks of query rows, and the
mean visible keys per query it gives (what every closed form is checked against, and what the
numeric fit measures)."""
from __future__ import annotations

from fractions import Fraction

from ..errors import PatternError
from ..ir.pattern import Pattern

CHECK_LIMIT = 4096  # largest N the brute-force cross-check and the numeric fit evaluate


def mask_rows(pattern: Pattern, N: int, rows: range, heads: list[int], M: int | None = None, data=None,
              section=None):
    """`pattern.mask(M, N)[heads][:, rows]` without building the whole mask: bool [H, len(rows), N].

    `data`: routed patterns' `{"q": ..., "k": ...}` (see `routed_data`); pass the same dict for
    every chunk of rows so that block selections are computed once."""
    import torch

    M = N if M is None else M
    if section is not None:
        sections = [section]
    else:
        sections = pattern.sections(None if isinstance(pattern.body, tuple) else max(heads) + 1)
    store = data if data is not None else {}
    out = torch.zeros(len(heads), len(rows), N, dtype=torch.bool)
    qi = torch.arange(rows.start, rows.stop).view(1, -1, 1)
    ki = torch.arange(N).view(1, 1, N)
    for s in sections:
        idx = [i for i, h in enumerate(heads) if s.lo <= h <= s.hi]
        if not idx:
            continue
        h = torch.tensor([heads[i] for i in idx]).view(-1, 1, 1)
        # one dict per section, kept in `store`: q, k and the caches routed rules fill while
        # evaluating (the context's copy replaces it, so the next chunk finds them)
        per = store.get(("section", s.lo), {k: v for k, v in store.items() if k in ("q", "k")})
        ctx = pattern.context(s, M, N, h, per)
        store[("section", s.lo)] = ctx.data
        out[idx] = torch.as_tensor(s.expr.visible(ctx, qi, ki)).to(torch.bool).expand(len(idx), len(rows), N)
    return out


def routed_data(pattern: Pattern, M: int, N: int, heads: int, seed: int = 0, dim: int = 16) -> dict | None:
    """Random q, k (`dim` features) for routed patterns (their blocks depend on the data), else
    None. How alike the selections of different queries are depends on `dim` (in few dimensions
    the pooled keys' norms dominate the scores): to stand for real q, k, give their head_dim."""
    if not pattern.is_routed:
        return None
    import torch

    g = torch.Generator().manual_seed(seed)
    return {"q": torch.randn(heads, M, dim, generator=g), "k": torch.randn(heads, N, dim, generator=g)}


def row_counts(pattern: Pattern, section, heads: list[int], N: int, data=None):
    """Visible keys of every query row: int64 [len(heads), N] (M = N), in chunks of rows."""
    import torch

    out = torch.empty(len(heads), N, dtype=torch.int64)
    step = max(1, (1 << 22) // max(1, N * len(heads)))
    shared = dict(data) if data is not None else {}
    for q0 in range(0, N, step):
        rows = range(q0, min(N, q0 + step))
        out[:, q0:rows.stop] = mask_rows(pattern, N, rows, heads, data=shared, section=section).sum(-1)
    return out


def counts_at(pattern, section, heads, n):
    """`row_counts` at M = N = n, routed patterns on random q, k (None if invalid at n)."""
    try:
        return row_counts(pattern, section, heads, n, routed_data(pattern, n, n, max(heads) + 1))
    except PatternError:
        return None


def mean_count(pattern, section, heads, n) -> Fraction | None:
    """Mean visible keys per query at N = n, from the reference mask (None if invalid there)."""
    counts = counts_at(pattern, section, heads, n)
    return None if counts is None else Fraction(int(counts.sum()), len(heads) * n)
