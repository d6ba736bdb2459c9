"""Context parallelism: one self-attention sequence sharded over ranks (`torch.distributed`),
each rank exchanging only the key/value tiles its queries visit (see `plan`)."""
from __future__ import annotations

from .attention import context_parallel_attention
from .balance import choose_sharding
from .plan import Block, Plan, Run, Transfer, plan
from .sharding import Sharding, gather, shard, unshard

__all__ = ["Block", "choose_sharding", "context_parallel_attention", "Plan", "Run", "Sharding", "Transfer", "gather", "plan", "shard", "unshard"]
