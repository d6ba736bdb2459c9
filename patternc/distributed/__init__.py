"""Context parallelism: one self-attention sequence sharded over ranks (`torch.distributed`),
each rank exchanging only the key/value tiles its queries visit (see `plan`)."""
from __future__ import annotations

from .attention import context_parallel_attention
from .plan import Block, Plan, Run, Transfer, plan
from .sharding import Sharding, gather, shard, unshard

__all__ = ["Block", "context_parallel_attention", "Plan", "Run", "Sharding", "Transfer", "gather", "plan", "shard", "unshard"]
