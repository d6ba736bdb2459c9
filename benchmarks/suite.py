"""The benchmark suite of shared/BENCH_SUITE.md: name -> (pattern text, sequence lengths)."""

SUITE = {
    "causal": ("causal", (8192, 32768)),
    "swa": ("causal & window(1024)", (8192, 32768)),
    "swa_bi": ("window(1024)", (8192, 32768)),
    "blocked": ("blocked(1024)", (8192, 32768)),
    "dilated": ("causal & window(1024, dilation=4)", (8192, 32768)),
    "strided": ("causal & (window(256) | strided(256))", (8192, 32768)),
    "power": ("causal & (window(5, block=256) | pow2(block=256) | sink(1, block=256))", (8192, 32768)),
    "sinks": ("causal & (window(1024) | sink(4))", (8192, 32768)),
    "moba": ("causal & topk(4, block=512)", (8192, 32768, 131072)),
    # not in the suite: MoBA's own gate routes every query token by itself
    "moba_token": ("causal & topk(4, block=512, query=token)", (32768, 131072)),
    "s2": ("causal & (window(512) | columns(16, phase=h % 16, block=64))", (8192, 32768)),
    "natten2d": ("grid(128, 128)\nneighborhood((13, 13))", (16384,)),
    "natten2d_dil": ("grid(128, 128)\nneighborhood((7, 7), dilation=(2, 2))", (16384,)),
    "gna3d": ("grid(16, 32, 32)\nneighborhood((8, 16, 16), stride=(4, 8, 8))", (16384,)),
    # not in the suite: BigBird (window, global and random key blocks), its random blocks read from
    # tables of bits the kernel receives
    "bigbird": ("window(3, block=64) | global(0..1, block=64) | random(3, block=64)", (8192, 32768)),
}
