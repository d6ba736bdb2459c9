"""Per-device choice of tile shape, warps, pipeline depth and memory path.

The first call for a (pattern, shapes, dtype, device) times a few candidate kernels on the
caller's inputs and keeps the fastest; the choice is cached in memory and in `autotune.json`
beside the kernel cache, so later processes skip the search. The candidates' kernels are
compiled at once, in threads, before the first is timed (`compile_all`), on machines of
MIN_CORES cores or more.
"""
from __future__ import annotations

import json
import os

from .cache import atomic_write, cache_dir

_choices: dict[str, dict] = {}
_loaded = False


def candidates(head_dim: int, dtype, capability: tuple[int, int]) -> list[dict]:
    """Configs worth timing on this device (measured on H100 and H200: see benchmarks/results).
    At head_dim 128 in half precision on Hopper, four of the six shape x memory pairs: over 27
    rows of the H200 suite (2026-11-28-h200-suite, -routed, -routed2, 2026-12-02-h200-final) 128x64
    through TMA and 128x128 through pointers were never the fastest, nor within 3 % where another
    pair was not (one compile less each on a first call)."""
    import torch

    memories = ["tma", "pointers"] if capability >= (9, 0) else ["pointers"]
    if dtype == torch.float32 or head_dim > 128:
        shapes = [(64, 32, 4, 2), (64, 64, 4, 2)]
    elif head_dim <= 64:
        shapes = [(128, 64, 4, 3), (64, 64, 4, 3), (128, 128, 8, 3)]
    else:
        shapes = [(128, 128, 8, 3), (128, 64, 8, 3), (64, 64, 4, 3)]
    hopper_half_128 = len(memories) == 2 and dtype != torch.float32 and 64 < head_dim <= 128
    never = [((128, 64, 8, 3), "tma"), ((128, 128, 8, 3), "pointers")] if hopper_half_128 else []
    return [{"block_m": m, "block_n": n, "num_warps": w, "num_stages": s, "memory": mem}
            for mem in memories for m, n, w, s in shapes if ((m, n, w, s), mem) not in never]


def backward_candidates(head_dim: int, dtype, capability: tuple[int, int]) -> list[dict]:
    """Configs worth timing for the backward kernels, tuned apart from the forward (they only read
    its output and LSE): five matmuls per tile hold more registers, so smaller tiles and shallower
    pipelines than the forward's (the backward kernels run one stage less than `num_stages`). At
    head_dim 128 in half precision, 64x64 tiles with 4 warps beat every larger or narrower shape
    tried, in both gradient kernels, by 1.5x or more (H200: benchmarks/results/
    2026-12-02-h200-session2/backward_kernels.md): only their pipeline depth and memory path are searched."""
    import torch

    memories = ["tma", "pointers"] if capability >= (9, 0) else ["pointers"]
    if dtype == torch.float32 or head_dim > 128:
        shapes = [(64, 32, 4, 2), (32, 32, 4, 2), (32, 64, 4, 2)]
    elif head_dim <= 64:
        shapes = [(64, 64, 4, 3), (128, 64, 8, 3), (64, 128, 8, 3)]
    else:
        shapes = [(64, 64, 4, 3), (64, 64, 4, 4)]
    return [{"block_m": m, "block_n": n, "num_warps": w, "num_stages": s, "memory": mem}
            for m, n, w, s in shapes for mem in memories[:1 if (m, n) != (64, 64) else 2]]


def _path():
    return cache_dir().parent / "autotune.json"


def _on_disk() -> dict:
    """The saved choices; a missing, corrupt or truncated file counts as none (it is rewritten)."""
    try:
        saved = json.loads(_path().read_bytes())
    except (OSError, ValueError):
        return {}
    if not isinstance(saved, dict):
        return {}
    shape = ("block_m", "block_n", "num_warps", "num_stages")
    return {k: v for k, v in saved.items()
            if isinstance(v, dict) and all(isinstance(v.get(n), int) and v[n] > 0 for n in shape)}


def lookup(key: str) -> dict | None:
    global _loaded
    if not _loaded:
        _loaded = True
        _choices.update(_on_disk())
    return _choices.get(key)


def remember(key: str, config: dict) -> None:
    _choices[key] = config
    on_disk = _on_disk()
    on_disk[key] = config
    atomic_write(_path(), json.dumps(on_disk, indent=1, sort_keys=True))


def tune(prepare, configs: list[dict], kernels: int = 1) -> dict:
    """The fastest config: `prepare(config)` readies a config (its layout and module) and returns
    a function that launches its kernels once, the one timed; `prepare(config, warm=True)`, one
    that compiles its `kernels` kernels instead of running them. Every candidate is compiled at
    once (`compile_all`) before any is timed; configs that fail to compile are skipped."""
    import triton

    compile_all(lambda cfg: prepare(cfg, warm=True)(), configs, kernels)
    best, best_ms = None, float("inf")
    for cfg in configs:
        try:
            launch = prepare(cfg)
            launch()
            ms = triton.testing.do_bench(launch, warmup=5, rep=20, return_mode="median")
        except Exception:  # noqa: BLE001 - e.g. out of shared memory for this shape: try the next
            continue
        if ms < best_ms:
            best, best_ms = cfg, ms
    if best is None:
        raise RuntimeError("no kernel configuration compiled for this problem")
    return best


MIN_CORES = 4  # below this, candidates compile one after another as they are timed (see compile_workers)


def compile_workers(count: int) -> int:
    """Threads to compile `count` kernels in: one per core this process may run on, at most one
    per kernel; 1 (no concurrent compile) on fewer than MIN_CORES cores, where four kernels
    compiled in threads took longer than one after another (2 cores)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return 1 if cores < MIN_CORES else max(1, min(cores, count))


def compile_all(warm, configs: list[dict], kernels: int = 1) -> None:
    """Compile every config's kernels at once, so that timing them finds them compiled: `warm(config)`
    runs the config's launch with each kernel's `JITFunction.warmup` in place of its launch (the
    same arguments, so the same specialisation, as the timed launch), under Triton's
    `AsyncCompileMode`, which hands each compile to a thread of a pool and fills Triton's kernel
    cache when all are done (its passes, LLVM and ptxas run outside the GIL for much of the time).
    A config whose compile fails is left to the timing loop, which skips it as before. A no-op
    with one worker (`compile_workers`), under TRITON_INTERPRET=1 (nothing compiles), with a
    Triton without `AsyncCompileMode` (3.6 and 3.9 have it), or inside another one. `kernels`:
    how many each config compiles."""
    workers = compile_workers(len(configs) * kernels)
    if workers < 2 or os.environ.get("TRITON_INTERPRET") == "1":
        return
    import triton

    mode = getattr(triton, "AsyncCompileMode", None)
    if mode is None or _compiling_async():
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers, thread_name_prefix="patternc-compile") as pool, \
            mode(_CompileThenLoad(pool), ignore_errors=True):
        for cfg in configs:
            try:
                warm(cfg)
            except Exception:  # noqa: BLE001 - the timing loop meets it again, and skips the config
                continue


class _CompileThenLoad:
    """The executor `AsyncCompileMode` hands compiles to: each compile on a thread of `pool`, then,
    on the same thread, its kernel's launcher (the host code that launches it: Triton 3.6 builds
    one per kernel signature with the C compiler, cached on disk, at the kernel's first launch
    otherwise, one after another)."""

    def __init__(self, pool):
        self.pool = pool

    def submit(self, compile):
        return self.pool.submit(_compile_then_load, compile)


def _compile_then_load(compile):
    kernel = compile()
    try:
        from triton.runtime import driver

        driver.active.launcher_cls(kernel.src, kernel.metadata)
    except Exception:  # noqa: BLE001 - only a head start: the first launch builds or loads it as before
        pass
    return kernel


def _compiling_async() -> bool:
    """Whether the caller is inside an `AsyncCompileMode` already (a second one can't be entered)."""
    try:
        from triton.runtime._async_compile import active_mode
    except ImportError:
        return True
    return active_mode.get() is not None


def warming(module):
    """`module` as `_run`/`_run_backward` see it, whose `launch` and `launch_backward` compile
    their kernels (`JITFunction.warmup` with the launch's own grid and arguments) instead of
    launching them."""
    from triton.runtime.jit import KernelInterface

    from .launcher import launch_with

    kernels = {name: _Warm(value) for name, value in vars(module).items() if isinstance(value, KernelInterface)}
    functions = {name: launch_with(module, kernels, name) for name in ("launch", "launch_backward")
                 if callable(getattr(module, name, None))}
    return _Warming(module, functions)


class _Warm:
    """A kernel whose `kernel[grid](**kwargs)` compiles it for those arguments without running it."""

    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.kernel.warmup(*args, grid=grid, **kwargs)


class _Warming:
    """A generated module with its launch functions replaced (see `warming`)."""

    def __init__(self, module, functions: dict):
        self._module = module
        self.__dict__.update(functions)

    def __getattr__(self, name):
        return getattr(self._module, name)
