# The routed family of the benchmark suite (shared/BENCH_SUITE.md #9): blocks chosen at run time
# from the queries and keys.

# 9 moba: per query block of 512, its own block (causal) + the top-3 earlier key blocks by q̄·k̄ (MoBA)
pattern moba: causal & topk(4, block=512)
