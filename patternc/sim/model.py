"""The performance model: one kernel configuration's time for one layout.

Per program (batch, head, query tile), in slot time (see `profile.py`):

    runs iteration:   program_us + run_slots x run_slot_us + F x tile + P x partial
    table iteration:  program_us + F x (tile + table) + P x max(partial, tile + table)

    tile    = the config's full-tile cost (scaled to head_dim and dtype)
    partial = tile + elements x ctas_per_sm x (mask_ns + ops x op_ns)

F and P are the row's full and partial key tiles, `run_slots` the ranges the kernel loops
over per row (`Layout.runs()`: its static count, empty or not), `elements` = BLOCK_M x
BLOCK_N, `ops` the predicate's weighted operation count (`patternc.sim.ops`). Table
iteration's index loads put a latency under every tile that only a long enough partial
tile hides, hence the max; how much of it the pipeline hides depends on how the tile is
copied once its index is known, so `table` is the profile's `table_tile_us` for pointer loads
and `table_tile_tma_us` for TMA copies (measured on an H200: ~0.2 and ~0.6 us). Programs are
then list-scheduled longest first onto `sm_count x ctas_per_sm` slots (`schedule.py`); the
kernel time is the makespan plus launch_us, and never less than the memory floor (Q, K, V
read and O written once at HBM bandwidth).

FlexAttention is modelled the same way with its own costs: 128 x 128 tiles, natural order,
query tiles fastest, index tables, one CTA per SM. The dense (cuDNN-class) time comes from
the profile's measured points, scaled by FLOPs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .profile import DTYPE_BYTES, Profile, TileConfig, config_name


@dataclass(frozen=True)
class Shape:
    M: int
    N: int
    heads: int
    head_dim: int
    dtype: str  # bfloat16 | float16 | float32
    batch: int = 1

    @property
    def element_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]


# ------------------------------------------------------------------------------ costs


def ctas_per_sm(config: dict, shape: Shape, profile: Profile) -> int:
    """CTAs of this config an SM holds, from shared memory: the Q tile plus `num_stages`
    buffers of K and V tiles (at most 64 warps per SM)."""
    e, D = shape.element_bytes, shape.head_dim
    smem = e * D * (config["block_m"] + 2 * config["num_stages"] * config["block_n"]) + 1024
    if smem > profile.smem_per_block_kib * 1024:
        return 0
    by_smem = int(profile.smem_per_sm_kib * 1024 // smem)
    return max(1, min(by_smem, 64 // config["num_warps"]))


def _shape_factor(profile: Profile, shape: Shape) -> float:
    """Tile time at `shape` relative to the profile's reference: the MMA share scales with
    head_dim and with the dtype's tensor-core rate (tf32 runs at half the bf16 rate)."""
    ref_d, ref_dtype = profile.reference["head_dim"], profile.reference["dtype"]
    rate = {"bfloat16": 1.0, "float16": 1.0, "float32": 2.0}
    mma = (shape.head_dim / ref_d) * rate[shape.dtype] / rate[ref_dtype]
    return profile.mma_fraction * mma + (1 - profile.mma_fraction)


@dataclass(frozen=True)
class ConfigCosts:
    """A config's costs resolved for one problem shape."""

    tile_us: float
    ctas_per_sm: int
    notes: tuple[str, ...] = ()


def resolve_costs(config: dict, shape: Shape, profile: Profile) -> ConfigCosts:
    """The full-tile cost and occupancy of `config` at `shape`, from the profile's entry for
    it or, if it has none, from the nearest measured config scaled by tile area."""
    notes = []
    entry = profile.tile_config(config)
    measured = entry is not None
    if not measured:
        entry = _nearest(config, profile.configs)
        notes.append(f"{config_name(config)} is not in the {profile.name} profile: scaled from {entry.name}")
    at_reference = shape.head_dim == profile.reference["head_dim"] and \
        DTYPE_BYTES[shape.dtype] == DTYPE_BYTES[profile.reference["dtype"]] and shape.dtype != "float32"
    if not at_reference:
        notes.append(f"head_dim {shape.head_dim} {shape.dtype}: extrapolated from the profile's "
                     f"head_dim {profile.reference['head_dim']} {profile.reference['dtype']} costs")
    k = entry.ctas_per_sm if measured and at_reference else ctas_per_sm(config, shape, profile)
    if k == 0:
        raise ValueError(f"{config_name(config)} needs more shared memory than one block may use at "
                         f"head_dim {shape.head_dim}, {shape.dtype}")
    area = (config["block_m"] * config["block_n"]) / (entry.block_m * entry.block_n)
    # slot time: k CTAs share an SM, so each runs at 1/k of it
    tile = entry.full_tile_us * area * _shape_factor(profile, shape) * k / entry.ctas_per_sm
    return ConfigCosts(tile, k, tuple(notes))


def _nearest(config: dict, entries) -> TileConfig:
    def distance(c):
        return (c.memory != config.get("memory", "pointers"),
                abs(math.log(c.block_m * c.block_n / (config["block_m"] * config["block_n"]))),
                abs(c.block_m - config["block_m"]), abs(c.num_warps - config["num_warps"]))

    return min(entries, key=distance)


# ------------------------------------------------------------------------------ workloads


@dataclass
class Workload:
    """The programs of one kernel launch (one entry each) and what they cost."""

    full: np.ndarray  # [programs] full tiles
    partial: np.ndarray  # [programs] partial tiles
    slots: int  # SMs x CTAs per SM
    table: bool  # index-table iteration (else runs)
    run_slots: int  # static ranges per row (runs iteration)
    elements_k: float  # BLOCK_M x BLOCK_N x CTAs per SM (masking work in flight per SM)
    ops: float  # predicate weighted op count
    tile_scale: float = 1.0  # multiplies the config's tile cost (shape extrapolation)
    notes: list = field(default_factory=list)
    memory: str = "pointers"  # how key tiles are copied: "pointers" or "tma" (the index-table cost)

    @property
    def table_key(self) -> str:
        """The profile's kernel key for the index-table cost of this memory path."""
        return "table_tile_tma_us" if self.memory == "tma" else "table_tile_us"

    def table_us(self, kernel: dict) -> float:
        """The index-table cost per tile (0 with runs iteration)."""
        return kernel.get(self.table_key, kernel["table_tile_us"]) if self.table else 0.0

    def features(self, names: list[str], tile_name: str, table_branch: bool = False) -> np.ndarray:
        """[programs, len(names)]: each program's time is `features @ params` (the kernel model
        is linear in its costs; `names` are the profile's kernel keys and `tile_name` the
        config's tile cost). `table_branch`: with table iteration, whether partial tiles cost
        tile + the table cost (their latency floor, True) or their own cost (False)."""
        X = np.zeros((len(self.full), len(names)))
        col = {n: i for i, n in enumerate(names)}
        X[:, col["program_us"]] = 1.0
        X[:, col[tile_name]] = (self.full + self.partial) * self.tile_scale
        pred = self.partial * self.elements_k / 1000.0
        if self.table:
            X[:, col[self.table_key]] = self.full + (self.partial if table_branch else 0)
            if not table_branch:
                X[:, col["mask_ns_per_element"]] = pred
                X[:, col["op_ns_per_element"]] = pred * self.ops
        else:
            X[:, col["run_slot_us"]] = self.run_slots
            X[:, col["mask_ns_per_element"]] = pred
            X[:, col["op_ns_per_element"]] = pred * self.ops
        return X

    def predicate_us(self, kernel: dict) -> float:
        """What a partial tile costs beyond a full one: masking and the predicate's operations."""
        return self.elements_k * (kernel["mask_ns_per_element"] + self.ops * kernel["op_ns_per_element"]) / 1e3

    def times(self, kernel: dict, tile_us: float) -> np.ndarray:
        """Each program's time (us, slot time) with the profile's `kernel` costs."""
        tile = tile_us * self.tile_scale
        partial = tile + self.predicate_us(kernel)
        if self.table:
            floor = tile + self.table_us(kernel)
            return kernel["program_us"] + self.full * floor + self.partial * max(partial, floor)
        return kernel["program_us"] + self.run_slots * kernel["run_slot_us"] + self.full * tile + self.partial * partial

    def table_branch(self, kernel: dict, tile_us: float) -> bool:
        """Whether, with table iteration, the latency floor is what partial tiles cost."""
        tile = tile_us * self.tile_scale
        partial = tile + self.predicate_us(kernel)
        return self.table and tile + self.table_us(kernel) >= partial


def kernel_workload(layout, config: dict, shape: Shape, ops: float, costs: ConfigCosts, profile: Profile) -> Workload:
    """The generated kernel's programs for `layout` under `config` (in no particular order:
    they are scheduled longest first). Routed patterns always iterate index tables: their
    selection kernels write the tables at run time."""
    full = np.tile(layout.full_kv_num_blocks.cpu().numpy().astype(np.int64), (shape.batch, 1)).reshape(-1)
    partial = np.tile(layout.kv_num_blocks.cpu().numpy().astype(np.int64), (shape.batch, 1)).reshape(-1)
    routed = getattr(layout.pattern, "is_routed", False)
    runs = layout.runs() if config.get("iteration", "auto") != "table" and not routed else None
    run_slots = 0 if runs is None else int(runs[0].shape[2] + runs[1].shape[2])
    tma = config.get("memory", "pointers") == "tma" and getattr(layout.permutation, "tma", True)  # box order: pointers
    return Workload(full, partial, profile.sm_count * costs.ctas_per_sm, runs is None, run_slots,
                    config["block_m"] * config["block_n"] * costs.ctas_per_sm, ops, 1.0, list(costs.notes),
                    "tma" if tma else "pointers")


def flex_workload(layout, shape: Shape, ops: float, profile: Profile) -> Workload:
    """FlexAttention's programs in its launch order (per batch x head, query tiles in natural
    order), one CTA per SM."""
    full = layout.full_kv_num_blocks.cpu().numpy().astype(np.int64)
    partial = layout.kv_num_blocks.cpu().numpy().astype(np.int64)
    # heads in a canonical order (by their rows), so permuting heads doesn't change the prediction
    heads = sorted(range(full.shape[0]), key=lambda h: (full[h].tobytes(), partial[h].tobytes()))
    full = np.tile(full[heads], (shape.batch, 1)).reshape(-1)
    partial = np.tile(partial[heads], (shape.batch, 1)).reshape(-1)
    return Workload(full, partial, profile.sm_count, True, 0, 1.0, ops, _shape_factor(profile, shape))


def flex_times(work: Workload, flex: dict) -> np.ndarray:
    tile = flex["full_tile_us"] * work.tile_scale
    return flex["program_us"] + work.full * tile + work.partial * (tile + flex["mask_us"] + work.ops * flex["op_us"])


def flex_features(work: Workload) -> np.ndarray:
    """[programs, 4] over (program_us, full_tile_us, mask_us, op_us)."""
    return np.stack([np.ones(len(work.full)), (work.full + work.partial) * work.tile_scale,
                     work.partial.astype(float), work.partial * work.ops], axis=1)


# ------------------------------------------------------------------------------ floors and dense


def memory_floor_us(shape: Shape, profile: Profile) -> float:
    """Q and K, V read once and O written once at HBM bandwidth (compulsory traffic)."""
    b = shape.element_bytes * shape.head_dim * shape.batch * shape.heads
    return (2 * shape.M + 2 * shape.N) * b / (profile.hbm_gbps * 1e3)


def dense_ms(shape: Shape, profile: Profile) -> float:
    """The dense (cuDNN-class) kernel's time: the profile's measured throughput at the nearest
    sizes (interpolated in log M*N), scaled by FLOPs; never less than one program's share
    when there are fewer query tiles than SMs, nor than the memory floor."""
    points = profile.dense["points"]
    ref = profile.reference
    heads, batch = profile.dense["heads"], profile.dense["batch"]

    def rate(p):  # FLOP per microsecond at the reference shape
        return 4 * batch * heads * p["M"] * p["N"] * ref["head_dim"] / (p["ms"] * 1e3)

    x = math.log(shape.M * shape.N)
    xs = [math.log(p["M"] * p["N"]) for p in points]
    rates = [rate(p) for p in points]
    r = float(np.interp(x, xs, rates))
    r /= _shape_factor(profile, shape) * ref["head_dim"] / shape.head_dim  # per-FLOP cost scales like tiles
    flops = 4 * shape.batch * shape.heads * shape.M * shape.N * shape.head_dim
    programs = shape.batch * shape.heads * -(-shape.M // 128)
    t = flops / r
    if programs < profile.sm_count:
        t = flops / programs / (r / profile.sm_count)
    return max(t, memory_floor_us(shape, profile)) / 1e3
