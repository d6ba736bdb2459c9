"""FlexAttention export of a pattern's semantics: `mask_mod(b, h, q_idx, kv_idx) -> bool`.

(`Layout.to_flex_block_mask` exports the tiles; this is the element rule that goes with them.)
"""
from __future__ import annotations

from ..ir.expr import Term, evaluate
from ..ir.pattern import Pattern, _heads_first, under_causal
from ..primitives.tables import AS_ARGUMENT, rule_tables, table_primitives
from .routed import routed_node, static_variants


def mask_mod(pattern: Pattern, M: int, N: int | None = None, heads: int | None = None, q=None, k=None):
    """A FlexAttention `mask_mod(b, h, q_idx, kv_idx) -> bool` with `pattern`'s semantics at
    lengths M, N (for `create_block_mask`, `flex_attention` and A/B comparisons). It evaluates
    the traced rule with plain torch ops, so `torch.compile` fuses it; the tables a rule looks up
    (`random`) are tensors made here, on the CPU and on the GPU where there is one (a mask_mod
    can't move them when it is traced). Routed patterns need the `q` and `k` their blocks are
    chosen from (as `Pattern.mask`)."""
    import torch

    N = M if N is None else N
    data = {} if q is None else {"q": _heads_first(q, "q"), "k": _heads_first(k, "k")}
    if pattern.is_routed and data:
        return _routed_mask_mod(pattern, M, N, heads, data)
    sections = pattern.sections(heads)
    slots = table_primitives([s.expr for s in sections])
    found = rule_tables(pattern, M, N, sections[-1].hi + 1)
    tables = {kind: [torch.as_tensor(t, device=kind) for t in found]
              for kind in ("cpu", "cuda")[:1 + (bool(found) and torch.cuda.is_available())]}
    terms = pattern.predicate_terms(M, N, heads, {AS_ARGUMENT: slots})

    def section_mask(s, term, h, q_idx, kv_idx):
        if term is None:  # evaluate the primitives directly
            return (q_idx >= 0) & s.expr.visible(pattern.context(s, M, N, h, data), q_idx, kv_idx)
        return (q_idx >= 0) & _evaluate(term, {"q": q_idx, "k": kv_idx, "h": h, "M": M, "N": N}, tables)

    def mask_mod(b, h, q_idx, kv_idx):
        out = None
        for s, term in reversed(terms):
            v = section_mask(s, term, h, q_idx, kv_idx)
            out = v if out is None else (h <= s.hi) & v | (h > s.hi) & out
        return out

    return mask_mod


def _evaluate(term: Term, env: dict, tables: list):
    """`evaluate`, reading `table(slot, h, Q, K)` from `tables[device type][slot]` (bool
    [H, rows, cols]; False outside it): a plain tensor lookup, which vmap and torch.compile trace."""
    if term.op == "table":
        slot, h, Q, K = (_evaluate(a, env, tables) for a in term.args)
        table = tables[Q.device.type][slot]
        rows, cols = table.shape[1:]
        inside = (Q >= 0) & (Q < rows) & (K >= 0) & (K < cols)
        return table[h, Q.clamp(0, rows - 1), K.clamp(0, cols - 1)] & inside
    if term.op in ("const", "var"):
        return evaluate(term, env)
    args = {f"_{i}": _evaluate(a, env, tables) for i, a in enumerate(term.args)}
    return evaluate(Term(term.op, tuple(Term.var(name) for name in args)), args)


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
