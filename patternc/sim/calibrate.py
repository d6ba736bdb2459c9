"""`patternc calibrate`: measure a device profile on the current GPU.

A few microbenchmarks of the generated kernels, each timed with `triton.testing.do_bench`:
every autotuner candidate on `causal`, `blocked(1024)` and `causal & window(1024)` (full-tile
cost, per-program and loop costs, masking), two configs on an all-partial 2-D neighborhood
(predicate cost) and on `causal` with index-table iteration forced (table cost), and the
dense cuDNN SDPA kernel at three lengths. The profile is then fitted with the same code that
built the shipped H100 profile (`patternc.sim.fit`). FlexAttention is timed only with
`flex=True` (torch.compile makes that slow); otherwise its costs are the base profile's,
scaled by this GPU's dense throughput relative to the base device.

`refit_from_log` refits a profile from the times a calibrate run printed (no GPU), for when the
model changes after the measurement (`patternc calibrate --from-log LOG --base PROFILE`).
"""
from __future__ import annotations

import dataclasses
import datetime
import re
import time

from ..errors import PatternError
from .fit import FitResult, Measurement, _Layouts, dense_points, fit_flex, fit_kernel, skeleton
from .profile import Profile, config_name, dtype_name, parse_config

PATTERNS = {
    "causal": "causal",
    "blocked": "blocked(1024)",
    "swa": "causal & window(1024)",
}
WARMUP_MS, REP_MS = 5, 25


def neighborhood_pattern(seq_len: int) -> str:
    """An all-partial pattern (predicate on every tile): a 13 x 13 neighborhood on a 2-D grid."""
    if seq_len % 128 or seq_len < 2048:
        raise PatternError(f"calibrate needs a sequence length that is a multiple of 128 and at least 2048, "
                           f"got {seq_len}")
    return f"grid({seq_len // 128}, 128)\nneighborhood((13, 13))"


def calibration_jobs(configs: list[dict], seq_len: int) -> list[tuple[str, str, dict]]:
    """(label, pattern text, config) of every kernel microbenchmark: every config on causal,
    blocked and a sliding window; two configs also on a 2-D neighborhood (the predicate's cost)
    and on causal with index-table iteration forced (the tables' cost): the first, and the last
    one that copies tiles another way (TMA vs pointers: each path has its own table cost)."""
    neighborhood = neighborhood_pattern(seq_len)
    jobs = [(label, text, cfg) for cfg in configs for label, text in PATTERNS.items()]
    first = configs[0]
    other = [c for c in configs[1:] if c.get("memory", "pointers") != first.get("memory", "pointers")]
    for cfg in (first, (other or configs)[-1]) if len(configs) > 1 else configs:
        jobs.append(("natten2d", neighborhood, cfg))
        jobs.append(("causal-table", "causal", {**cfg, "iteration": "table"}))
    return jobs


def require_gpu():
    import torch

    if not torch.cuda.is_available():
        raise PatternError("no CUDA GPU here: `patternc calibrate` measures the GPU it runs on", None,
                           "run it on the GPU machine; `patternc simulate --device h100` uses the shipped H100 profile")


def device_constants(torch_device) -> dict:
    """SM count, shared memory, clocks and HBM bandwidth of the current GPU."""
    import torch

    props = torch.cuda.get_device_properties(torch_device)
    out = {"device": props.name, "sm_count": props.multi_processor_count, "smem_per_sm_kib": 228.0,
           "smem_per_block_kib": 227.0, "hbm_gbps": 3350.0, "clock_mhz": None}
    try:
        import triton

        info = triton.runtime.driver.active.utils.get_device_properties(torch_device.index or 0)
        out["smem_per_block_kib"] = info["max_shared_mem"] / 1024
        out["smem_per_sm_kib"] = info["max_shared_mem"] / 1024 + 1
        out["clock_mhz"] = info.get("sm_clock_rate", 0) / 1e3 or None
        if info.get("mem_clock_rate") and info.get("mem_bus_width"):
            out["hbm_gbps"] = 2 * info["mem_clock_rate"] * 1e3 * info["mem_bus_width"] / 8 / 1e9
    except Exception:  # noqa: BLE001 - constants we can't read keep H100-like defaults, said in the profile
        out["constants_note"] = "shared memory and bandwidth not readable here; H100 values assumed"
    return out


def calibrate(name: str | None = None, seq_len: int = 8192, heads: int = 16, head_dim: int = 128,
              dtype="bfloat16", flex: bool = False, base: str = "h100", progress=print) -> tuple[Profile, dict]:
    """Measure and fit a profile for the current GPU; returns (profile, {"kernel": FitResult, ...})."""
    require_gpu()
    neighborhood_pattern(seq_len)  # the length check, before anything is measured
    import torch
    import triton

    from ..grammar import compile
    from ..runtime import attention
    from ..runtime.autotune import candidates

    started = time.perf_counter()
    dtype = dtype_name(dtype)
    torch_dtype = getattr(torch, dtype)
    device = torch.device("cuda", torch.cuda.current_device())
    capability = torch.cuda.get_device_capability(device)
    constants = device_constants(device)
    configs = candidates(head_dim, torch_dtype, capability)
    jobs = calibration_jobs(configs, seq_len)
    neighborhood = neighborhood_pattern(seq_len)

    def bench(fn):
        fn()
        return triton.testing.do_bench(fn, warmup=WARMUP_MS, rep=REP_MS, return_mode="median")

    q, k, v = (torch.randn(1, heads, seq_len, head_dim, device=device, dtype=torch_dtype) for _ in range(3))
    measurements = []
    patterns = {}
    for label, text, cfg in jobs:
        pattern = patterns.setdefault(text, compile(text))
        try:
            ms = bench(lambda: attention(q, k, v, pattern, config=cfg))
        except Exception as e:  # noqa: BLE001 - a config that can't compile here is left out, and said
            progress(f"  {label} {config_name(cfg)}: skipped ({type(e).__name__}: {str(e)[:120]})")
            continue
        progress(f"  {label:13s} {config_name(cfg):24s} {ms:8.3f} ms")
        measurements.append(Measurement(text, seq_len, seq_len, heads, head_dim, dtype, ms, config=cfg,
                                        label=f"{label} {seq_len} {config_name(cfg)}"))
    if not measurements:
        raise PatternError("no generated kernel ran on this GPU, so nothing could be measured")

    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    for S in (seq_len // 2, seq_len, seq_len * 2):
        qd, kd, vd = (torch.randn(1, heads, S, head_dim, device=device, dtype=torch_dtype) for _ in range(3))
        kernel = "cuDNN SDPA"
        try:
            with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                ms = bench(lambda: sdpa(qd, kd, vd))
        except RuntimeError:
            kernel = "SDPA (best available backend)"
            ms = bench(lambda: sdpa(qd, kd, vd))
        progress(f"  dense {S:6d} ({kernel}) {ms:8.3f} ms")
        measurements.append(Measurement("full", S, S, heads, head_dim, dtype, ms, kind="dense", label=kernel))

    if flex:
        measurements += _measure_flex(q, k, v, patterns, [("causal", "causal"), ("blocked", "blocked(1024)"),
                                                          ("swa", "causal & window(1024)"),
                                                          ("natten2d", neighborhood)], bench, progress)

    measured_s = time.perf_counter() - started
    profile, fits = build_profile(measurements, constants, capability, name, base)
    profile = dataclasses.replace(profile, fit={
        **profile.fit, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "environment": {"torch": torch.__version__, "triton": triton.__version__},
        "measure_seconds": round(measured_s, 1)})
    return profile, fits


def build_profile(measurements: list[Measurement], constants: dict, capability, name: str | None = None,
                  base: str = "h100") -> tuple[Profile, dict]:
    """The profile fitted to calibrate's measurements (kinds "patternc", "dense" and, if any, "flex")."""
    sk = skeleton(name or _default_name(constants["device"]), constants["device"], constants["sm_count"],
                  constants["smem_per_sm_kib"], constants["smem_per_block_kib"], constants["hbm_gbps"],
                  constants.get("clock_mhz"))
    layouts = _Layouts()
    profile, kfit = fit_kernel(measurements, sk, layouts)
    fits = {"kernel": kfit}
    dense = dense_points(measurements)
    if dense is None:
        raise PatternError("calibrate measured no dense kernel, so the profile has no dense time")
    profile = dataclasses.replace(profile, dense=dense)
    if any(m.kind == "flex" for m in measurements):
        profile, fits["flex"] = fit_flex(measurements, profile, layouts)
        flex_note = "measured"
    else:
        profile, flex_note = _scaled_flex(profile, base)
    profile = dataclasses.replace(profile, fit={
        "capability": list(capability), "source": "patternc calibrate",
        "calibration_rows": [m.label for m in measurements if m.kind == "patternc"],
        "kernel_rms_rel_error": round(kfit.rms, 4), "flex": flex_note,
        **({"constants_note": constants["constants_note"]} if "constants_note" in constants else {}),
    })
    return Profile.from_dict(profile.to_dict()), fits


LOG_KERNEL = re.compile(r"^\s+(\S+)\s+(\d+x\d+\S*)\s+([\d.]+) ms$")
LOG_DENSE = re.compile(r"^\s+dense\s+(\d+) \((.+)\)\s+([\d.]+) ms$")
LOG_FLEX = re.compile(r"^\s+flex (\S+)\s+([\d.]+) ms$")


def measurements_from_log(text: str, seq_len: int | None = None, heads: int = 16, head_dim: int = 128,
                          dtype="bfloat16") -> list[Measurement]:
    """The measurements a `patternc calibrate` run printed (its progress lines), to refit a
    profile without the GPU when the model changes. `seq_len` defaults to the middle of the
    three dense lengths it printed (calibrate measures dense at half, once and twice it)."""
    dtype = dtype_name(dtype)
    lines = text.splitlines()
    dense = [(int(m.group(1)), m.group(2), float(m.group(3))) for m in map(LOG_DENSE.match, lines) if m]
    if seq_len is None:
        if not dense:
            raise PatternError("the calibrate log has no dense lines, so its sequence length is unknown",
                               None, "pass seq_len")
        seq_len = sorted(S for S, _, _ in dense)[len(dense) // 2]
    texts = {**PATTERNS, "causal-table": "causal", "natten2d": neighborhood_pattern(seq_len)}
    flex_texts = {**PATTERNS, "natten2d": neighborhood_pattern(seq_len)}
    out = []
    for line in lines:
        m = LOG_KERNEL.match(line)
        if m and m.group(1) in texts:
            label, name, ms = m.groups()
            out.append(Measurement(texts[label], seq_len, seq_len, heads, head_dim, dtype, float(ms),
                                   config=parse_config(name), label=f"{label} {seq_len} {name}"))
        m = LOG_FLEX.match(line)
        if m and m.group(1) in flex_texts:
            out.append(Measurement(flex_texts[m.group(1)], seq_len, seq_len, heads, head_dim, dtype,
                                   float(m.group(2)), kind="flex", label=f"flex {m.group(1)} {seq_len}"))
    out += [Measurement("full", S, S, heads, head_dim, dtype, ms, kind="dense", label=kernel)
            for S, kernel, ms in dense]
    if not any(m.kind == "patternc" for m in out):
        raise PatternError("no kernel times in the calibrate log")
    return out


def refit_from_log(log, base, name: str | None = None, seq_len: int | None = None, heads: int = 16,
                   head_dim: int = 128, dtype="bfloat16") -> tuple[Profile, dict]:
    """A profile fitted with the current model to the times a `patternc calibrate` run printed
    (`log`: its output), with the device constants, capability and environment of `base` (the
    profile that run wrote, or any profile of that GPU). No GPU needed. A `card.txt` beside the
    log (`benchmarks/gpu_session.sh` writes one: "NAME, DRIVER" then "torch X triton Y") adds
    the card and driver to the environment it records."""
    from pathlib import Path

    log = Path(log)
    base_name = base.name if isinstance(base, Profile) else str(base)
    base = base if isinstance(base, Profile) else Profile.load(base)
    ms = measurements_from_log(log.read_text(), seq_len, heads, head_dim, dtype)
    constants = {"device": base.device, "sm_count": base.sm_count, "smem_per_sm_kib": base.smem_per_sm_kib,
                 "smem_per_block_kib": base.smem_per_block_kib, "hbm_gbps": base.hbm_gbps,
                 "clock_mhz": base.clock_mhz}
    profile, fits = build_profile(ms, constants, base.fit.get("capability", (9, 0)), name or base.name)
    environment = dict(base.fit.get("environment") or {})
    card = log.parent / "card.txt"
    if card.is_file():
        first, *rest = card.read_text().splitlines() or [""]
        if "," in first:
            environment["card"], environment["driver"] = (x.strip() for x in first.split(",", 1))
        m = re.match(r"torch (\S+) triton (\S+)", rest[0] if rest else "")
        if m:
            environment["torch"], environment["triton"] = m.groups()
    fit = {**profile.fit, "date": base.fit.get("date"), "environment": environment,
           "refit": f"costs fitted with the current model to the times in {log} (`patternc calibrate --from-log`); "
                    f"device constants from {base_name}"}
    return dataclasses.replace(profile, fit=fit), fits


def _default_name(device_name: str) -> str:
    import re

    words = re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-")
    return words.removeprefix("nvidia-") or "gpu"


def _scaled_flex(profile: Profile, base: str) -> tuple[Profile, str]:
    """FlexAttention's costs from the base profile, scaled by the dense throughput ratio."""
    from .model import Shape, dense_ms

    try:
        ref = Profile.load(base)
    except PatternError:
        return profile, "not measured (no base profile)"
    shape = Shape(8192, 8192, 16, profile.reference["head_dim"], profile.reference["dtype"])
    ratio = dense_ms(shape, profile) / dense_ms(shape, ref)
    flex = {k: (v * ratio if k not in ("block", "launch_us") else v) for k, v in ref.flex.items()}
    return dataclasses.replace(profile, flex=flex), f"scaled from the {ref.name} profile by dense time ({ratio:.3f}x)"


def _measure_flex(q, k, v, patterns, which, bench, progress) -> list[Measurement]:
    import torch
    from torch.nn.attention.flex_attention import flex_attention

    from ..grammar import compile

    run = torch.compile(flex_attention, dynamic=False)
    out = []
    _, H, S, D = q.shape
    for label, text in which:
        pattern = patterns.setdefault(text, compile(text))
        mask = pattern.layout(S, heads=H, block_m=128, block_n=128, order="natural").to_flex_block_mask().to(q.device)
        try:
            ms = bench(lambda: run(q, k, v, block_mask=mask))
        except Exception as e:  # noqa: BLE001
            progress(f"  flex {label}: skipped ({type(e).__name__})")
            continue
        progress(f"  flex {label:8s} {ms:8.3f} ms")
        out.append(Measurement(text, S, S, H, D, str(q.dtype).removeprefix("torch."), ms, kind="flex",
                               label=f"flex {label} {S}"))
    return out


__all__ = ["FitResult", "build_profile", "calibrate", "calibration_jobs", "device_constants", "measurements_from_log",
           "refit_from_log", "require_gpu"]
