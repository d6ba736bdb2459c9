"""`patternc.attention`: sparse attention through a generated Triton kernel."""
from __future__ import annotations

import os
import warnings
import weakref
from functools import lru_cache

from ..errors import PatternError
from ..ir.pattern import Pattern
from ..layout.cache import cached_layout
from .routed import RoutedPlan

SUPPORTED_HEAD_DIMS = (16, 32, 64, 128, 256)
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}  # short name -> torch dtype name


_ready: dict = {}  # (id(pattern), shapes, dtypes, devices, config) -> (pattern, module, layout)
_ready_backward: dict = {}  # the same for the backward kernels
# (id(pattern), shapes, strides, dtypes, devices, config, return_lse) -> launcher.FastLaunch (or Never)
_fast: dict = {}
# the same for the backward: (id(pattern), shapes, strides of q, k, v, out, do, lse, dlse, dtypes, device,
# config) -> launcher.FastBackward (or Never)
_fast_backward: dict = {}
_READY_LIMIT = 4096


def config_key(config: dict | None):
    """A config as a hashable key (cache keys, the custom op's problem key)."""
    return None if config is None else tuple(sorted(config.items()))


def _remember(ready: dict, key, user_pattern, module, layout):
    """Keep a prepared call for the cached path; holding the pattern object keeps its id unique."""
    if len(ready) > _READY_LIMIT:
        ready.clear()
    ready[key] = (user_pattern, module, layout)


@lru_cache(maxsize=256)
def _compile_text(text: str) -> Pattern:
    from ..grammar import compile

    return compile(text)


def as_pattern(pattern) -> Pattern:
    """A Pattern from a Pattern, pattern text (compiled once) or a `@patternc.jit` object."""
    if isinstance(pattern, Pattern):
        return pattern
    if isinstance(pattern, str):
        return _compile_text(pattern)
    inner = getattr(pattern, "pattern", None)
    if isinstance(inner, Pattern):
        return inner
    raise PatternError(f"expected a Pattern, pattern text or @patternc.jit object, got {type(pattern).__name__}")


def _check_inputs(q, k, v):
    import torch

    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise PatternError(f"{name} must be a 4-D tensor [batch, heads, length, head_dim] (SDPA layout), "
                               f"got {getattr(x, 'shape', type(x).__name__)}")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise PatternError(f"q, k, v must share one dtype of float16, bfloat16, float32; got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise PatternError(f"q, k, v must be on one device; got {q.device}, {k.device}, {v.device}")
    if q.device.type not in ("cuda", "cpu"):
        raise PatternError(f"q, k, v are on '{q.device}', which patternc can't run on", None,
                           "meta tensors hold no data to attend over; move the tensors to a CUDA GPU "
                           "(or the CPU)" if q.device.type == "meta" else "move the tensors to a CUDA GPU (or the CPU)")
    B, H, M, D = q.shape
    if k.shape[0] != B or v.shape[0] != B or k.shape[1] != v.shape[1] or k.shape[2] != v.shape[2]:
        raise PatternError(f"shapes don't match: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}",
                           None, "k and v are [batch, kv_heads, N, head_dim] with q's batch")
    if k.shape[3] != D or v.shape[3] != D:
        raise PatternError(f"q, k, v must share head_dim; got {D}, {k.shape[3]}, {v.shape[3]}")
    if H % k.shape[1]:
        raise PatternError(f"query heads ({H}) must be a multiple of key/value heads ({k.shape[1]}) for GQA/MQA")
    if D not in SUPPORTED_HEAD_DIMS:
        raise PatternError(f"head_dim {D} is not supported", None,
                           f"supported: {', '.join(map(str, SUPPORTED_HEAD_DIMS))}")


def _check_documents(documents, q, k, pattern: Pattern | None = None):
    """`documents=` for this call: a tensor of boundaries on q's device over self-attention (no
    host sync), a pattern that applies per document (checked once per pattern), and boundaries
    from 0 to N that never decrease (one host sync per boundaries tensor and version, so the
    layers of a model pay it once per step; not while a CUDA graph is captured, where syncing is
    not allowed: graphs replay boundaries checked when they were first run eagerly)."""
    import torch

    from ..ir.documents import check_tensor, check_values

    N = k.shape[2]
    if q.shape[2] != N:
        raise PatternError(f"documents= packs self-attention: q and k need one length, got M = {q.shape[2]}, N = {N}",
                           None, "pack queries and keys of the same tokens (M == N)")
    check_tensor(documents, N, q.device)
    if pattern is not None:
        _check_document_pattern(pattern, q.shape[1])
    key = (id(documents), documents._version, N)
    seen = _checked_documents.get(key)
    if seen is not None and seen() is documents:  # the layers of a model share one tensor per step
        return
    if not (q.device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
        check_values(documents, N)
        if len(_checked_documents) > 64:
            _checked_documents.clear()
        _checked_documents[key] = weakref.ref(documents)


_checked_documents: dict = {}  # (id, version, N) -> weakref of boundaries already checked


@lru_cache(maxsize=256)
def _check_document_pattern(pattern: Pattern, heads: int):
    from ..ir.documents import check_pattern

    check_pattern(pattern, heads, routed=True)


def _check_interpreter_dtype(q, interpret: bool):
    import torch

    from .interpreter import bf16_dot_works

    if interpret and q.dtype == torch.bfloat16 and not bf16_dot_works():
        raise PatternError("bfloat16 under TRITON_INTERPRET=1 would give wrong results: this Triton's interpreter "
                           "multiplies bfloat16 tiles as their integer bits", None,
                           "use float16 or float32 in the interpreter (bfloat16 runs on the GPU), or unset "
                           "TRITON_INTERPRET for patternc's dense CPU path")


def default_config(head_dim: int, dtype, interpret: bool) -> dict:
    """Tile shape, warps and pipeline depth (the autotuner's starting point)."""
    import torch

    if interpret:
        return {"block_m": 16, "block_n": 16, "num_warps": 4, "num_stages": 1}
    wide = dtype == torch.float32
    if head_dim <= 64:
        return {"block_m": 128, "block_n": 64, "num_warps": 4, "num_stages": 3}
    if head_dim == 128:
        return {"block_m": 128, "block_n": 64 if not wide else 32, "num_warps": 8, "num_stages": 3}
    return {"block_m": 64, "block_n": 32, "num_warps": 4, "num_stages": 2}


@lru_cache(maxsize=256)
def _kernel(pattern: Pattern, H: int, M: int, N: int, head_dim: int, block_m: int, block_n: int,
            num_warps: int, num_stages: int, runs, tma: bool, token_order, device_tag: str, routed: str = "",
            backward: bool = False, documents: bool = False):
    from ..codegen import make_spec, module_source
    from .cache import load_module

    spec = make_spec(pattern, heads=H, M=M, N=N, head_dim=head_dim, block_m=block_m, block_n=block_n,
                     num_warps=num_warps, num_stages=num_stages, runs=runs, tma=tma, routed=routed,
                     documents=documents, **(token_order.kernel_order if token_order is not None else {}))
    return load_module(module_source(spec, backward=True) if backward else module_source(spec), device_tag)


def _device_tag(device) -> str:
    """What the compiled code depends on besides its source: the device (and the interpreter)."""
    import torch

    interpreted = "-interpret" if os.environ.get("TRITON_INTERPRET") == "1" else ""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"cuda-sm{major}{minor}{interpreted}"
    return device.type + interpreted


def training_config(head_dim: int, dtype) -> dict:
    """Fixed tiles for both passes, where one tile shape must serve forward and backward (blocks
    of context parallelism; the simulator's training model): the backward's five matmuls per
    tile spill registers at the forward's larger tiles, so smaller ones, with a pipeline deep
    enough for the backward's one stage less (measured on an H200,
    benchmarks/results/2026-12-01-h200-backward/). The custom op tunes each pass apart."""
    import torch

    if os.environ.get("TRITON_INTERPRET") == "1":
        return default_config(head_dim, dtype, True)
    if head_dim > 128 or dtype == torch.float32:
        return {"block_m": 64, "block_n": 32, "num_warps": 4, "num_stages": 2}
    return {"block_m": 64, "block_n": 64, "num_warps": 4, "num_stages": 3}


def forward(q, k, v, pattern, scale, config, documents=None):
    """(out, lse): the custom op's forward, tuned as inference is (the backward needs only its
    output and LSE, not its tiles)."""
    return _attention(q, k, v, pattern, scale, True, config, False, documents)


def _attention(q, k, v, pattern, scale, return_lse, config, return_layout, documents=None):
    record = None  # the fast key under which this call's launch is recorded, if it is
    if documents is None and not return_layout:
        # the fastest path: a launch recorded for exactly these shapes, strides, dtypes and devices
        # (launcher.FastLaunch: it re-checks per call what its kernel was specialized on)
        try:
            record = (id(pattern), q.shape, k.shape, v.shape, q.stride(), k.stride(), v.stride(), q.dtype, k.dtype,
                      v.dtype, q.device, k.device, v.device, None if config is None else config_key(config),
                      return_lse)
        except AttributeError:  # not tensors: the checks say which and what they should be
            _check_inputs(q, k, v)
            raise
        fast = _fast.get(record)
        if fast is not None and fast.pattern is pattern:
            result = fast(q, k, v, scale, return_lse)
            if result is not None:
                return result if return_lse else result[0]
            record = None  # recorded, but not for this call (or never replayed): launch() it
    try:
        key = (id(pattern), q.shape, k.shape, v.shape, q.dtype, k.dtype, v.dtype, q.device, k.device, v.device,
               config_key(config), documents is None)
    except AttributeError:  # not tensors: the checks say which and what they should be
        _check_inputs(q, k, v)
        raise
    hit = _ready.get(key)
    if hit is not None and hit[0] is pattern and not return_layout:  # the cached path: no checks, no lookups
        if documents is not None:  # ... but boundaries change from call to call
            _check_documents(documents, q, k)
        return _run(hit[1], hit[2], q, k, v, scale, return_lse, False, documents, record, pattern)

    pattern_obj = as_pattern(pattern)
    _check_inputs(q, k, v)
    if documents is not None:
        _check_documents(documents, q, k, pattern_obj)
    B, H, M, D = q.shape
    N = k.shape[2]
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    if q.device.type == "cpu" and not interpret:
        _warn_cpu_once()
        return reference_attention(q, k, v, pattern_obj, scale, return_lse, documents)
    _check_interpreter_dtype(q, interpret)
    if q.device.type == "cuda" and not interpret:
        _hash_triton()
    pattern, user_pattern = pattern_obj, pattern
    device_tag = _device_tag(q.device)
    cfg = _config(q, k, v, pattern, scale, config, device_tag, documents, return_lse)
    module, layout = _prepare(pattern, B, H, M, N, D, cfg, str(q.device), device_tag, documents=documents is not None)
    if not return_layout:
        _remember(_ready, key, user_pattern, module, layout)
    return _run(module, layout, q, k, v, scale, return_lse, return_layout, documents, record, user_pattern)


def backward(do, q, k, v, out, lse, dlse, pattern, scale, config, documents=None):
    """(dq, dk, dv): the custom op's backward, through the generated backward kernels, with the
    caller's config or one autotuned for the backward (on a CPU without the interpreter: the
    dense formula)."""
    record = None  # the fast key under which this call's launches are recorded, if they are
    if documents is None:  # the fastest path, as the forward's: launches recorded for these shapes and strides
        record = (id(pattern), q.shape, k.shape, q.stride(), k.stride(), v.stride(), out.stride(), do.stride(),
                  lse.stride(), None if dlse is None else dlse.stride(), q.dtype, do.dtype, q.device,
                  config_key(config))
        fast = _fast_backward.get(record)
        if fast is not None and fast.pattern is pattern:
            grads = fast(q, k, v, out, lse, do, dlse, scale)
            if grads is not None:
                return grads
            record = None
    key = (id(pattern), q.shape, k.shape, q.dtype, q.device, config_key(config), documents is None)
    hit = _ready_backward.get(key)
    if hit is not None and hit[0] is pattern:  # the cached path, as the forward's
        return _run_backward(hit[1], hit[2], do, q, k, v, out, lse, dlse, scale, documents, record, pattern)
    user_pattern, pattern = pattern, as_pattern(pattern)
    if q.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return reference_backward(do, q, k, v, out, lse, dlse, pattern, scale, documents)
    B, H, M, D = q.shape
    N = k.shape[2]
    device_tag = _device_tag(q.device)
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    if config is None and _autotunes(interpret):
        config = _tuned_config(q, k, pattern, device_tag, documents, lambda module, layout: _run_backward(
            module, layout, do, q, k, v, out, lse, dlse, scale, documents), backward=True)
    cfg = dict(default_config(D, q.dtype, interpret), **(config or {}))
    module, layout = _prepare(pattern, B, H, M, N, D, cfg, str(q.device), device_tag, backward=True,
                              documents=documents is not None)
    _remember(_ready_backward, key, user_pattern, module, layout)
    return _run_backward(module, layout, do, q, k, v, out, lse, dlse, scale, documents, record, user_pattern)


def _run_backward(module, layout, do, q, k, v, out, lse, dlse, scale, documents=None, record=None, pattern=None):
    """The generated backward's launches; `record`: the fast key under which to keep them for
    replays (`pattern` the caller's object), as `_run`'s."""
    if isinstance(layout, RoutedPlan):
        layout = layout.layout(q, k, documents)  # the forward's choice again: the selection is deterministic
        record = None
    packed = {} if documents is None else {"documents": documents}
    with _on_device(q):
        if record is not None:
            from .launcher import record_backward

            grads, fast = record_backward(module, layout, q, k, v, out, lse, do, dlse, scale, pattern)
            if fast is not None:
                _remember_fast(record, fast, _fast_backward)
            return grads
        return module.launch_backward(q, k, v, out, lse, do, layout, scale=scale, dlse=dlse, **packed)


def _config(q, k, v, pattern, scale, config, device_tag, documents=None, return_lse=False) -> dict:
    """The kernel config: defaults, the autotuned choice (GPU) and the caller's overrides."""
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    if config is None and _autotunes(interpret):
        config = _tuned_config(q, k, pattern, device_tag, documents, lambda module, layout: _run(
            module, layout, q, k, v, scale, return_lse, False, documents))
    return dict(default_config(q.shape[3], q.dtype, interpret), **(config or {}))


def _run(module, layout, q, k, v, scale, return_lse, return_layout, documents=None, record=None, pattern=None):
    """Launch a generated kernel; (out[, lse][, layout]) as `attention` returns them. A routed
    pattern's layout is its plan: the blocks are selected first, from q and k. `record`: the
    fast key (see `_attention`) under which to keep this launch for replays (`pattern` the
    caller's object it is for); problems with documents or routing are never replayed."""
    import torch

    routed = isinstance(layout, RoutedPlan)
    if routed:
        layout = layout.layout(q, k, documents)
    lse = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device) if return_lse else None
    with _on_device(q):
        if record is not None and not routed and documents is None and not return_layout:
            from .launcher import record as record_launch

            out, lse, fast = record_launch(module, layout, q, k, v, scale, lse, pattern)
            if fast is not None:
                _remember_fast(record, fast)
        else:
            packed = {} if documents is None else {"documents": documents}
            out, lse = module.launch(q, k, v, layout, scale=scale, lse=lse, **packed)
    result = (out,) + ((lse,) if return_lse else ()) + ((layout,) if return_layout else ())
    return result if len(result) > 1 else out


def _on_device(q):
    """Triton launches on the current CUDA device: make it q's for the call (a no-op context
    where it is already, or on the CPU)."""
    import contextlib

    import torch

    if q.is_cuda and q.device.index != torch.cuda.current_device():
        return torch.cuda.device(q.device)
    return contextlib.nullcontext()


def _remember_fast(key, fast, cache=None):
    cache = _fast if cache is None else cache
    if len(cache) > _READY_LIMIT:
        cache.clear()
    cache[key] = fast


def _prepare(pattern, B, H, M, N, D, cfg, device, device_tag, backward=False, documents=False):
    """(generated module, layout) for one config; both cached. For routed patterns the layout
    is a `RoutedPlan`, and tiles that do not divide the routing block are halved until they do.
    `backward`: the module also holds the backward kernels. `documents`: packed documents, laid
    out in document-relative tiles (the pattern's own layout at the packed length, token order
    natural, memory through pointers: a document starts anywhere)."""
    if pattern.is_routed:
        from .routed import fit_tiles, routed_plan

        cfg = fit_tiles(pattern, cfg)

        def plan_for_call():  # packed documents read the layout with every block chosen: built now too
            plan = routed_plan(pattern, M, N, H, cfg["block_m"], cfg["block_n"], device)
            if documents and backward:
                plan.every.q_num_blocks
            elif documents:
                plan.every
            return plan

        plan = _outside_graph_pools(device, plan_for_call)
        module = _kernel(pattern, H, M, N, D, cfg["block_m"], cfg["block_n"], cfg["num_warps"], cfg["num_stages"],
                         None, cfg.get("memory", "pointers") == "tma" and not documents, None, device_tag,
                         routed=plan.topk.query, backward=backward, documents=documents)
        _hashed_triton()
        return module, plan
    order = "natural" if documents else cfg.get("order", "auto")

    def build():  # the layout and every table the kernels will read of it, built now (see _outside_graph_pools)
        layout = cached_layout(pattern, M, N, H, cfg["block_m"], cfg["block_n"], order, device)
        layout.row_order, layout.block_tables()
        if backward:
            layout.q_num_blocks
        return layout, layout.runs() if cfg.get("iteration", "auto") != "table" else None

    layout, runs = _outside_graph_pools(device, build)
    runs_shape = None if runs is None else (runs[0].shape[2], runs[1].shape[2])
    module = _kernel(pattern, H, M, N, D, cfg["block_m"], cfg["block_n"], cfg["num_warps"], cfg["num_stages"],
                     runs_shape, _tma(cfg, layout, documents), layout.permutation, device_tag,
                     backward=backward, documents=documents)
    _hashed_triton()
    return module, layout


_triton_hash = None  # the thread hashing Triton's cache key, started by a process's first call on the GPU


def _hash_triton():
    """Start hashing Triton's own cache key in a thread (its compiler's sources and its 400-500 MB
    library, read by its first compile or disk-cache lookup in a process: 0.35-0.5 s on a CPU
    here), so that it runs while the first call looks up its config, builds its layout and
    generates its module; `_hashed_triton` waits for it before anything reaches Triton's JIT
    (a second caller would hash it again, not wait)."""
    global _triton_hash
    if _triton_hash is None:
        try:
            from triton.runtime.cache import triton_key
        except ImportError:  # another Triton: it hashes when it first needs the key, as before
            return
        import threading

        _triton_hash = threading.Thread(target=triton_key, name="patternc-triton-key", daemon=True)
        _triton_hash.start()


def _hashed_triton():
    if _triton_hash is not None:
        _triton_hash.join()


def _tma(cfg: dict, layout, documents: bool) -> bool:
    """Whether the kernel copies tiles through TMA descriptors: where the config asks and the tiles
    are boxes of memory (not a document's, which starts anywhere, nor a box of the grid in box order:
    its tiles go through pointers whatever the config says, so a TMA candidate times as pointers)."""
    return cfg.get("memory", "pointers") == "tma" and not documents and getattr(layout.permutation, "tma", True)


def _outside_graph_pools(device: str, build, *args):
    """`build(*args)` with its CUDA tensors taken from the ordinary caching allocator. Layouts
    and their tables outlive the call that builds them; when that call is the first of a model
    under `torch.compile(mode="reduce-overhead")`, CUDA graph trees route the calling thread's
    allocations (in torch < 2.6: its stream's) into the graph's private pool, and refuse a pool
    tensor that outlives the graph without being one of its outputs. A worker thread, on the
    device's default stream, allocates outside the pool either way."""
    if not device.startswith("cuda"):
        return build(*args)
    from concurrent.futures import ThreadPoolExecutor

    import torch

    def run():
        with torch.cuda.device(torch.device(device)):
            built = build(*args)
            torch.cuda.current_stream().synchronize()  # copies from pageable memory may still be in flight
            return built

    with ThreadPoolExecutor(1) as worker:
        return worker.submit(run).result()


def _autotunes(interpret: bool) -> bool:
    """Whether a config left to patternc is searched for (on the GPU, unless PATTERNC_AUTOTUNE=0,
    e.g. for test runs, where every new shape would otherwise compile every candidate) or the
    default one is taken (the interpreter)."""
    return not interpret and os.environ.get("PATTERNC_AUTOTUNE", "1") != "0"


def _tuned_config(q, k, pattern, device_tag, documents, launch, backward: bool = False) -> dict:
    """The autotuned config of the forward kernel (`backward`: of the backward kernels, tuned
    apart from the forward's) for this problem, searched once per device, then cached on disk.
    `launch(module, layout)` runs a candidate as the call will: a training forward writes the
    LSE, which is another specialisation, so that the chosen kernel is not compiled once more
    after the search."""
    from . import autotune

    B, H, M, D = q.shape

    def prepare(cfg, warm=False):
        module, layout = _prepare(pattern, B, H, M, k.shape[2], D, dict(cfg), str(q.device), device_tag,
                                  backward=backward, documents=documents is not None)
        module = autotune.warming(module) if warm else module
        return lambda: launch(module, layout)

    candidates = autotune.backward_candidates if backward else autotune.candidates
    return _tuned(_problem(q, k, pattern, device_tag, documents, "backward|" if backward else ""), prepare,
                  candidates(D, q.dtype, _capability(q.device)), kernels=3 if backward else 1)


def _problem(q, k, pattern, device_tag, documents, kind: str = "") -> str:
    """The autotuner's key of a problem: what the choice may depend on."""
    B, H, M, D = q.shape
    return (f"{kind}{pattern}|B{B}|H{H}|Hkv{k.shape[1]}|M{M}|N{k.shape[2]}|D{D}|{q.dtype}|{device_tag}"
            + ("|documents" if documents is not None else ""))


def _tuned(key: str, prepare, candidates: list[dict], kernels: int = 1) -> dict:
    """The config remembered for `key`, or the fastest candidate, remembered (`autotune.tune`:
    `prepare(config)` gives the launch it times, once the layout and module are ready, so that
    building or looking them up is not timed with it)."""
    from . import autotune

    found = autotune.lookup(key)
    if found is None:
        found = autotune.tune(prepare, candidates, kernels)
        autotune.remember(key, found)
    return found


def _capability(device) -> tuple[int, int]:
    import torch

    return torch.cuda.get_device_capability(device)


_warned = False


def _warn_cpu_once():
    global _warned
    if not _warned:
        _warned = True
        warnings.warn("patternc.attention on CPU tensors runs a dense masked reference (set TRITON_INTERPRET=1 "
                      "to run the generated kernel in Triton's interpreter)", stacklevel=3)


def reference_attention(q, k, v, pattern, scale=None, return_lse=False, documents=None, block=None):
    """Dense masked attention over `Pattern.mask` (float32 math, float64 for float64 inputs; any
    device). Same contract as `attention`: rows with no visible key give 0 and LSE = -inf;
    `documents` as `attention`'s; `block` = (q_start, k_start, length): the queries and keys are
    those at q_start.. and k_start.. of a self-attention sequence of `length` tokens."""
    scores, kf, vf = _dense_scores(q, k, v, pattern, scale, documents, block)
    lse = scores.logsumexp(dim=-1)
    out = (_probabilities(scores, lse) @ vf).to(q.dtype)
    return (out, lse) if return_lse else out


def reference_backward(do, q, k, v, out, lse, dlse, pattern, scale=None, documents=None, block=None):
    """(dq, dk, dv) of `reference_attention` from its output and LSE, by the formula the
    backward kernels implement (dk, dv summed over a GQA group; LSE's gradient `dlse` enters as
    `delta - dlse`); empty rows get zero gradients."""
    scores, kf, vf = _dense_scores(q, k, v, pattern, scale, documents, block)
    compute, group = scores.dtype, q.shape[1] // k.shape[1]
    scale = q.shape[3] ** -0.5 if scale is None else scale
    p = _probabilities(scores, lse.to(compute))
    dof = do.to(compute)
    delta = (dof * out.to(compute)).sum(-1) - (0 if dlse is None else dlse.to(compute))
    ds = p * (dof @ vf.transpose(-1, -2) - delta[..., None])
    dq = ds @ kf * scale
    dk = (ds.transpose(-1, -2) @ q.to(compute) * scale).unflatten(1, (-1, group)).sum(2)
    dv = (p.transpose(-1, -2) @ dof).unflatten(1, (-1, group)).sum(2)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def _dense_scores(q, k, v, pattern, scale, documents=None, block=None):
    """Masked scores [B, H, M, N] (-inf where the pattern hides a key) and k, v repeated over
    each GQA group, in float32 (float64 for float64 inputs)."""
    import torch

    pattern = as_pattern(pattern)
    B, H, M, D = q.shape
    N = k.shape[2]
    group = H // k.shape[1]
    scale = D ** -0.5 if scale is None else scale
    routed = {}
    if pattern.is_routed:
        if B != 1:
            raise PatternError("the routed reference takes a batch of 1")
        routed = {"q": q[0], "k": k[0]}
    if documents is not None:
        routed["documents"] = documents
    if block is not None:
        q0, k0, length = block
        mask = pattern.mask(length, heads=H, device=q.device, **routed)[:, q0:q0 + M, k0:k0 + N]
    else:
        mask = pattern.mask(M, N, heads=H, device=q.device, **routed)  # [H, M, N]
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    kf = k.to(compute).repeat_interleave(group, dim=1)
    vf = v.to(compute).repeat_interleave(group, dim=1)
    scores = (q.to(compute) @ kf.transpose(-1, -2)) * scale
    return scores.masked_fill(~mask[None], float("-inf")), kf, vf


def _probabilities(scores, lse):
    """softmax(scores) from its LSE; rows with no visible key (LSE = -inf) are 0, not NaN."""
    import torch

    return torch.exp(scores - torch.where(torch.isinf(lse), 0.0, lse)[..., None])
