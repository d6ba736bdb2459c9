# The LLM family of the benchmark suite (shared/BENCH_SUITE.md #1-8 and #13), written exactly as
# the suite writes them. Token semantics: q query, k key, d = q - k; self-attention (M = N).

# 1 causal: k <= q (the dense baseline in sparse clothing)
pattern causal: causal

# 2 swa: 0 <= d < 1024 (Mistral, Longformer)
pattern swa: causal & window(1024)

# 3 swa_bi: abs(d) <= 1023 (Longformer encoder)
pattern swa_bi: window(1024)

# 4 blocked: q//1024 == k//1024 (block-diagonal / chunked)
pattern blocked: blocked(1024)

# 5 dilated: 0 <= d, d % 4 == 0, d <= 4*1023 (LongNet, dilated NA)
pattern dilated: causal & window(1024, dilation=4)

# 6 strided: 0 <= d and (d < 256 or d % 256 == 0) (Sparse Transformer, strided)
pattern strided: causal & (window(256) | strided(256))

# 7 power: 0 <= d and (D < 5 or D & (D-1) == 0 or k < 256), D = q//256 - k//256 (PowerAttention)
pattern power: causal & (window(5, block=256) | pow2(block=256) | sink(1, block=256))

# 8 sinks: 0 <= d and (d < 1024 or k < 4) (StreamingLLM)
pattern sinks: causal & (window(1024) | sink(4))

# 13 s2: 0 <= d and (d < 512 or (k//64) % 16 == h % 16), 16 heads (S2-Attention / DKernel)
pattern s2(heads = 16): causal & (window(512) | columns(16, phase=h % 16, block=64))
