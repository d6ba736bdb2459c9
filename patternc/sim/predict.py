"""`simulate()`: a pattern's predicted kernel time and speedups, before anything runs.

    >>> p = patternc.sim.simulate("causal & window(1024)", 32768, heads=16, head_dim=128)
    >>> p.ms, p.config_name, p.speedup_vs_dense, p.ideal_speedup
    (0.71..., '64x64/w4/s3/tma', 19.4..., 30.6...)

Every autotuner candidate for the device is predicted (`patternc.sim.model`) and the fastest
is the one reported, as the autotuner would pick it on the GPU; `config=` fixes one.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from ..errors import PatternError
from ..ir.documents import boundaries, check_pattern
from ..layout.cache import cached_layout
from ..layout.documents import document_programs
from ..runtime.attention import SUPPORTED_HEAD_DIMS, as_pattern  # noqa: F401 - as_pattern: formulas, sweeps
from .model import Shape, dense_ms, flex_times, flex_workload, kernel_workload, memory_floor_us, resolve_costs
from .ops import pattern_ops
from .profile import Profile, config_name, dtype_name, parse_config
from .schedule import list_schedule, longest_first

DEFAULT_OPS = 4  # predicates the kernel can't print (run-time tables) are charged like a window


@dataclass(frozen=True)
class ConfigPrediction:
    """One kernel configuration's predicted time and where it goes (milliseconds)."""

    config: dict
    ms: float  # predicted kernel time: max(compute, memory floor) + launch
    compute_ms: float  # makespan of the programs on the SMs
    memory_ms: float  # the HBM floor
    launch_ms: float
    iteration: str  # "runs" or "table"
    ctas_per_sm: int
    slots: int
    programs: int
    waves: float  # programs / slots
    utilization: float  # busy share of slot time until the last program ends
    full_tiles_ms: float  # sum over programs of their full-tile time / slots
    partial_tiles_ms: float  # ... of their partial tiles (predicate included)
    overhead_ms: float  # ... per-program, loop and index-table costs
    tail_ms: float  # makespan beyond perfect balance: the last wave's imbalance
    density: float
    full: int
    partial: int
    worst_row_tiles: int
    key_tiles: int
    notes: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return config_name(self.config)

    @property
    def block_sparse(self) -> bool:
        """Perfectly block-sparse at this tile shape: no tile needs the predicate."""
        return self.partial == 0

    def to_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items()}
        out["name"] = self.name
        out["block_sparse"] = self.block_sparse
        out["notes"] = list(self.notes)
        return out


@dataclass(frozen=True)
class Prediction:
    """What `simulate` predicts for one pattern and problem shape (times in milliseconds).

    `ms` is the generated kernel's time with `config` (the fastest predicted candidate);
    `dense_ms` the dense cuDNN-class kernel's on the device, `flex_ms` FlexAttention's for the
    same pattern (128 x 128 BlockMask). `ideal_speedup` = 1 / density (FLOP bound at the
    chosen tiles), `worst_tile_speedup` = key tiles / tiles of the longest row (the bound a
    tile-counting simulator gives). `configs`: every candidate, fastest first.
    """

    pattern: str
    M: int
    N: int
    heads: int
    head_dim: int
    dtype: str
    batch: int
    device: str
    ms: float
    config: dict
    dense_ms: float
    flex_ms: float | None
    density: float
    ideal_speedup: float
    worst_tile_speedup: float
    bound: str  # "compute" or "memory"
    configs: tuple[ConfigPrediction, ...]
    routed_ms: float = 0.0  # run-time block selection (routed patterns), included in ms
    notes: tuple[str, ...] = field(default=())

    @property
    def config_name(self) -> str:
        return config_name(self.config)

    @property
    def chosen(self) -> ConfigPrediction:
        return self.configs[0]

    @property
    def speedup_vs_dense(self) -> float:
        return self.dense_ms / self.ms

    @property
    def speedup_vs_flex(self) -> float | None:
        return None if self.flex_ms is None else self.flex_ms / self.ms

    @property
    def block_sparse(self) -> bool:
        return self.chosen.block_sparse

    @property
    def slower_than_dense(self) -> bool:
        return self.ms > self.dense_ms

    @property
    def warnings(self) -> list[str]:
        out = []
        if self.slower_than_dense:
            out.append(f"predicted slower than dense ({self.ms:.4g} ms vs {self.dense_ms:.4g} ms): below break-even")
        return out

    def to_dict(self) -> dict:
        def num(x):
            return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x

        return {
            "pattern": self.pattern, "M": self.M, "N": self.N, "heads": self.heads, "head_dim": self.head_dim,
            "dtype": self.dtype, "batch": self.batch, "device": self.device, "ms": self.ms,
            "config": self.config_name, "dense_ms": self.dense_ms, "flex_ms": self.flex_ms,
            "speedup_vs_dense": self.speedup_vs_dense, "speedup_vs_flex": num(self.speedup_vs_flex),
            "density": self.density, "ideal_speedup": num(self.ideal_speedup),
            "worst_tile_speedup": num(self.worst_tile_speedup), "block_sparse": self.block_sparse,
            "bound": self.bound, "routed_ms": self.routed_ms, "slower_than_dense": self.slower_than_dense,
            "warnings": self.warnings, "notes": list(self.notes), "configs": [c.to_dict() for c in self.configs],
        }


# ------------------------------------------------------------------------------ inputs



def pattern_text(pattern, heads: int) -> str:
    """The pattern's rule as one line (per-head sections joined with '; ')."""
    sections = pattern.sections(heads)
    if len(sections) == 1:
        return str(sections[0].expr)
    return "; ".join(str(s) for s in sections)


def as_profile(device) -> Profile:
    if isinstance(device, Profile):
        return device
    return _profile_cached(str(device))


_profiles: dict[str, Profile] = {}


def _profile_cached(name: str) -> Profile:
    if name not in _profiles:
        _profiles[name] = Profile.load(name)
    return _profiles[name]


def _check_int(name, value, minimum=1):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise PatternError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def candidate_configs(shape: Shape, profile: Profile) -> list[dict]:
    """The autotuner's candidates for this device (its compute capability) and shape."""
    import torch

    from ..runtime.autotune import candidates

    capability = tuple(profile.fit.get("capability", (9, 0)))
    return candidates(shape.head_dim, getattr(torch, shape.dtype), capability)


# ------------------------------------------------------------------------------ layouts

def _layout(pattern, M, N, heads, bm, bn, order, head_dim=128, documents=None):
    """The layout the kernel would get; routed patterns select on random q, k with `head_dim`
    features (as real ones have: how alike the queries' choices are depends on it). With
    `documents` (boundaries), the packed sequence's layout in absolute tiles."""
    if documents is not None:
        return _document_layout(pattern, N, heads, bm, bn, documents)
    return cached_layout(pattern, M, N, heads, bm, bn, order, routed_dim=head_dim)


@lru_cache(maxsize=32)
def _document_layout(pattern, N, heads, bm, bn, documents: tuple):
    return pattern.layout(N, heads=heads, block_m=bm, block_n=bn, documents=list(documents))


# ------------------------------------------------------------------------------ the model, per config


def predict_config(pattern, shape: Shape, config: dict, profile: Profile, ops: float,
                   documents: tuple | None = None) -> ConfigPrediction:
    """One config's prediction (see `patternc.sim.model` for the formulas). `documents`:
    boundaries of packed documents, whose kernel runs a program per (head, document, tile) over
    the pattern's own layout."""
    costs = resolve_costs(config, shape, profile)
    order = "natural" if documents is not None else config.get("order", "auto")
    layout = _layout(pattern, shape.M, shape.N, shape.heads, config["block_m"], config["block_n"], order,
                     shape.head_dim)
    work = kernel_workload(layout, config, shape, ops, costs, profile)
    if documents is not None:
        full, partial = document_programs(layout, list(documents))
        work = dataclasses.replace(work, full=np.tile(full, shape.batch), partial=np.tile(partial, shape.batch))
        layout = _layout(pattern, shape.M, shape.N, shape.heads, config["block_m"], config["block_n"], order,
                         shape.head_dim, documents)  # what is reported: the packed sequence's tiles
    kernel = profile.kernel
    times = work.times(kernel, costs.tile_us)
    makespan = longest_first(times, work.slots)
    floor = memory_floor_us(shape, profile)
    launch = kernel["launch_us"]
    slots = work.slots
    tile = costs.tile_us
    partial_cost = work.times({**kernel, "program_us": 0.0, "run_slot_us": 0.0}, tile) - work.full * (
        tile + work.table_us(kernel))
    full_ms = float((work.full * tile).sum()) / slots / 1e3
    partial_ms = float(partial_cost.sum()) / slots / 1e3
    total = float(times.sum()) / slots / 1e3
    c = layout.counts
    H, Mt, Nt = layout.shape
    rows = (layout.full_kv_num_blocks + layout.kv_num_blocks)
    return ConfigPrediction(
        config=dict(config), ms=(max(makespan, floor) + launch) / 1e3, compute_ms=makespan / 1e3,
        memory_ms=floor / 1e3, launch_ms=launch / 1e3, iteration="table" if work.table else "runs",
        ctas_per_sm=costs.ctas_per_sm, slots=slots, programs=len(times), waves=len(times) / slots,
        utilization=float(times.sum()) / (slots * makespan) if makespan > 0 else 1.0,
        full_tiles_ms=full_ms, partial_tiles_ms=partial_ms, overhead_ms=total - full_ms - partial_ms,
        tail_ms=makespan / 1e3 - total, density=layout.density, full=c["full"] * shape.batch,
        partial=c["partial"] * shape.batch, worst_row_tiles=int(rows.max()) if rows.numel() else 0, key_tiles=Nt,
        notes=tuple(work.notes))


def predict_flex(pattern, shape: Shape, profile: Profile, ops: float, documents: tuple | None = None) -> float | None:
    """FlexAttention's predicted time (ms) with the pattern's natural-order 128 x 128 BlockMask."""
    flex = profile.flex
    if flex["full_tile_us"] <= 0:
        return None
    block = int(flex["block"])
    layout = _layout(pattern, shape.M, shape.N, shape.heads, block, block, "natural", shape.head_dim, documents)
    work = flex_workload(layout, shape, ops, profile)
    makespan = list_schedule(flex_times(work, flex), work.slots)
    return (max(makespan, memory_floor_us(shape, profile)) + flex["launch_us"]) / 1e3


# The routing kernels' costs, measured on an H200 (benchmarks/results/2026-11-28-h200-routed2,
# moba at 8k-128k, torch.profiler): pooling reads q and k at about this share of the HBM
# bandwidth, plus a fixed cost per pooling launch; a select program (score, pick, write its
# tile rows) takes about SELECT_PROGRAM_US with SELECT_PER_SM of them resident per SM; with
# query=token a program (128 query rows) takes TOKEN_US_PER_KEY_BLOCK per key block it scores.
POOL_BANDWIDTH_SHARE = 0.63
POOL_LAUNCH_US = 13.0
SELECT_PROGRAM_US = 36.0
SELECT_PER_SM = 8
TOKEN_US_PER_KEY_BLOCK = 3.5


def routed_selection_ms(pattern, shape: Shape, profile: Profile) -> float:
    """Run-time block selection of routed patterns (`patternc/runtime/routing.py`): pooling q and k
    (one read of each; keys only with query=token), then one select program per (query block or
    query tile, batch, head)."""
    from ..layout.routed import routed_node

    node = routed_node(pattern)
    block = int(node.block.value)
    per_token = shape.element_bytes * shape.head_dim * shape.batch * shape.heads
    pooled = shape.N + (shape.M if node.query == "block" else 0)
    launches = 1 + (node.query == "block")
    pool_us = pooled * per_token / (POOL_BANDWIDTH_SHARE * profile.hbm_gbps * 1e3) + launches * POOL_LAUNCH_US
    if node.query == "block":
        programs, program_us = -(-shape.M // block) * shape.batch * shape.heads, SELECT_PROGRAM_US
    else:
        programs, program_us = -(-shape.M // 128) * shape.batch * shape.heads, TOKEN_US_PER_KEY_BLOCK * -(-shape.N // block)
    select_us = programs / (SELECT_PER_SM * profile.sm_count) * program_us + profile.kernel["launch_us"]
    return (pool_us + select_us) / 1e3


# ------------------------------------------------------------------------------ simulate


def simulate(pattern, M: int, N: int | None = None, heads: int | None = None, head_dim: int = 128,
             dtype="bfloat16", batch: int = 1, device="h100", config=None, documents=None) -> Prediction:
    """Predict the generated kernel's forward time for `pattern` on `device`.

    `pattern`: a Pattern, pattern text or `@patternc.jit` object; `M` queries, `N` keys
    (default M), `heads` (default the pattern's), `head_dim`, `dtype` ("bf16", "fp16", "fp32"
    or a torch dtype), `batch`; `device`: a profile name ("h100"), a profile JSON path or a
    `Profile`; `config`: None (predict every autotuner candidate and keep the fastest), a
    config dict or text like "64x64/w4/s3/tma"; `documents`: boundaries of packed documents, as
    `patternc.attention` takes them (the kernel then runs a program per document tile, memory
    through pointers; FlexAttention's prediction uses the packed sequence's tiles). Returns a
    `Prediction`.
    """
    pattern = as_pattern(pattern)
    M = _check_int("M", M)
    N = M if N is None else _check_int("N", N)
    if documents is not None:
        if M != N:
            raise PatternError(f"documents= packs self-attention: M = {M}, N = {N}")
        check_pattern(pattern, heads)
        documents = tuple(boundaries(documents, N))
    heads = pattern.default_heads if heads is None else _check_int("heads", heads)
    batch = _check_int("batch", batch)
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise PatternError(f"head_dim {head_dim!r} is not supported", None,
                           f"supported: {', '.join(map(str, SUPPORTED_HEAD_DIMS))}")
    shape = Shape(M, N, heads, int(head_dim), dtype_name(dtype), batch)
    profile = as_profile(device)
    pattern.sections(heads)  # parameter and head checks, with the pattern's own errors
    if config is None:
        configs = candidate_configs(shape, profile)
        if documents is not None:  # documents start anywhere: no TMA box lines up with them
            configs = list({config_name(c): c for c in (dict(c, memory="pointers") for c in configs)}.values())
    else:
        configs = [parse_config(config) if isinstance(config, str) else dict(config)]
        configs[0].setdefault("memory", "pointers")
        for key in ("block_m", "block_n", "num_warps", "num_stages"):
            if key not in configs[0]:
                raise PatternError(f"config needs '{key}'", None, "e.g. config='128x64/w8/s3/tma'")
    ops = pattern_ops(pattern, heads, M, N)
    notes = []
    if ops is None:
        ops = DEFAULT_OPS
        notes.append(f"the predicate reads run-time tables: its cost is taken as {DEFAULT_OPS} operations")
    results, failures = [], []
    for cfg in configs:
        try:
            results.append(predict_config(pattern, shape, cfg, profile, ops, documents))
        except ValueError as e:
            if isinstance(e, PatternError):
                raise
            failures.append(str(e))
    if not results:
        raise PatternError("no kernel configuration fits this problem: " + "; ".join(failures))
    results.sort(key=lambda r: r.ms)
    best = results[0]
    routed = 0.0
    if pattern.is_routed:
        routed = routed_selection_ms(pattern, shape, profile)
        notes.append(f"routed: blocks chosen for random q, k ({shape.head_dim} features); the selection kernels' "
                     "costs were measured on an H200 (moba), not by calibrate")
    if best.programs < profile.sm_count:
        notes.append(f"{best.programs} programs for {profile.sm_count} SMs: the profile's costs assume busy SMs, "
                     "so this small problem is predicted pessimistically")
    for note in best.notes:
        if note not in notes:
            notes.append(note)
    flex = predict_flex(pattern, shape, profile, ops, documents)
    chosen_ms = best.ms + routed
    ideal = math.inf if best.density == 0 else 1 / best.density
    worst = math.inf if best.worst_row_tiles == 0 else best.key_tiles / best.worst_row_tiles
    return Prediction(
        pattern=pattern_text(pattern, heads), M=M, N=N, heads=heads, head_dim=shape.head_dim, dtype=shape.dtype,
        batch=batch,
        device=profile.name, ms=chosen_ms, config=best.config, dense_ms=dense_ms(shape, profile),
        flex_ms=None if flex is None else flex + routed, density=best.density, ideal_speedup=ideal,
        worst_tile_speedup=worst, bound="memory" if best.memory_ms > best.compute_ms else "compute",
        configs=tuple(results), routed_ms=routed, notes=tuple(notes))
