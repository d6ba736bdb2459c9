"""Context parallelism: one self-attention sequence sharded over the ranks of a
`torch.distributed` group, each rank exchanging only the key/value tiles its queries visit.

    import torch.distributed as dist
    from patternc.distributed import context_parallel_attention, shard, Sharding
    dist.init_process_group("nccl")                      # gloo on CPUs
    out = context_parallel_attention(q, k, v, "causal & window(4096)")   # q, k, v: this rank's shard
    zz = Sharding.zigzag(N, dist.get_world_size(), 64)   # causal-like patterns: an early and a late chunk
    out = context_parallel_attention(shard(q, zz, rank), ..., pattern, sharding=zz)

Modules: `attention` (the autograd function and the exchange), `plan` (which runs go where, the
bytes per rank, the blocks each rank runs), `sharding` (`Sharding`, `shard`, `unshard`,
`gather`), `balance` (`choose_sharding`, by the simulator), `merge` (the LSE merge).
The simulator's part is `patternc.sim.distributed`.
"""
from __future__ import annotations

from .attention import context_parallel_attention
from .balance import choose_sharding
from .plan import Block, Plan, Run, Transfer, plan
from .sharding import Sharding, gather, shard, unshard

__all__ = ["Block", "choose_sharding", "context_parallel_attention", "Plan", "Run", "Sharding", "Transfer", "gather",
           "plan", "shard", "unshard"]
