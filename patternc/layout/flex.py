"""FlexAttention export of a pattern's semantics: `mask_mod(b, h, q_idx, kv_idx) -> bool`.

(`Layout.to_flex_block_mask` exports the tiles; this is the element rule that goes with them.)
"""
from __future__ import annotations

from ..ir.expr import evaluate
from ..ir.pattern import Pattern, _heads_first, under_causal
from .routed import routed_node, static_variants


def mask_mod(pattern: Pattern, M: int, N: int | None = None, heads: int | None = None, q=None, k=None):
    """A FlexAttention `mask_mod(b, h, q_idx, kv_idx) -> bool` with `pattern`'s semantics at
    lengths M, N (for `create_block_mask`, `flex_attention` and A/B comparisons). It evaluates
    the traced rule with plain torch ops, so `torch.compile` fuses it. Routed patterns need the
    `q` and `k` their blocks are chosen from (as `Pattern.mask`)."""
    N = M if N is None else N
    data = {} if q is None else {"q": _heads_first(q, "q"), "k": _heads_first(k, "k")}
    if pattern.is_routed and data:
        return _routed_mask_mod(pattern, M, N, heads, data)
    terms = pattern.predicate_terms(M, N, heads)

    def section_mask(s, term, h, q_idx, kv_idx):
        if term is None:  # tables: evaluate the primitives directly
            return (q_idx >= 0) & s.expr.visible(pattern.context(s, M, N, h, data), q_idx, kv_idx)
        return (q_idx >= 0) & evaluate(term, {"q": q_idx, "k": kv_idx, "h": h, "M": M, "N": N})

    def mask_mod(b, h, q_idx, kv_idx):
        out = None
        for s, term in reversed(terms):
            v = section_mask(s, term, h, q_idx, kv_idx)
            out = v if out is None else (h <= s.hi) & v | (h > s.hi) & out
        return out

    return mask_mod


def _routed_mask_mod(pattern: Pattern, M: int, N: int, heads, data):
    """The chosen blocks, then a plain lookup (traceable by vmap)."""
    chosen, nothing, _, block = static_variants(pattern)
    t_chosen, t_other = chosen.predicate_terms(M, N, heads)[0][1], nothing.predicate_terms(M, N, heads)[0][1]
    node = routed_node(pattern)
    selection = node.select(data["q"], data["k"], under_causal(pattern.expr))  # [H, rows, nK]
    rows, n_k = selection.shape[1:]
    per_token = node.query == "token"

    def routed_mask_mod(b, h, q_idx, kv_idx):
        env = {"q": q_idx, "k": kv_idx, "h": h, "M": M, "N": N}
        row = q_idx if per_token else q_idx // block
        picked = selection[h, row.clamp(max=rows - 1), (kv_idx // block).clamp(max=n_k - 1)]
        return (q_idx >= 0) & ((picked & evaluate(t_chosen, env)) | (~picked & evaluate(t_other, env)))

    return routed_mask_mod
