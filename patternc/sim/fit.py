"""Fitting a device profile's costs to measured kernel times.

Used twice: `benchmarks/validate_sim.py --refit` builds the shipped H100 profile from a
committed benchmark run, and `patternc calibrate` builds one from its microbenchmarks.

The model is linear in its costs once the schedule is fixed: a kernel's time is launch_us
plus the summed costs of the programs on the slot that finishes last. The fit alternates
(1) schedule every measured problem with the current costs and take the last slot's
programs, (2) solve the non-negative least-squares problem in relative error for the costs
(with a weak pull towards the starting values, so a cost the measurements can't see stays
where physics put it), until the relative error stops improving.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .model import ConfigCosts, Shape, ctas_per_sm, flex_features, flex_times, flex_workload, kernel_workload
from .ops import pattern_ops
from .profile import KERNEL_KEYS, Profile, TileConfig, config_name
from .schedule import list_schedule, longest_first

PRIOR_WEIGHT = 0.02  # relative pull of each cost towards its starting value


@dataclass(frozen=True)
class Measurement:
    """One measured time. `kind`: "patternc" (the generated kernel with `config`), "flex"
    (FlexAttention, 128x128 BlockMask) or "dense" (the cuDNN-class dense kernel)."""

    pattern: str
    M: int
    N: int
    heads: int
    head_dim: int
    dtype: str
    ms: float
    config: dict | None = None
    kind: str = "patternc"
    batch: int = 1
    label: str = ""

    @property
    def shape(self) -> Shape:
        return Shape(self.M, self.N, self.heads, self.head_dim, self.dtype, self.batch)


@dataclass
class FitResult:
    params: dict
    rms: float  # root mean square relative error over the fitted measurements
    errors: list = field(default_factory=list)  # (label, measured ms, predicted ms)


def nnls(A: np.ndarray, b: np.ndarray, iterations: int = 200) -> np.ndarray:
    """min |Ax - b| subject to x >= 0 (Lawson-Hanson active set)."""
    m, n = A.shape
    x = np.zeros(n)
    passive = np.zeros(n, bool)
    w = A.T @ (b - A @ x)
    for _ in range(iterations):
        if passive.all() or w[~passive].max(initial=-np.inf) <= 1e-12:
            break
        j = np.argmax(np.where(passive, -np.inf, w))
        passive[j] = True
        while True:
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(A[:, passive], b, rcond=None)[0]
            if (z[passive] > 0).all():
                x = z
                break
            neg = passive & (z <= 0)
            alpha = np.min(x[neg] / (x[neg] - z[neg]))
            x = x + alpha * (z - x)
            passive &= x > 1e-15
            x[~passive] = 0
        w = A.T @ (b - A @ x)
    return x


class _Layouts:
    """Layouts and op counts shared between measurements of one pattern and shape."""

    def __init__(self):
        self.patterns, self.ops = {}, {}

    def pattern(self, text):
        if text not in self.patterns:
            from ..grammar import compile

            self.patterns[text] = compile(text)
        return self.patterns[text]

    def layout(self, text, M, N, heads, bm, bn, order, head_dim=128):
        from ..layout.cache import cached_layout

        return cached_layout(self.pattern(text), M, N, heads, bm, bn, order, routed_dim=head_dim)

    def op_count(self, text, heads, M, N):
        key = (text, heads, M, N)
        if key not in self.ops:
            n = pattern_ops(self.pattern(text), heads, M, N)
            self.ops[key] = 4 if n is None else n
        return self.ops[key]


def _iterate(problems, theta0, evaluate, rows_for, prior, iterations=40):
    """The alternating fit; returns (theta, rms)."""
    theta = theta0.copy()
    best = (evaluate(theta), theta.copy())
    stall = 0
    for _ in range(iterations):
        A, b = rows_for(theta)
        reg = PRIOR_WEIGHT * np.diag(1 / np.maximum(prior, 1e-12))
        A = np.vstack([A, reg])
        b = np.concatenate([b, np.full(len(prior), PRIOR_WEIGHT)])
        # columns of very different scales: solve in units of the prior
        scale = np.maximum(prior, 1e-12)
        theta = nnls(A * scale, b) * scale
        err = evaluate(theta)
        if err < best[0] - 1e-7:
            best, stall = (err, theta.copy()), 0
        else:
            stall += 1
            if stall >= 3:
                break
    return best[1], best[0]


def fit_kernel(measurements: list[Measurement], profile: Profile,
               layouts: _Layouts | None = None) -> tuple[Profile, FitResult]:
    """A profile whose kernel costs (shared and per config) fit `measurements` (kind
    "patternc", all at one head_dim and dtype, which become the profile's reference)."""
    layouts = layouts or _Layouts()
    ms = [m for m in measurements if m.kind == "patternc"]
    if not ms:
        raise ValueError("no patternc measurements to fit")
    ref = {"head_dim": ms[0].head_dim, "dtype": ms[0].dtype}
    profile = _replace(profile, reference=ref)
    configs = {}
    for m in ms:
        configs.setdefault(config_name({**m.config, "iteration": "auto"}), m.config)
    names = list(KERNEL_KEYS) + [f"tile:{c}" for c in configs]
    problems = []
    for m in ms:
        cfg = m.config
        shape = m.shape
        k = ctas_per_sm(cfg, shape, profile)
        layout = layouts.layout(m.pattern, m.M, m.N, m.heads, cfg["block_m"], cfg["block_n"], cfg.get("order", "auto"),
                                m.head_dim)
        work = kernel_workload(layout, cfg, shape, layouts.op_count(m.pattern, m.heads, m.M, m.N),
                               ConfigCosts(1.0, k), profile)
        problems.append((m, work, f"tile:{config_name({**cfg, 'iteration': 'auto'})}"))
    col = {n: i for i, n in enumerate(names)}

    def unpack(theta):
        kernel = {n: float(theta[col[n]]) for n in KERNEL_KEYS}
        return kernel, {n: float(theta[col[n]]) for n in names if n.startswith("tile:")}

    def predict(theta, m, work, tile_name):
        kernel, tiles = unpack(theta)
        return (longest_first(work.times(kernel, tiles[tile_name]), work.slots) + kernel["launch_us"]) / 1e3

    def evaluate(theta):
        return float(np.sqrt(np.mean([(predict(theta, m, w, t) / m.ms - 1) ** 2 for m, w, t in problems])))

    def rows_for(theta):
        kernel, tiles = unpack(theta)
        A, b = [], []
        for m, work, tile_name in problems:
            times = work.times(kernel, tiles[tile_name])
            _, slot = longest_first(times, work.slots, assignment=True)
            critical = slot == np.argmax(np.bincount(slot, weights=times))
            X = work.features(names, tile_name, work.table_branch(kernel, tiles[tile_name]))
            row = X[critical].sum(0)
            row[col["launch_us"]] += 1
            A.append(row / (m.ms * 1e3))
            b.append(1.0)
        return np.array(A), np.array(b)

    prior = np.array([_kernel_prior(n, configs, profile, ref) for n in names])
    theta, rms = _iterate(problems, prior, evaluate, rows_for, prior)
    # a memory path no measurement ran with index tables gets the other path's table cost
    paths = {w.table_key for _, w, _ in problems if w.table}
    if len(paths) == 1:
        (measured,) = paths
        for other in ("table_tile_us", "table_tile_tma_us"):
            theta[col[other]] = theta[col[measured]]
    kernel, tiles = unpack(theta)
    entries = []
    for name, cfg in configs.items():
        k = ctas_per_sm(cfg, Shape(1, 1, 1, ref["head_dim"], ref["dtype"]), profile)
        entries.append(TileConfig(cfg["block_m"], cfg["block_n"], cfg["num_warps"], cfg["num_stages"],
                                  cfg.get("memory", "pointers"), round(tiles[f"tile:{name}"], 6), k))
    errors = [(m.label or f"{m.pattern} {m.M} {config_name(m.config)}", m.ms, predict(theta, m, w, t))
              for m, w, t in problems]
    kernel = {k: round(v, 6) for k, v in kernel.items()}
    return _replace(profile, kernel=kernel, configs=tuple(entries)), FitResult({**kernel, **tiles}, rms, errors)


def _kernel_prior(name: str, configs: dict, profile: Profile, ref: dict) -> float:
    """Starting values: physics-sized guesses (the fit moves them)."""
    if name.startswith("tile:"):
        cfg = configs[name[5:]]
        k = ctas_per_sm(cfg, Shape(1, 1, 1, ref["head_dim"], ref["dtype"]), profile)
        flops = 4 * cfg["block_m"] * cfg["block_n"] * ref["head_dim"]
        return flops / (500e6 / profile.sm_count) * k  # ~500 TF/s over the device, in us per slot
    return {"launch_us": 5.0, "program_us": 1.0, "run_slot_us": 1.0, "table_tile_us": 0.5, "table_tile_tma_us": 0.5,
            "mask_ns_per_element": 0.03, "op_ns_per_element": 0.003}[name]


def fit_flex(measurements: list[Measurement], profile: Profile,
             layouts: _Layouts | None = None) -> tuple[Profile, FitResult]:
    """FlexAttention's costs from `measurements` of kind "flex"."""
    layouts = layouts or _Layouts()
    ms = [m for m in measurements if m.kind == "flex"]
    if not ms:
        return profile, FitResult(dict(profile.flex), float("nan"))
    block = int(profile.flex["block"])
    names = ["launch_us", "program_us", "full_tile_us", "mask_us", "op_us"]
    problems = []
    for m in ms:
        layout = layouts.layout(m.pattern, m.M, m.N, m.heads, block, block, "natural", m.head_dim)
        problems.append((m, flex_workload(layout, m.shape, layouts.op_count(m.pattern, m.heads, m.M, m.N), profile)))

    def as_dict(theta):
        return {"block": block, **{n: float(v) for n, v in zip(names, theta)}}

    def predict(theta, work):
        flex = as_dict(theta)
        return (list_schedule(flex_times(work, flex), work.slots) + flex["launch_us"]) / 1e3

    def evaluate(theta):
        return float(np.sqrt(np.mean([(predict(theta, w) / m.ms - 1) ** 2 for m, w in problems])))

    def rows_for(theta):
        flex = as_dict(theta)
        A = []
        for m, work in problems:
            times = flex_times(work, flex)
            _, slot = list_schedule(times, work.slots, assignment=True)
            critical = slot == np.argmax(np.bincount(slot, weights=times))
            row = np.concatenate([[1.0], flex_features(work)[critical].sum(0)])
            A.append(row / (m.ms * 1e3))
        return np.array(A), np.ones(len(A))

    flops = 4 * block * block * ms[0].head_dim
    prior = np.array([10.0, 3.0, flops / (450e6 / profile.sm_count), 0.5, 0.05])
    theta, rms = _iterate(problems, prior, evaluate, rows_for, prior)
    flex = {k: (round(v, 6) if k != "block" else v) for k, v in as_dict(theta).items()}
    errors = [(m.label or f"flex {m.pattern} {m.M}", m.ms, predict(theta, w)) for m, w in problems]
    return _replace(profile, flex=flex), FitResult(flex, rms, errors)


def dense_points(measurements: list[Measurement]) -> dict | None:
    """The profile's dense section from measurements of kind "dense" (one heads/batch)."""
    ms = [m for m in measurements if m.kind == "dense"]
    if not ms:
        return None
    return {"kernel": ms[0].label or "dense", "heads": ms[0].heads, "batch": ms[0].batch,
            "points": [{"M": m.M, "N": m.N, "ms": round(m.ms, 6)} for m in ms]}


def _replace(profile: Profile, **changes) -> Profile:
    import dataclasses

    return dataclasses.replace(profile, **changes)


def skeleton(name: str, device: str, sm_count: int, smem_per_sm_kib: float, smem_per_block_kib: float,
             hbm_gbps: float, clock_mhz: float | None = None) -> Profile:
    """A profile with the device's constants and no costs yet (the fits fill them in)."""
    return Profile(name, device, sm_count, smem_per_sm_kib, smem_per_block_kib, hbm_gbps,
                   {"head_dim": 128, "dtype": "bfloat16"}, {k: 0.0 for k in KERNEL_KEYS}, (),
                   {"block": 128, "launch_us": 0.0, "program_us": 0.0, "full_tile_us": 0.0, "mask_us": 0.0,
                    "op_us": 0.0}, {"kernel": "dense", "heads": 1, "batch": 1, "points": []}, clock_mhz=clock_mhz)
