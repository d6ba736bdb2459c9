# The vision / video family of the benchmark suite (shared/BENCH_SUITE.md #10-12): neighborhood
# attention over a row-major token grid, NATTEN / GNA semantics.

# 10 natten2d: grid 128x128, exactly 13x13 keys per query, shifted inward at borders (NATTEN)
pattern natten2d:
    grid(128, 128)
    neighborhood((13, 13))

# 11 natten2d_dil: grid 128x128, 7x7 keys, dilation 2 (DiNAT)
pattern natten2d_dil:
    grid(128, 128)
    neighborhood((7, 7), dilation=(2, 2))

# 12 gna3d: grid 16x32x32, window (8, 16, 16), stride (4, 8, 8) (GNA, video)
pattern gna3d:
    grid(16, 32, 32)
    neighborhood((8, 16, 16), stride=(4, 8, 8))
