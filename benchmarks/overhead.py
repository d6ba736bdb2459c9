"""Cached call overhead (issue 13, target 4): patternc.attention at a tiny shape, call after call.

At 1 x 1 x 256 x 64 (bf16) the kernel runs for a few microseconds, so a loop of calls measures
the host: what patternc and Triton do per call. For each pattern and config this times, as the
wall time per call of a loop of --calls calls (the best of --repeats loops, GPU synchronized at
both ends):

- `patternc`: `patternc.attention(q, k, v, pattern)`, the cached path a user gets;
- `bare`: the same compiled kernel launched directly with every argument precomputed
  (`CompiledKernel.run`, the floor of any Python launch);
- `launch`: the generated module's `launch()` through Triton's JIT dispatch (`kernel[grid](...)`),
  the path every cached call took before the replayed launches of `runtime/launcher.py`;
- `kernel`: the kernel's own GPU time (torch profiler; CUDA events over a CUDA graph of launches
  where the profiler gives nothing);
- `sdpa`: `F.scaled_dot_product_attention(q, k, v, is_causal=True)` in the same loop.

The target: `patternc - kernel <= 15 us`. Before timing, each config is checked: the cached
call on new data must equal `launch()` bit for bit, and a strided view, a misaligned view and
the LSE must give what contiguous inputs give. Writes overhead.json and overhead.md to --out.

    python benchmarks/overhead.py --out benchmarks/results/DATE-h200-overhead    # on a GPU, < 1 min

Without a GPU, `--mock` times the host side on the CPU with the launch itself replaced by a
no-op (a stand-in Triton driver; kernels are not compiled): the cached call with the replayed
launch against the same call through launch() and Triton's dispatch.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # patternc from this checkout

PATTERNS = {"causal": "causal", "window64": "causal & window(64)"}
SHAPE = (1, 1, 256, 64)


def environment() -> dict:
    import datetime
    import platform
    import subprocess

    import torch
    import triton

    import patternc

    driver = "unknown"
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=20, check=False).stdout.strip() or driver
    except (OSError, subprocess.SubprocessError):
        pass
    return {"card": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "driver": driver,
            "torch": torch.__version__, "triton": triton.__version__, "patternc": patternc.__version__,
            "cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def per_call_us(fn, calls: int, repeats: int, sync, clock=time.perf_counter) -> dict:
    """Wall (or `clock`) time per call of `calls` calls in a loop: best and median of `repeats` loops."""
    for _ in range(min(calls, 50)):
        fn()
    sync()
    loops = []
    for _ in range(repeats):
        t0 = clock()
        for _ in range(calls):
            fn()
        sync()
        loops.append((clock() - t0) / calls * 1e6)
    return {"best": min(loops), "median": statistics.median(loops)}


def runtime_module():
    return sys.modules["patternc.runtime.attention"]


def fast_entry(pattern, q, config, return_lse=False):
    """The FastLaunch patternc keeps for this pattern's calls on q (None where there is none)."""
    from patternc.runtime.launcher import FastLaunch

    rt = runtime_module()
    for key, fast in rt._fast.items():
        if (fast.pattern is pattern and key[1] == q.shape and key[4] == q.stride() and key[-1] == return_lse
                and key[-2] == rt.config_key(config) and isinstance(fast, FastLaunch)):
            return fast
    return None


def prepared(pattern, q, config):
    """(module, layout) of the cached problem (after a first call)."""
    rt = runtime_module()
    for key, (user, module, layout) in rt._ready.items():
        if user is pattern and key[1] == q.shape and key[-2] == rt.config_key(config):
            return module, layout
    raise RuntimeError("the problem is not cached: call patternc.attention first")


def seen_launch(module, layout, q, k, v):
    """(kernel, grid, keyword arguments) that module.launch passes Triton for these inputs."""
    from patternc.runtime.launcher import launch_with

    seen = []

    class See:
        def __getitem__(self, grid):
            return lambda **kwargs: seen.append((grid, kwargs))

    launch_with(module, {"attention_fwd": See()})(q, k, v, layout)
    grid, kwargs = seen[0]
    return module.attention_fwd, grid, kwargs


def bare_launch(fast, q, k, v, torch):
    """The recorded kernel launched with every argument fixed: CompiledKernel.run and nothing else."""
    kernel = fast.kernels[0]
    out = torch.empty_like(q)
    args = kernel.args.copy()
    for slot, which in kernel.slots:
        args[slot] = (q, k, v, out)[which]
    for slot, which, cls, fields, view in kernel.descriptors:
        desc = object.__new__(cls)
        desc.__dict__.update(fields)
        desc.base = (q, k, v, out)[which] if view is None else (q, k, v, out)[which].view(view)
        args[slot] = desc
    for slot, which in kernel.scales:
        args[slot] = fast.default_scale[which]
    run, grid, function, metadata = kernel.run, kernel.grid, kernel.function, kernel.metadata
    stream, device = fast.current_stream, fast.device
    return lambda: run(grid[0], grid[1], grid[2], stream(device), function, metadata, None, None, None, *args)


# ------------------------------------------------------------------------------------------ GPU


def kernel_gpu_us(launch, torch, name_part: str) -> tuple[float | None, str]:
    """(the GPU time of one launch in us: its kernels whose name holds `name_part`, how it was measured)."""
    try:
        from torch.profiler import ProfilerActivity, profile

        for _ in range(20):
            launch()
        torch.cuda.synchronize()
        launches = 200
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(launches):
                launch()
            torch.cuda.synchronize()
        total = sum(e.device_time_total for e in prof.events()
                    if str(getattr(e, "device_type", "")).endswith("CUDA") and name_part in e.name)
        if total > 0:
            return total / launches, "torch profiler (kernel time per launch)"
    except Exception as e:  # noqa: BLE001 - no CUPTI: fall back to a graph
        print(f"  profiler unavailable ({type(e).__name__}: {e}); timing a CUDA graph", flush=True)
    try:
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            for _ in range(3):
                launch()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(100):
                launch()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        graph.replay()
        torch.cuda.synchronize()
        start.record()
        for _ in range(10):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) * 1e3 / 1000, "CUDA graph of 100 launches, events"
    except Exception as e:  # noqa: BLE001
        return None, f"unavailable: {type(e).__name__}: {e}"


def check(pattern, config, q, k, v, torch) -> dict:
    """What the replayed launches must give: launch()'s output bit for bit on new data, and the
    same outputs for a strided view, a misaligned view, the LSE."""
    import patternc

    module, layout = prepared(pattern, q, config)
    fresh = [torch.randn_like(x) for x in (q, k, v)]
    got = patternc.attention(*fresh, pattern, config=config)
    want, _ = module.launch(*fresh, layout)
    result = {"identical_to_launch": bool(torch.equal(got, want))}
    wide = torch.randn(*q.shape[:3], 2 * q.shape[3], device=q.device, dtype=q.dtype)
    strided = wide[..., :q.shape[3]]  # q's shape, rows 2 * head_dim apart
    result["strided_view_equal"] = bool(torch.equal(patternc.attention(strided, k, v, pattern, config=config),
                                                    patternc.attention(strided.contiguous(), k, v, pattern,
                                                                       config=config)))
    flat = torch.randn(q.numel() + 1, device=q.device, dtype=q.dtype)
    shifted = flat[1:].view(q.shape)  # 2 bytes past a 16-byte boundary
    try:
        result["misaligned_view_equal"] = bool(torch.equal(patternc.attention(shifted, k, v, pattern, config=config),
                                                           patternc.attention(shifted.clone(), k, v, pattern,
                                                                              config=config)))
    except AssertionError as e:  # TMA descriptors need 16-byte aligned bases (Triton's assertion)
        if "TensorDescriptor" not in vars(module):
            raise
        result["misaligned_view_equal"] = None
        result["misaligned_view_error"] = f"TMA: {e}"
    out, lse = patternc.attention(q, k, v, pattern, config=config, return_lse=True)
    ref, ref_lse = patternc.reference_attention(q.float(), k.float(), v.float(), pattern, return_lse=True)
    result["max_abs_err_vs_reference"] = float((out.float() - ref).abs().max())
    result["lse_max_abs_err"] = float((lse - ref_lse).abs().max())
    result["ok"] = (result["identical_to_launch"] and result["strided_view_equal"]
                    and result["misaligned_view_equal"] is not False
                    and result["max_abs_err_vs_reference"] < 2e-2 and result["lse_max_abs_err"] < 1e-2)
    return result


def measure(name, pattern, config_name, q, k, v, calls, repeats, sync, torch) -> dict:
    """One row: the checks, then the loops (see the module)."""
    import patternc

    config = None if config_name == "auto" else {"memory": config_name}
    row = {"pattern": name, "text": str(pattern), "config": config_name}
    t0 = time.perf_counter()
    try:
        patternc.attention(q, k, v, pattern, config=config)
        sync()
    except Exception as e:  # noqa: BLE001 - reported, the other rows still run
        row["error"] = f"{type(e).__name__}: {e}"
        return row
    row["first_call_s"] = time.perf_counter() - t0
    row["check"] = check(pattern, config, q, k, v, torch)
    row["patternc_us"] = per_call_us(lambda: patternc.attention(q, k, v, pattern, config=config), calls, repeats,
                                     sync)
    row["patternc_with_lse_us"] = per_call_us(
        lambda: patternc.attention(q, k, v, pattern, config=config, return_lse=True), calls, repeats, sync)
    module, layout = prepared(pattern, q, config)
    row["launch_us"] = per_call_us(lambda: module.launch(q, k, v, layout), calls, repeats, sync)
    kernel, grid, kwargs = seen_launch(module, layout, q, k, v)
    jit_launch = (lambda: kernel[grid](**kwargs))
    row["triton_dispatch_us"] = per_call_us(jit_launch, calls, repeats, sync)
    fast = fast_entry(pattern, q, config)
    row["replayed"] = fast is not None
    bare = jit_launch  # without a replay, the JIT launch is the floor left
    if fast is not None:
        bare = bare_launch(fast, q, k, v, torch)
        row["bare_us"] = per_call_us(bare, calls, repeats, sync)
    row["kernel_us"], row["kernel_timing"] = kernel_gpu_us(bare, torch, "attention_fwd")
    if row["kernel_us"] is not None:
        row["overhead_us"] = row["patternc_us"]["best"] - row["kernel_us"]
        row["target_met"] = row["overhead_us"] <= 15.0
    return row


def run_gpu(args) -> dict:
    import torch
    import torch.nn.functional as F

    import patternc

    sync = torch.cuda.synchronize
    dtype = getattr(torch, args.dtype)
    q, k, v = (torch.randn(*SHAPE, device="cuda", dtype=dtype) for _ in range(3))
    rows = []
    sdpa = per_call_us(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), args.calls, args.repeats, sync)
    sdpa_kernel, _ = kernel_gpu_us(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), torch, "")
    print(f"sdpa: {sdpa['best']:.1f} us per call (kernel {sdpa_kernel or float('nan'):.1f} us)", flush=True)
    capability = torch.cuda.get_device_capability()
    for name in args.patterns:
        pattern = patternc.compile(PATTERNS.get(name, name))
        for config_name in args.configs:
            if config_name == "tma" and capability < (9, 0):
                continue
            rows.append(measure(name, pattern, config_name, q, k, v, args.calls, args.repeats, sync, torch))
            print(summary_line(rows[-1]), flush=True)
    return {"environment": environment(), "shape": list(SHAPE), "dtype": args.dtype, "calls": args.calls,
            "repeats": args.repeats, "sdpa_us": sdpa, "sdpa_kernel_us": sdpa_kernel, "rows": rows}


def _us(row, name) -> str:
    value = row.get(name)
    if value is None:
        return "-"
    return f"{value['best']:.1f}" if isinstance(value, dict) else f"{value:.1f}"


def summary_line(row) -> str:
    if "error" in row:
        return f"{row['pattern']}/{row['config']}: {row['error']}"
    return (f"{row['pattern']}/{row['config']}: patternc {_us(row, 'patternc_us')} us, bare {_us(row, 'bare_us')}, "
            f"launch() {_us(row, 'launch_us')}, triton dispatch {_us(row, 'triton_dispatch_us')}, kernel "
            f"{_us(row, 'kernel_us')} -> overhead {_us(row, 'overhead_us')} us (target <= 15: "
            f"{row.get('target_met')}); checks {'ok' if row.get('check', {}).get('ok') else row.get('check')}")


def markdown(result) -> str:
    env = result["environment"]
    lines = [f"# Cached call overhead, {'x'.join(map(str, result['shape']))} {result['dtype']}",
             "",
             (f"{env['card']}, driver {env['driver']}, torch {env['torch']}, triton {env['triton']}, "
              f"patternc {env['patternc']}, {env['date']}. Wall time per call of a loop of {result['calls']} calls "
              f"(best of {result['repeats']}), in microseconds."),
             "",
             (f"SDPA (is_causal) in the same loop: {result['sdpa_us']['best']:.1f} us per call "
              f"(kernel {_us(result, 'sdpa_kernel_us')} us)."),
             "",
             ("| pattern | config | patternc | with LSE | bare launch | launch() + Triton | Triton dispatch alone "
              "| kernel (GPU) | overhead | target <= 15 | checks |"),
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        if "error" in row:
            lines.append(f"| {row['pattern']} | {row['config']} | error: {row['error']} |||||||||")
            continue
        cells = [row["pattern"], row["config"]] + [_us(row, name) for name in (
            "patternc_us", "patternc_with_lse_us", "bare_us", "launch_us", "triton_dispatch_us", "kernel_us",
            "overhead_us")]
        cells += ["yes" if row.get("target_met") else "no", "ok" if row["check"]["ok"] else "FAILED"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ CPU mock


def run_mock(args) -> dict:
    """The host side on the CPU: a stand-in driver, kernels 'compiled' to a no-op launcher."""
    import tempfile
    import types

    os.environ.pop("TRITON_INTERPRET", None)  # Triton makes real JITFunctions, as on a GPU ...
    os.environ.setdefault("PATTERNC_CACHE_DIR", tempfile.mkdtemp(prefix="patternc-overhead-"))
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import CompiledKernel
    from triton.runtime import driver

    import patternc
    from patternc.runtime import launcher

    # ... while patternc, which reads the variable per call, takes its kernel path on CPU tensors
    runtime_module().os = types.SimpleNamespace(environ=dict(os.environ, TRITON_INTERPRET="1"))

    class Driver:  # what Triton's JIT dispatch asks of a driver
        def get_current_device(self):
            return 0

        def get_current_stream(self, device):
            return 0

        def get_current_target(self):
            return GPUTarget("cuda", 90, 32)

    driver.set_active(Driver())

    class Compiled:  # a CompiledKernel whose launcher does nothing
        name, function, packed_metadata = "attention_fwd", 1, (4, 1, 1, 1)
        launch_metadata = CompiledKernel.launch_metadata

        def __init__(self, jit):
            self.src = type("Source", (), {"fn": jit})

        def _init_handles(self):
            pass

        def run(self, *args):
            pass

    def no_compile(jit):
        def _do_compile(key, signature, device, constexprs, options, attrs, warmup):
            compiled = jit.device_caches[device][0][key] = Compiled(jit)
            jit.cache_key  # noqa: B018 - a real compile fills used_global_vals, which each call checks
            return compiled
        return _do_compile

    def on_cpu(q):
        from triton.runtime import driver as active

        return 0, active.active.get_current_device, active.active.get_current_stream

    dtype = torch.float16  # the interpreter's bfloat16 probe is beside the point here
    q, k, v = (torch.randn(*SHAPE, dtype=dtype) for _ in range(3))
    cfg = {"block_m": 128, "block_n": 64, "num_warps": 4, "num_stages": 3}
    sync = (lambda: None)
    rows = []
    for name in args.patterns:
        for replay in (False, True):
            pattern = patternc.compile(PATTERNS.get(name, name))
            launcher_target = launcher._target
            launcher._target = on_cpu if replay else (lambda q: None)
            try:
                rt = runtime_module()
                rt._ready.clear()
                rt._fast.clear()
                module, _ = rt._prepare(pattern, *SHAPE[:3], SHAPE[2], SHAPE[3], dict(cfg), "cpu",
                                        rt._device_tag(q.device))  # the module the first call gets
                module.attention_fwd._do_compile = no_compile(module.attention_fwd)
                call = (lambda p=pattern: patternc.attention(q, k, v, p, config=cfg))
                call_lse = (lambda p=pattern: patternc.attention(q, k, v, p, config=cfg, return_lse=True))
                row = {"pattern": name, "path": "replayed launch" if replay else "launch() + Triton dispatch",
                       "cpu_us": per_call_us(call, args.calls, args.repeats, sync, time.thread_time),
                       "cpu_with_lse_us": per_call_us(call_lse, args.calls, args.repeats, sync, time.thread_time),
                       "wall_us": per_call_us(call, args.calls, args.repeats, sync)}
                row["replayed"] = fast_entry(pattern, q, cfg) is not None
            finally:
                launcher._target = launcher_target
            rows.append(row)
            print(f"{name}: {row['path']}: {row['cpu_us']['best']:.2f} us CPU per call "
                  f"({row['cpu_with_lse_us']['best']:.2f} with the LSE; wall {row['wall_us']['best']:.2f}); "
                  f"replayed: {row['replayed']}", flush=True)
    return {"environment": dict(environment(), triton=triton.__version__), "mock": True, "shape": list(SHAPE),
            "dtype": "float16", "calls": args.calls, "repeats": args.repeats, "rows": rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="folder for overhead.json and overhead.md")
    parser.add_argument("--patterns", nargs="+", default=list(PATTERNS), help="names of PATTERNS or pattern text")
    parser.add_argument("--configs", nargs="+", default=["auto", "pointers", "tma"],
                        help="auto (autotuned, as a user gets it), pointers, tma")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--mock", action="store_true", help="no GPU: time the host side with a no-op launch")
    args = parser.parse_args(argv)
    if args.mock:
        result = run_mock(args)
    else:
        import torch

        if not torch.cuda.is_available():
            parser.error("no CUDA GPU here; --mock times the host side on the CPU")
        result = run_gpu(args)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "overhead.json").write_text(json.dumps(result, indent=1))
        if not args.mock:
            (args.out / "overhead.md").write_text(markdown(result))
        print(f"wrote {args.out}/overhead.json", flush=True)
    return 1 if any("error" in row or not row.get("check", {}).get("ok", True) for row in result["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
