"""`patternc bench FILE -n N`: how fast a pattern is on this GPU, against FlexAttention and dense SDPA.

    patternc bench examples/llm.pat -p swa -n 8192
    patternc bench examples/llm.pat -p swa -n 32768 --heads 32 --kv-heads 8 --backward --json

In one process, on one card, with the same random inputs: `patternc.attention` (its autotuned
config; with --backward the training path), FlexAttention (`torch.compile`d, fed the same tiles:
`Layout.to_flex_block_mask` at 128x128 in token order; routed patterns: the blocks chosen from
the same q and k) and dense SDPA through its cuDNN and flash backends (where one is unavailable,
the table says so and why). patternc's output, and with --backward its gradients, are checked
against FlexAttention's first: a wrong result is reported and nothing is timed. Times are
`triton.testing.do_bench` medians (warm-up, then repetitions). *density* is visited tiles / all
tiles at 128x128 in token order (what FlexAttention visits); *realized* = the fastest dense
SDPA time x density / patternc's time (DESIGN.md); the simulator's prediction for the same
problem (`patternc.simulate`, `simulate_training` with --backward, on this GPU's profile) comes
with its error against the measurement.

The measuring helpers here (`bench`, `rel_err`, `fwd_bwd`, `sdpa_times`, `environment`) are the
ones `benchmarks/*.py` time with too.
"""
from __future__ import annotations

import json
import math

from ..errors import PatternError
from .common import (UsageError, command, device_argument, dtype_argument, file_argument, fit_table,
                     head_dim_argument, json_argument, lengths, lengths_arguments, lengths_text, load_patterns,
                     pattern_argument, pick, plural, positive, wide_argument)

BENCH_HEADS = 16  # heads when neither --heads nor the pattern says (the suite's shape)
# norm-relative error vs FlexAttention above which patternc's result counts as wrong:
# (output, gradients), per dtype; bf16's 8-bit mantissa makes it the loosest
TOLERANCE = {"bfloat16": (2e-2, 3e-2), "float16": (1e-2, 2e-2), "float32": (1e-2, 2e-2)}
SDPA_BACKENDS = {"cudnn": "CUDNN_ATTENTION", "flash": "FLASH_ATTENTION"}  # name -> torch SDPBackend member
KERNELS = (("patternc", "patternc"), ("flex", "FlexAttention (same tiles)"), ("cudnn", "SDPA cuDNN (dense)"),
           ("flash", "SDPA flash (dense)"))
PASSES = (("forward", "forward"), ("forward_backward", "fwd+bwd"))


# --------------------------------------------------------------------------- measuring (benchmarks/*.py too)


def bench(fn) -> float:
    """Median milliseconds of `fn()` on the GPU (`triton.testing.do_bench`, after its warm-up)."""
    import triton

    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def rel_err(a, b) -> float:
    """||a - b|| / ||b||, in float32."""
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def fwd_bwd(attend, q, k, v, do):
    """One forward + backward: the gradients of q, k, v given the output's gradient `do`."""
    import torch

    out = attend(q, k, v)
    return torch.autograd.grad(out, (q, k, v), do)


def sdpa_times(q, k, v, do=None, timer=bench, backends=tuple(SDPA_BACKENDS)) -> tuple[dict, dict]:
    """Dense SDPA through each backend: ({name: ms}, {name: why it is unavailable}); forward, or
    with `do` forward + backward (q, k, v must then require grad). k and v have q's heads."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    times, unavailable = {}, {}
    for name in backends:
        try:
            with sdpa_kernel([getattr(SDPBackend, SDPA_BACKENDS[name])]):
                times[name] = timer(lambda: sdpa(q, k, v) if do is None else fwd_bwd(sdpa, q, k, v, do))
        except RuntimeError as e:  # no kernel for this dtype, shape or card, or out of memory
            unavailable[name] = _first_line(e)
    return times, unavailable


def environment() -> dict:
    """The card, driver and versions a measurement was made with."""
    import datetime
    import subprocess

    import torch
    import triton

    from .. import __version__

    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=20).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        driver = "unknown"
    card = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {"card": card, "driver": driver, "torch": torch.__version__, "triton": triton.__version__,
            "patternc": __version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


# --------------------------------------------------------------------------- pure parts (tested on the CPU)


def compare(got, expected, tolerance: float) -> dict:
    """patternc's tensors against FlexAttention's: the largest absolute difference, the largest
    norm-relative error over the pairs (one per output or gradient), and whether it is within
    `tolerance` (NaN or inf never is)."""
    diffs = [float((a.float() - b.float()).abs().max()) for a, b in zip(got, expected)]
    rel = [rel_err(a, b) for a, b in zip(got, expected)]
    finite = all(math.isfinite(x) for x in diffs + rel)
    nan = float("nan")
    return {"max_abs_error": max(diffs) if finite else nan, "rel_error": max(rel) if finite else nan,
            "rel_errors": rel, "tolerance": tolerance, "ok": finite and max(rel) <= tolerance}


def realized_fraction(dense_ms: float | None, density: float, ms: float | None) -> float | None:
    """DESIGN.md's realized fraction: (dense time x density) / measured time; 1.0 is the speed of
    the dense kernel on the visited tiles only."""
    if dense_ms is None or not ms:
        return None
    return dense_ms * density / ms


def prediction_error(predicted: float | None, measured: float | None) -> float | None:
    """(predicted - measured) / measured: +0.10 predicts 10 % slower than measured."""
    if predicted is None or not measured:
        return None
    return predicted / measured - 1


def choose_profile(card: str, available) -> tuple[str, str | None]:
    """The simulator profile for a card: the one `patternc calibrate` wrote for it, else a shipped
    one its name mentions (h200 for 'NVIDIA H200'), else h100; and a note when it is a stand-in."""
    from ..sim.calibrate import _default_name

    available = list(available)
    own = _default_name(card)
    if own in available:
        return own, None
    words = set(own.split("-"))
    for name in available:
        if name in words:
            return name, None
    return "h100", (f"no simulator profile for {card}: predicted with h100's "
                    "(`patternc calibrate` measures one for this GPU)")


def summarize(result: dict) -> dict:
    """`result` with what follows from the times: per pass, each kernel's time over patternc's
    (`speedup`), the fastest dense baseline, the realized fraction, and the simulator's error."""
    out = dict(result)
    density = result["density"]
    sim = dict(result.get("simulator") or {})
    for key, _ in PASSES:
        times = result.get(key)
        if not times:
            continue
        mine = times.get("patternc")
        out[f"{key}_speedup"] = {name: ms / mine for name, ms in times.items() if ms is not None and mine}
        dense = {name: times[name] for name in SDPA_BACKENDS if times.get(name) is not None}
        best = min(dense, key=dense.get) if dense else None
        out[f"{key}_realized"] = {"value": realized_fraction(dense.get(best), density, mine), "dense": best}
        if sim:
            sim[f"{key}_error"] = prediction_error(sim.get(f"{key}_ms"), mine)
    if sim:
        out["simulator"] = sim
    return out


def _ms(value) -> str:
    return "-" if value is None else f"{value:.4g}"


def _error_text(check: dict, what: str) -> str:
    verdict = "ok" if check["ok"] else "WRONG"
    return (f"{what}: max abs error {check['max_abs_error']:.2e}, relative {check['rel_error']:.2e} "
            f"(tolerance {check['tolerance']:.0e}): {verdict}")


def format_report(result: dict, wide: bool = False) -> str:
    """The table and lines `patternc bench` prints for a `summarize`d result."""
    r = result
    env = r.get("environment", {})
    gqa = f" ({r['kv_heads']} kv heads)" if r["kv_heads"] != r["heads"] else ""
    lines = [f"{r['pattern']}: {r['text']}",
             f"{lengths_text(r['M'], r['N'])}, {plural(r['heads'], 'head')}{gqa}, head_dim {r['head_dim']}, "
             f"{r['dtype']}, batch {r['batch']}; {env.get('card', '?')}, torch {env.get('torch', '?')}, "
             f"triton {env.get('triton', '?')}", ""]
    checks = r["check"]
    lines.append("checked against FlexAttention:")
    lines.append("  " + _error_text(checks["forward"], "output"))
    if "backward" in checks:
        lines.append("  " + _error_text(checks["backward"], "gradients (q, k, v)"))
    if not all(c["ok"] for c in checks.values()):
        lines.append("\npatternc's result differs from FlexAttention's on the same tiles: not timed. "
                     "Please report it with this command line.")
        return "\n".join(lines)
    passes = [(key, label) for key, label in PASSES if r.get(key)]
    unavailable = r.get("unavailable", {})
    rows = []
    for name, label in KERNELS:
        if name == "patternc" and r.get("tiles"):
            label = f"patternc ({r['tiles']} tiles)"
        row = [label]
        for key, _ in passes:
            ms = r[key].get(name)
            row += (["unavailable", ""] if ms is None else
                    [_ms(ms), f"{r[f'{key}_speedup'][name]:.2f}x"])
        rows.append(row)
    headers = ["kernel"] + [h for _, label in passes for h in (f"{label} ms", "speedup")]
    lines += ["", fit_table(rows, headers, wrap=(0,), wide=wide, disable_numparse=True),
              "speedup: the kernel's time over patternc's (above 1: patternc is faster)", ""]
    lines.append(f"density    {r['density']:.4f} at 128x128 tiles, token order (visited tiles / all)")
    if r.get("visited") is not None:
        tiles = f" at {r['tiles']} tiles{r.get('order', '')}" if r.get("tiles") else ""
        lines.append(f"patternc   visits {r['visited']:.4f}{tiles}")
    realized = [(r[f"{key}_realized"]["value"], label, r[f"{key}_realized"]["dense"]) for key, label in passes
                if r[f"{key}_realized"]["value"] is not None]
    dense = {d for _, _, d in realized}
    items = ", ".join(f"{value:.2f} {label}" + (f" ({d})" if len(dense) > 1 else "") for value, label, d in realized)
    lines.append("realized   " + (f"{items}: {dense.pop() + ' ' if len(dense) == 1 else ''}dense time x density / "
                                  "patternc time" if realized else "- (no dense SDPA kernel ran)"))
    sim = r.get("simulator")
    if sim:
        parts = [f"{_ms(sim.get(f'{key}_ms'))} ms {label} ({sim[f'{key}_error']:+.1%}{' vs measured' * (i == 0)})"
                 for i, (key, label) in enumerate((k, l) for k, l in passes if sim.get(f"{k}_error") is not None)]
        lines.append(f"simulator  {', '.join(parts)}, {sim['profile']} profile")
    for name, why in unavailable.items():
        lines.append(f"note: SDPA {name} unavailable: {why}")
    for note in r.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the measurement


def flex_layout(pattern, M: int, N: int, heads: int, q, k):
    """The layout FlexAttention is fed: 128x128 tiles in token order; routed patterns choose their
    blocks from the first batch row's q and k (as patternc does from the same inputs)."""
    data = {"q": q[0], "k": k[0]} if pattern.is_routed else {}
    return pattern.layout(M, N, heads=heads, block_m=128, block_n=128, order="natural", **data)


def visited(layout) -> tuple[float | None, str | None, str]:
    """(visited share, tile shape, token order) of the layout patternc ran with (None where unknown)."""
    if layout is None:
        return None, None, ""
    if hasattr(layout, "density"):  # a static Layout
        order = "" if layout.permutation is None else f", {layout.permutation.name}"
        return layout.density, f"{layout.block_m}x{layout.block_n}", order
    rows = layout.kv_num_blocks.numel()  # a routed layout's tables: [B*H, Mt]
    tiles = int(layout.kv_num_blocks.sum() + layout.full_kv_num_blocks.sum())
    return tiles / (rows * layout.key_tiles), None, ""


def measure(pattern, M: int, N: int, heads: int, kv_heads: int, head_dim: int, dtype: str, batch: int,
            backward: bool, device: str = "cuda", timer=bench, flex=None) -> dict:
    """Check, then time, patternc against FlexAttention and dense SDPA (see the module's text).
    `timer(fn) -> ms` and `flex` (FlexAttention; compiled on a GPU) can be replaced, as the CPU
    tests do. Returns the raw result (`summarize` adds what follows from it)."""
    import torch
    from torch.nn.attention.flex_attention import flex_attention

    from .. import attention

    torch.manual_seed(0)
    dt = getattr(torch, dtype)
    q = torch.randn(batch, heads, M, head_dim, device=device, dtype=dt)
    k, v = (torch.randn(batch, kv_heads, N, head_dim, device=device, dtype=dt) for _ in range(2))
    if flex is None:
        flex = torch.compile(flex_attention, dynamic=False) if q.is_cuda else flex_attention
    gqa = {"enable_gqa": True} if kv_heads != heads else {}
    layout128 = flex_layout(pattern, M, N, heads, q, k)
    block_mask = layout128.to_flex_block_mask(batch).to(device)

    def flex_attend(q, k, v):
        return flex(q, k, v, block_mask=block_mask, **gqa)

    def patternc_attend(q, k, v):
        return attention(q, k, v, pattern)

    result = {"density": layout128.density, "notes": []}
    out_tol, grad_tol = TOLERANCE[dtype]
    with torch.no_grad():
        got = attention(q, k, v, pattern, return_layout=True)  # also autotunes, on a GPU
        out, layout = got if isinstance(got, tuple) else (got, None)  # the CPU fallback has no layout
        result["check"] = {"forward": compare([out], [flex_attend(q, k, v)], out_tol)}
    result["visited"], result["tiles"], result["order"] = visited(layout)
    if backward:
        result["notes"].append("patternc's fwd+bwd is the training path (forward and backward each autotuned)")
        qg, kg, vg = (x.detach().requires_grad_() for x in (q, k, v))
        do = torch.randn_like(q)
        result["check"]["backward"] = compare(fwd_bwd(patternc_attend, qg, kg, vg, do),
                                              fwd_bwd(flex_attend, qg, kg, vg, do), grad_tol)
    if not all(c["ok"] for c in result["check"].values()):
        return result

    groups = heads // kv_heads  # dense SDPA gets k, v repeated to every query head: the same FLOPs
    kd, vd = (x.repeat_interleave(groups, dim=1) for x in (k, v)) if groups > 1 else (k, v)
    if groups > 1:
        result["notes"].append(f"dense SDPA runs with k, v repeated to {heads} heads (GQA: {groups} query heads "
                               "per kv head)")
    with torch.no_grad():
        times = {"patternc": timer(lambda: patternc_attend(q, k, v)), "flex": timer(lambda: flex_attend(q, k, v))}
    dense, result["unavailable"] = sdpa_times(q, kd, vd, timer=timer)
    result["forward"] = {**times, **{name: dense.get(name) for name in SDPA_BACKENDS}}
    if backward:
        times = {"patternc": timer(lambda: fwd_bwd(patternc_attend, qg, kg, vg, do)),
                 "flex": timer(lambda: fwd_bwd(flex_attend, qg, kg, vg, do))}
        qd, kd, vd = (x.detach().requires_grad_() for x in (q, kd, vd))
        dense, unavailable = sdpa_times(qd, kd, vd, do=do, timer=timer)
        result["forward_backward"] = {**times, **{name: dense.get(name) for name in SDPA_BACKENDS}}
        for name, why in unavailable.items():
            result["unavailable"].setdefault(name, f"(fwd+bwd) {why}")
    return result


def predict(pattern, M: int, N: int, heads: int, head_dim: int, dtype: str, batch: int, backward: bool,
            profile: str) -> dict:
    """The simulator's forward (and forward + backward) time for the benchmarked problem."""
    from ..sim import simulate, simulate_training

    forward = simulate(pattern, M, N, heads=heads, head_dim=head_dim, dtype=dtype, batch=batch, device=profile)
    out = {"profile": forward.device, "forward_ms": forward.ms, "config": forward.config_name}
    if backward:
        out["forward_backward_ms"] = simulate_training(pattern, M, N, heads=heads, head_dim=head_dim, dtype=dtype,
                                                       batch=batch, device=profile).ms
    return out


# --------------------------------------------------------------------------- the command


def _arguments(p):
    file_argument(p)
    pattern_argument(p)
    lengths_arguments(p, heads_help=f"query heads (default: the pattern's if it sets them, else {BENCH_HEADS})")
    head_dim_argument(p)
    dtype_argument(p)
    p.add_argument("--batch", "-b", type=positive, default=1, metavar="B", help="batch size (default 1)")
    p.add_argument("--kv-heads", type=positive, metavar="H",
                   help="key/value heads for GQA/MQA, dividing --heads (default: --heads)")
    p.add_argument("--backward", action="store_true", help="also time forward + backward (training)")
    device_argument(p, default=None, help="simulator profile for the prediction (default: the one for this GPU: "
                                          "calibrated, else a shipped one, else h100)")
    wide_argument(p)
    json_argument(p, "print JSON instead of the table")


@command("bench", "time a pattern on this GPU: patternc vs FlexAttention (same tiles) vs dense SDPA (cuDNN, "
         "flash), checked first; density, realized fraction, the simulator's prediction and its error", _arguments)
def cmd_bench(args) -> int:
    from ..aot import dtype_name
    from ..sim.predict import pattern_text

    name, pattern = pick(load_patterns(args.file), args.pattern, args.file)
    M, N = lengths(args, name, pattern)
    fixed_heads = isinstance(pattern.body, tuple) or "heads" in dict(pattern.params)
    heads = args.heads or (pattern.default_heads if fixed_heads else BENCH_HEADS)
    kv_heads = args.kv_heads or heads
    if heads % kv_heads:
        raise UsageError(f"--kv-heads {kv_heads} must divide the {heads} query heads")
    if pattern.is_routed and args.batch > 1:
        raise UsageError("routed patterns are benchmarked at --batch 1 (FlexAttention is fed one batch row's "
                         "chosen blocks)")
    pattern.check(M, N, heads)  # located pattern errors before anything runs
    require_gpu()
    dtype = dtype_name(args.dtype)
    result = {"pattern": name, "text": pattern_text(pattern, heads), "M": M, "N": N, "heads": heads, "kv_heads": kv_heads,
              "head_dim": args.head_dim, "dtype": dtype, "batch": args.batch, "environment": environment()}
    result.update(measure(pattern, M, N, heads, kv_heads, args.head_dim, dtype, args.batch, args.backward))
    if all(c["ok"] for c in result["check"].values()):
        from ..sim.profile import available_profiles

        profile, note = (args.device, None) if args.device else choose_profile(result["environment"]["card"],
                                                                              available_profiles())
        result["simulator"] = predict(pattern, M, N, heads, args.head_dim, dtype, args.batch, args.backward, profile)
        if note:
            result["notes"].append(note)
        if kv_heads != heads:
            result["notes"].append("the simulator models k, v with every query head (GQA not modelled)")
    result = summarize(result)
    print(json.dumps(jsonable(result), indent=2) if args.json else format_report(result, args.wide))
    return 0 if all(c["ok"] for c in result["check"].values()) else 1


def require_gpu() -> None:
    import torch

    if not torch.cuda.is_available():
        raise PatternError("no CUDA GPU here: `patternc bench` times kernels on the GPU it runs on "
                           "(`patternc simulate` predicts their time without one)")


def jsonable(value):
    """`value` with non-finite floats (a NaN error) as None, which JSON can carry."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:200]
