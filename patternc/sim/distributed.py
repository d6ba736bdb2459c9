"""Context parallelism, predicted: per rank, the blocks `patternc.distributed` runs (each a kernel
at the training tiles, costed by the per-program model of `patternc.sim.model` over the block's
tiles), the bytes it moves, and the time that makes over an assumed link.

Per rank (forward), as `patternc.distributed.attention` schedules it:

    ms = max(own blocks, exchange) + received blocks + merges
    exchange = EXCHANGE_LATENCY_US + max(bytes in, bytes out) / link bandwidth

Each block is one kernel launch (a rank's own diagonal block class by class where the runtime
runs it so, `block_forward(order="auto")`): its programs (head x query tile) list-scheduled on the SMs, plus
the launch; a block over rows another block wrote is merged (an element-wise pass over those
rows), one over fresh rows copied into place, and the first block over the whole shard is taken
as it is.
Training adds the backward (`patternc.sim.training`'s factor and fixed cost per block call) and
its exchange (float32 gradients of the received keys and values, overlapped with the own blocks'
backward). The single-GPU reference is the same model over the whole sequence: `single_ms` at
the blocks' tiles and natural order (what the ranks split), `single_auto_ms` as
`patternc.attention` runs it (its order: residue classes for dilated rules).

Assumptions (not measured by `patternc calibrate`):
- LINK_GBPS: NVLink 4 on H100/H200 SXM is 900 GB/s per GPU in both directions together, so
  ~450 GB/s each way; NCCL point-to-point reaches less (~75-85 % of it in nccl-tests).
- EXCHANGE_LATENCY_US: one batched exchange (an NCCL group of sends and receives) ~15 us.
- MERGE_BANDWIDTH_SHARE: the merges run at ~70 % of HBM bandwidth.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..distributed.attention import _order
from ..runtime.attention import as_pattern
from .model import Shape, kernel_workload, memory_floor_us, resolve_costs
from .ops import pattern_ops
from .predict import DEFAULT_OPS, as_profile
from .profile import dtype_name
from .schedule import longest_first
from .training import BACKWARD_FACTOR, BACKWARD_FIXED_MS

LINK_GBPS = 450.0
EXCHANGE_LATENCY_US = 15.0
MERGE_BANDWIDTH_SHARE = 0.7


@dataclass(frozen=True)
class RankPrediction:
    rank: int
    tokens: int
    tiles: int  # visited by its blocks, over heads
    blocks: int
    own_ms: float  # its queries over its own keys
    received_ms: float  # its queries over the received runs
    merge_ms: float
    exchange_ms: float
    ms: float  # forward
    bytes_received: int
    bytes_sent: int
    training_ms: float  # forward + backward

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class ContextParallelPrediction:
    pattern: str
    length: int
    world: int
    order: str
    heads: int
    head_dim: int
    dtype: str
    batch: int
    device: str
    link_gbps: float
    ranks: tuple[RankPrediction, ...]
    single_ms: float  # one GPU, the same tiles in natural order
    single_auto_ms: float  # one GPU as patternc.attention runs it (at the training tiles)
    single_training_ms: float
    ring_bytes_received: int  # per rank, what a ring (or all-gather) moves: every other shard
    notes: tuple[str, ...] = field(default=())
    sharding: object = field(default=None, repr=False)  # the patternc.distributed.Sharding

    @property
    def ms(self) -> float:
        """Forward: the slowest rank."""
        return max(r.ms for r in self.ranks)

    @property
    def training_ms(self) -> float:
        return max(r.training_ms for r in self.ranks)

    @property
    def efficiency(self) -> float:
        """Scaling efficiency of the forward: single-GPU time / (world x this time), against
        `patternc.attention` on one GPU."""
        return self.single_auto_ms / (self.world * self.ms)

    @property
    def training_efficiency(self) -> float:
        return self.single_training_ms / (self.world * self.training_ms)

    @property
    def bytes_received(self) -> int:
        """Forward: the most any rank receives."""
        return max(r.bytes_received for r in self.ranks)

    def to_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k not in ("ranks", "sharding")}
        out.update(ms=self.ms, training_ms=self.training_ms, efficiency=self.efficiency,
                   training_efficiency=self.training_efficiency, bytes_received=self.bytes_received,
                   ranks=[r.to_dict() for r in self.ranks], notes=list(self.notes))
        return out


def _block_ms(pattern, length, heads, q_start, M, k_start, N, config, shape_dtype, head_dim, batch, profile, ops,
              order="natural"):
    """One block's predicted kernel time (ms): its programs list-scheduled on the SMs, plus the launch."""
    from ..layout.blocks import block_layout

    layout = block_layout(pattern, length, heads, config["block_m"], config["block_n"], q_start, M, k_start, N, "cpu",
                          order)
    shape = Shape(M, N, heads, head_dim, shape_dtype, batch)
    costs = resolve_costs(config, shape, profile)
    work = kernel_workload(layout, config, shape, ops, costs, profile)
    makespan = longest_first(work.times(profile.kernel, costs.tile_us), work.slots)
    return (max(makespan, memory_floor_us(shape, profile)) + profile.kernel["launch_us"]) / 1e3


def simulate_context_parallel(pattern, length: int, world: int = 2, heads: int | None = None, head_dim: int = 128,
                              dtype="bfloat16", batch: int = 1, sharding="contiguous", kv_heads: int | None = None,
                              device="h200", link_gbps: float = LINK_GBPS) -> ContextParallelPrediction:
    """Predicted context-parallel attention (see the module). `sharding`: "contiguous" (equal
    shards, the last one ragged), "zigzag", "balanced" (`patternc.distributed.Sharding`'s
    constructors), every rank's length (a list), or a `Sharding`."""
    import torch

    from ..distributed.plan import plan as make_plan
    from ..runtime.attention import training_config
    from .predict import pattern_text, simulate

    pattern = as_pattern(pattern)
    heads = pattern.default_heads if heads is None else int(heads)
    name = dtype_name(dtype)
    config = dict(training_config(head_dim, getattr(torch, name)), memory="pointers")
    bm, bn = config["block_m"], config["block_n"]
    layout = _sharding(pattern, sharding, length, world, heads, bm, bn)
    p = make_plan(pattern, layout, heads=heads, head_dim=head_dim, dtype=name, kv_heads=kv_heads, batch=batch,
                  tiles=(bm, bn))
    profile = as_profile(device)
    ops = pattern_ops(pattern, heads, length, length)
    ops = DEFAULT_OPS if ops is None else ops
    e = p.element_bytes
    link = link_gbps * 1e3  # bytes per microsecond
    ranks = []
    for r in range(layout.world):
        own = received = merge = 0.0
        n_own = n_received = 0
        written: list[tuple[int, int]] = []
        ordered = [b for b in p.blocks[r] if b.transfer is None] + [b for b in p.blocks[r] if b.transfer is not None]
        for b in ordered:
            ms = _block_ms(pattern, length, heads, b.q_start, b.q_stop - b.q_start, b.k_start, b.k_stop - b.k_start,
                           config, name, head_dim, batch, profile, ops, _order(b))
            lo, hi = b.q_offset, b.q_offset + b.q_stop - b.q_start
            if any(lo < w1 and w0 < hi for w0, w1 in written):  # merged: read both, write one (and the LSEs)
                per_row = 3 * head_dim * e + 12
            else:  # copied into place, or (the first block over the whole shard) taken as it is
                per_row = 0 if not written and (lo, hi) == (0, layout.local_length(r)) else 2 * head_dim * e + 8
            written.append((lo, hi))
            merge += batch * heads * (hi - lo) * per_row / (MERGE_BANDWIDTH_SHARE * profile.hbm_gbps * 1e3) / 1e3
            if b.transfer is None:
                own, n_own = own + ms, n_own + 1
            else:
                received, n_received = received + ms, n_received + 1
        moved = max(p.bytes_received(r), p.bytes_sent(r))
        exchange = (EXCHANGE_LATENCY_US + moved / link) / 1e3 if moved else 0.0
        forward = max(own, exchange) + received + merge
        back_moved = max(p.backward_bytes_sent(r), p.backward_bytes_received(r))
        back_exchange = (EXCHANGE_LATENCY_US + back_moved / link) / 1e3 if back_moved else 0.0
        backward = (BACKWARD_FACTOR - 1) * (own + received) + BACKWARD_FIXED_MS * (n_own + n_received)
        own_back = (BACKWARD_FACTOR - 1) * own + BACKWARD_FIXED_MS * n_own
        training = forward + (backward - own_back) + max(own_back, back_exchange)
        ranks.append(RankPrediction(r, layout.local_length(r), p.tiles(r), len(p.blocks[r]), own, received, merge,
                                    exchange, forward, p.bytes_received(r), p.bytes_sent(r), training))
    single = _block_ms(pattern, length, heads, 0, length, 0, length, config, name, head_dim, batch, profile, ops)
    auto = simulate(pattern, length, length, heads, head_dim, name, batch, profile, config).ms
    notes = [f"link {link_gbps:g} GB/s per direction and {EXCHANGE_LATENCY_US:g} us per exchange: assumptions "
             "(patternc.sim.distributed), not measured"]
    if auto < 0.9 * single:
        notes.append(f"one GPU runs this pattern in its own order ({auto:.3g} ms) faster than in natural order "
                     f"({single:.3g} ms), which the ranks' blocks use")
    return ContextParallelPrediction(
        pattern=pattern_text(pattern, heads), length=length, world=layout.world,
        order=layout.order, heads=heads, head_dim=head_dim, dtype=name, batch=batch, device=profile.name,
        link_gbps=link_gbps, ranks=tuple(ranks), single_ms=single, single_auto_ms=auto,
        single_training_ms=BACKWARD_FACTOR * auto + BACKWARD_FIXED_MS,
        ring_bytes_received=max(p.ring_bytes_received(r) for r in range(layout.world)), notes=tuple(notes),
        sharding=layout)


def _sharding(pattern, sharding, length, world, heads, bm, bn):
    import math

    from ..distributed.sharding import Sharding

    tile = math.lcm(bm, bn)
    if isinstance(sharding, Sharding):
        return sharding
    if isinstance(sharding, (list, tuple)):
        return Sharding.contiguous(sharding)
    if sharding == "contiguous":
        size = -(-length // world // tile) * tile
        return Sharding.contiguous([max(0, min(size, length - r * size)) for r in range(world)])
    if sharding == "zigzag":
        return Sharding.zigzag(length, world, tile)
    if sharding == "balanced":
        return Sharding.balanced(pattern, length, world, tile, heads=heads, block_m=bm, block_n=bn)
    from ..errors import PatternError

    raise PatternError(f"unknown sharding {sharding!r}", None, "'contiguous', 'zigzag', 'balanced', lengths or a Sharding")


def compare_shardings(pattern, length: int, world: int = 2, orders=("contiguous", "zigzag", "balanced"),
                      **kw) -> dict[str, ContextParallelPrediction]:
    """`simulate_context_parallel` per sharding, fastest (forward) first."""
    preds = {o: simulate_context_parallel(pattern, length, world, sharding=o, **kw) for o in orders}
    return dict(sorted(preds.items(), key=lambda kv: kv[1].ms))
