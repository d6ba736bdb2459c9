"""Choosing the token order across ranks with the simulator: the sharding whose predicted
context-parallel time is least (`patternc.sim.distributed`)."""
from __future__ import annotations

from .sharding import Sharding


def choose_sharding(pattern, length: int, world: int, heads: int | None = None, head_dim: int = 128,
                    dtype="bfloat16", device="h200", orders=("contiguous", "zigzag", "balanced"), **kw) -> Sharding:
    """The fastest predicted of `orders` (ties: the first listed, contiguous by default, which
    moves the least for local patterns): zigzag or layout-balanced for causal-like patterns,
    whose later queries see more keys; contiguous for windows. Shard inputs with `shard(x,
    sharding, rank)` and pass `sharding=` to `context_parallel_attention`."""
    from ..sim.distributed import compare_shardings

    predictions = compare_shardings(pattern, length, world, orders=orders, heads=heads, head_dim=head_dim,
                                    dtype=dtype, device=device, **kw)
    return next(iter(predictions.values())).sharding
