"""The one layout cache: every stage that builds a layout for a problem asks here, so a pattern
laid out for the kernel, the simulator or a fit is built once per (shape, tiles, order)."""
from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=64)
def cached_layout(pattern, M: int, N: int, heads: int, block_m: int, block_n: int, order: str = "auto",
                  device: str = "cpu", routed_dim: int = 128):
    """`pattern.layout(...)`, cached. A routed pattern's tiles depend on q and k: it is laid out
    over seeded random ones with `routed_dim` features (the simulator's stand-in; the runtime
    builds routed plans instead)."""
    data = {}
    if pattern.is_routed:  # (analysis imports sympy: seconds a first call of any other pattern needn't spend)
        from ..analysis import routed_data

        data = routed_data(pattern, M, N, heads, dim=routed_dim)
    return pattern.layout(M, N, heads=heads, block_m=block_m, block_n=block_n, order=order, device=device, **data)
