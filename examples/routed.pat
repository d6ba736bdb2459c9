# The routed family of the benchmark suite (shared/BENCH_SUITE.md #9): blocks chosen at run time
# from the queries and keys.

# 9 moba: per query block of 512, its own block (causal) + the top-3 earlier key blocks by q̄·k̄ (MoBA)
pattern moba: causal & topk(4, block=512)

# MoBA's own gate: every query token chooses its 3 earlier key blocks by itself
pattern moba_token: causal & topk(4, block=512, query=token)

# VMoBA-style: the fewest blocks holding 90 % of the routing softmax, chosen per GQA group,
# on top of a local window
pattern vmoba: causal & (window(256) | topk(threshold=0.9, block=256, shared=group))
