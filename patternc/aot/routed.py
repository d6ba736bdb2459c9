"""The parts of a routed pattern's (topk) standalone module: the attention kernel reading each
call's index tables and choice, and the plan patternc's routing kernels write those tables from
(`patternc.runtime.routed.RoutedPlan`: per tile row the candidate tiles and their classes when
their key block is chosen or not, the static part's, the row order and the tables of bits of
`random`), as `patternc.attention` builds them for the same shape."""
from __future__ import annotations

from ..errors import PatternError

# the plan's tensors, which the module's `route` reads (all int32 there: its kernels load them as such)
PLAN = ("static_ptr", "static_kt", "static_cls", "block_ptr", "cand_kt", "cand_cls", "row_order")


def routed_parts(pattern, M: int, N: int, heads: int | None, head_dim: int, cfg: dict, summary_text):
    """(kernel source, the plan's tensors by name, the layout with every key block chosen, the
    options `route` reads, cfg with tiles dividing the routing block)."""
    from ..codegen import make_spec, module_source
    from ..layout.routed import routed_node, static_variants
    from ..runtime.routed import fit_tiles, routed_plan

    every, _, _, block = static_variants(pattern)
    node = routed_node(pattern)
    if node.query == "token" and -(-N // block) > 1024:  # what the routing kernels take (routing.route)
        raise PatternError(f"topk(query=token) routes among at most 1024 key blocks, got {-(-N // block)}",
                           node.span, "use a larger block= or query=block")
    cfg = fit_tiles(pattern, cfg)
    H = heads if heads is not None else pattern.default_heads
    bm, bn = cfg["block_m"], cfg["block_n"]
    plan = routed_plan(pattern, M, N, H, bm, bn, "cpu")
    chosen = every.layout(M, N, heads=H, block_m=bm, block_n=bn, order="natural")
    spec = make_spec(pattern, heads=H, M=M, N=N, head_dim=head_dim, block_m=bm, block_n=bn,
                     num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], runs=None,
                     tma=cfg.get("memory", "pointers") == "tma", residue=None, routed=plan.query)
    summary = (f"routed: {plan.topk} chooses key blocks from q and k on every call (the routing kernels\n"
               f"below); its plan holds {int(plan.cand_kt.shape[-1])} candidate tiles per head, index tables "
               f"{plan.width} wide. With every key block chosen:\n" + summary_text(chosen))
    kernel = module_source(spec, summary=summary, backward=True)
    data = {name: getattr(plan, name) for name in PLAN}
    data["block_tables()"] = plan.tables
    routing = dict(block=plan.block, count=plan.count, threshold=plan.threshold, shared=plan.shared,
                   query=plan.query, causal=plan.causal, block_m=bm, block_n=bn, width=plan.width)
    return kernel, data, chosen, routing, cfg
