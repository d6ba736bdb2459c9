"""Layout build time: patternc's analytic lowering against FlexAttention's `create_block_mask`.

For every pattern of the suite (benchmarks/suite.py) and sequence length, builds the block
layout at 128x128 tiles, 16 heads, self-attention, both ways, and reports times, their ratio,
peak memory and whether the two block maps agree (full and partial tiles alike):

- patternc: `Pattern.layout(S, heads=16, order="natural")` (the tiles FlexAttention makes), and
  the default `order="auto"` where it differs (residue order for dilated windows, box order for grids). Routed moba
  includes the block selection from random q, k (bf16, head_dim 128). The median of --repeats.
- FlexAttention: `create_block_mask(pattern.mask_mod(S), B=None, H, S, S)` with H=None (one
  mask for all heads) unless the pattern varies by head (s2); on a GPU compiled (`_compile=True`)
  after one warm-up call at the same length. It evaluates the whole S x S mask; on a CPU that
  takes seconds at 8k, so it runs only at the smallest length unless --full, each call in a child
  process killed after --flex-budget seconds. Lengths not run are reported as not measured.
  Routed moba is skipped (its mask needs the run-time selection).

Memory: each measurement runs in its own child process, which reports its whole-life peak
resident set (`ru_maxrss`: imports, torch allocations and all), and for patternc also the
`tracemalloc` peak of one build (numpy and Python allocations). An S x S bool mask alone would be
S^2 bytes (16 GiB at 128k): a peak far below that shows that no such mask was made.

Grid patterns (natten2d, natten2d_dil, gna3d) need S = the grid's size: each length gets a grid of
that size with the suite's window (listed in the table).

    python benchmarks/layout_build.py                               # CPU, create_block_mask at 8k
    python benchmarks/layout_build.py --flex-patterns swa dilated   # create_block_mask for a few
    python benchmarks/layout_build.py --full --device cuda          # every length, on the GPU

Writes layout_build.md and layout_build.json into --out
(default benchmarks/results/<date>-layout-<device>).
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from suite import SUITE  # noqa: E402

SIZES = (8192, 32768, 131072)
GRIDS = {  # grid per length for the suite's grid patterns (their window sizes fit every one)
    8192: {"natten2d": (64, 128), "natten2d_dil": (64, 128), "gna3d": (8, 32, 32)},
    32768: {"natten2d": (128, 256), "natten2d_dil": (128, 256), "gna3d": (32, 32, 32)},
    131072: {"natten2d": (256, 512), "natten2d_dil": (256, 512), "gna3d": (32, 64, 64)},
    16384: {"natten2d": (128, 128), "natten2d_dil": (128, 128), "gna3d": (16, 32, 32)},
}
ROUTED = ("moba",)
# create_block_mask on a CPU evaluates mask_mod over all S x S pairs at once: at least ~11 bytes a
# pair (11.6 GiB peak RSS for swa at 32k here; dilated took 18.8 GiB, power more than 22). Calls
# that need more than --flex-max-mem of the available memory even at that rate are not started
# (the number only decides that; no time is extrapolated), and the child's address space is
# capped there, so that a bigger appetite fails cleanly instead of waking the OOM killer.
CPU_BYTES_PER_PAIR = 11


def pattern_text(name: str, S: int) -> str | None:
    """The suite's text for `name`, with its grid resized to S tokens (None: no grid of that size)."""
    text = SUITE[name][0]
    if not text.startswith("grid("):
        return text
    grid = GRIDS.get(S, {}).get(name)
    if grid is None:
        return None
    return re.sub(r"^grid\([^)]*\)", f"grid({', '.join(map(str, grid))})", text)


# --------------------------------------------------------------------------- child processes


def _rss_mib() -> float:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return peak / 1024


def _current_rss_mib() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def _digest(kinds) -> str:
    """sha1 of a block map int8 [H, Mt, Nt] (0 skipped, 1 partial, 2 full)."""
    import numpy as np

    return hashlib.sha1(np.ascontiguousarray(kinds, dtype=np.int8).tobytes()).hexdigest()[:16]


def _routed_inputs(S: int, heads: int):
    import torch

    gen = torch.Generator().manual_seed(0)
    q = torch.randn(heads, S, 128, generator=gen).to(torch.bfloat16)
    k = torch.randn(heads, S, 128, generator=gen).to(torch.bfloat16)
    return q, k


def child_patternc(name: str, S: int, heads: int, block: int, repeats: int, device: str) -> dict:
    import tracemalloc

    import numpy as np

    import patternc
    from patternc.layout.build import depends_on_head

    text = pattern_text(name, S)
    pattern = patternc.compile(text)
    qk = {}
    if pattern.is_routed:
        q, k = _routed_inputs(S, heads)
        qk = {"q": q, "k": k}
        qs, ks = _routed_inputs(1024, heads)
        pattern.layout(1024, heads=heads, block_m=block, block_n=block, q=qs, k=ks)  # first-use costs
    else:  # imports and first-use costs, on another pattern (primitives cache small tables on themselves)
        patternc.compile("causal & window(64) | sink(4)").layout(1024, heads=heads, block_m=block, block_n=block)
    base = _current_rss_mib()

    def build(order):
        fresh = patternc.compile(text)  # nothing cached from an earlier build
        if device != "cpu":
            import torch

            torch.cuda.synchronize()
        t0 = time.perf_counter()
        layout = fresh.layout(S, heads=heads, block_m=block, block_n=block, order=order, device=device, **qk)
        if device != "cpu":
            import torch

            torch.cuda.synchronize()
        return layout, time.perf_counter() - t0

    out = {"text": text}
    for order in ("natural", "auto"):
        times = []
        for _ in range(repeats):
            layout, seconds = build(order)
            times.append(seconds)
        out[order] = {"ms": 1e3 * float(np.median(times)), "times_ms": [1e3 * t for t in times],
                      "order": None if layout.permutation is None else layout.permutation.name,
                      "density": layout.density, "counts": layout.counts, "refined_tiles": layout.refined_tiles}
        if order == "natural":
            kinds = layout.block_map().numpy()
            out["head_dependent"] = bool(pattern.is_routed or depends_on_head(pattern.expr))
            out["digest"] = _digest(kinds if out["head_dependent"] else kinds[:1])
    out["peak_rss_mib"] = _rss_mib()
    out["base_rss_mib"] = base
    tracemalloc.start()
    build("natural")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    out["tracemalloc_peak_mib"] = peak / 2**20
    return out


def child_flex(name: str, S: int, heads: int, block: int, device: str, mem_limit_gib: float | None) -> dict:
    if mem_limit_gib:
        import resource

        limit = int(mem_limit_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import numpy as np
    import torch
    from torch.nn.attention.flex_attention import create_block_mask

    import patternc
    from patternc.layout.build import depends_on_head

    text = pattern_text(name, S)
    pattern = patternc.compile(text)
    head_dependent = depends_on_head(pattern.expr)
    H = heads if head_dependent else None
    out = {"text": text, "H": H}

    def run(length, compile_):
        mask_mod = pattern.mask_mod(length, length, heads)
        bm = create_block_mask(mask_mod, None, H, length, length, device=device, BLOCK_SIZE=block, _compile=compile_)
        if device != "cpu":
            torch.cuda.synchronize()
        return bm

    compiled = False
    if device != "cpu":
        try:  # compile at this length once (the compile cost stays out of the timing)
            run(S, True)
            compiled = True
        except Exception as e:  # noqa: BLE001 - report and fall back to eager
            out["compile_error"] = f"{type(e).__name__}: {e}"[:300]
    else:  # imports and first-use costs
        mask_mod = patternc.compile("causal").mask_mod(1024)
        create_block_mask(mask_mod, None, None, 1024, 1024, device=device, BLOCK_SIZE=block)
    out["compiled"] = compiled
    base = _current_rss_mib()
    t0 = time.perf_counter()
    bm = run(S, compiled)
    out["ms"] = 1e3 * (time.perf_counter() - t0)
    out["peak_rss_mib"] = _rss_mib()
    out["base_rss_mib"] = base

    def dense(num, idx):
        num, idx = num[0].cpu().numpy(), idx[0].cpu().numpy()
        Hh, Mt = num.shape
        Nt = -(-S // block)
        m = np.zeros((Hh, Mt, Nt), bool)
        for h in range(Hh):
            for r in range(Mt):
                m[h, r, idx[h, r, : num[h, r]]] = True
        return m

    kinds = dense(bm.kv_num_blocks, bm.kv_indices).astype(np.int8)
    if bm.full_kv_num_blocks is not None:
        kinds[dense(bm.full_kv_num_blocks, bm.full_kv_indices)] = 2
    out["digest"] = _digest(kinds)
    out["density"] = float((kinds > 0).mean())
    return out


def available_gib() -> float:
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("MemAvailable")) / 2**20
    except (OSError, StopIteration):
        return float("inf")


def flex_memory_gib(name: str, S: int, args) -> float | None:
    """Memory a CPU create_block_mask call would take (None on a GPU: it fails cleanly there)."""
    if args.device != "cpu":
        return None
    import patternc
    from patternc.layout.build import depends_on_head

    H = args.heads if depends_on_head(patternc.compile(pattern_text(name, S)).expr) else 1
    return S * S * H * CPU_BYTES_PER_PAIR / 2**30


def in_child(kind: str, name: str, S: int, args, timeout: float | None) -> dict:
    cmd = [sys.executable, __file__, "--_child", kind, name, str(S), "--heads", str(args.heads),
           "--block", str(args.block), "--repeats", str(args.repeats), "--device", args.device]
    cap = None
    if kind == "flex" and args.device == "cpu":
        cap = args.flex_max_mem * available_gib()
        cmd += ["--mem-limit-gib", f"{cap:.1f}"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"over the {timeout:.0f} s budget (killed)"}
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        if proc.returncode in (-9, 137) or "allocate memory" in tail or "MemoryError" in tail:
            capped = f" (address space capped at {cap:.1f} GiB)" if cap else ""
            return {"status": "out of memory", "detail": f"exit {proc.returncode}{capped}: {tail[:300]}"}
        return {"status": f"failed, exit {proc.returncode}", "detail": tail[:300]}
    return {"status": "ok", **json.loads(proc.stdout.strip().splitlines()[-1])}


# --------------------------------------------------------------------------- the run


def environment(device: str) -> dict:
    import numpy
    import torch
    import triton

    import patternc

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=HERE, timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "patternc"], capture_output=True,
                                    text=True, cwd=HERE, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "unknown", False
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "device": device, "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
           "torch": torch.__version__, "triton": triton.__version__, "numpy": numpy.__version__,
           "patternc": patternc.__version__, "commit": commit + ("+dirty" if dirty else ""),
           "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:])}
    if device != "cpu":
        env["card"] = torch.cuda.get_device_name()
    return env


def fmt_ms(ms) -> str:
    if ms is None:
        return "—"
    return f"{ms / 1e3:.2f} s" if ms >= 1e4 else f"{ms:.1f} ms" if ms >= 10 else f"{ms:.2f} ms"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--patterns", nargs="+", default=list(SUITE), choices=list(SUITE), metavar="NAME")
    parser.add_argument("--flex-patterns", nargs="*", choices=list(SUITE), metavar="NAME",
                        help="run create_block_mask for these only (default: every non-routed pattern)")
    parser.add_argument("--full", action="store_true", help="create_block_mask at every length, not only the smallest")
    parser.add_argument("--flex-budget", type=float, default=600, help="seconds per create_block_mask call")
    parser.add_argument("--flex-max-mem", type=float, default=0.7,
                        help="start a CPU create_block_mask only if it needs less than this share of available memory")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--_child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--mem-limit-gib", type=float, help=argparse.SUPPRESS)  # children: address space cap
    args = parser.parse_args(argv)

    if args._child:
        kind, name, S = args._child[0], args._child[1], int(args._child[2])
        result = (child_patternc(name, S, args.heads, args.block, args.repeats, args.device) if kind == "patternc"
                  else child_flex(name, S, args.heads, args.block, args.device, args.mem_limit_gib))
        print(json.dumps(result))
        return 0

    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("--device cuda: no CUDA device here", file=sys.stderr)
            return 2
    env = environment(args.device)
    tag = "cpu" if args.device == "cpu" else re.sub(r"[^a-z0-9]+", "", env["card"].lower().split()[-1])
    out_dir = args.out or HERE / "results" / f"{env['date'][:10]}-layout-{tag}"
    out_dir.mkdir(parents=True, exist_ok=True)
    flex_names = [n for n in (args.patterns if args.flex_patterns is None else args.flex_patterns) if n not in ROUTED]
    sizes = sorted(args.sizes)
    flex_sizes = sizes if args.full else sizes[:1]
    print(f"layout build, {args.heads} heads, {args.block}x{args.block} tiles, on {args.device} ({env['cpu']}); "
          f"create_block_mask for {', '.join(flex_names) or 'none'} at {', '.join(map(str, flex_sizes))}", flush=True)

    rows = []
    for name in args.patterns:
        for S in sizes:
            text = pattern_text(name, S)
            if text is None:
                continue
            row = {"pattern": name, "S": S, "text": text}
            row["patternc"] = in_child("patternc", name, S, args, None)
            if name in ROUTED:
                row["flex"] = {"status": "skipped: routed (the mask needs the run-time selection)"}
            elif name not in flex_names:
                row["flex"] = {"status": "not measured (not in --flex-patterns)"}
            elif S not in flex_sizes:
                row["flex"] = {"status": "not measured (pass --full)"}
            elif (need := flex_memory_gib(name, S, args)) is not None and need > args.flex_max_mem * available_gib():
                row["flex"] = {"status": "not run: memory",
                               "detail": f"needs at least ~{need:.0f} GiB on this CPU, {available_gib():.0f} GiB available"}
            else:
                row["flex"] = in_child("flex", name, S, args, args.flex_budget)
            p, f = row["patternc"], row["flex"]
            if p["status"] == "ok" and f["status"] == "ok":
                row["speedup"] = f["ms"] / p["natural"]["ms"]
                row["same_blocks"] = p["digest"] == f["digest"]
            rows.append(row)
            flex_note = (f"create_block_mask {fmt_ms(f['ms'])}, x{row['speedup']:.0f}, same blocks: {row['same_blocks']}"
                         if "speedup" in row else f["status"])
            pn = f"{fmt_ms(p['natural']['ms'])}" if p["status"] == "ok" else p["status"]
            print(f"{name:>13} {S:>7}: patternc {pn}; {flex_note}", flush=True)

    (out_dir / "layout_build.json").write_text(json.dumps({"environment": env, "heads": args.heads,
                                                           "block": args.block, "rows": rows}, indent=2))
    (out_dir / "layout_build.md").write_text(markdown(env, args, rows))
    print(f"wrote {out_dir / 'layout_build.md'} and layout_build.json")
    return 0


def markdown(env, args, rows) -> str:
    from tabulate import tabulate

    short = {"not measured (not in --flex-patterns)": "–", "not measured (pass --full)": "not measured"}
    table, notes = [], {}
    for r in rows:
        p, f = r["patternc"], r["flex"]
        ok = p["status"] == "ok"
        auto = p.get("auto", {}) if ok else {}
        permuted = f"{fmt_ms(auto['ms'])} ({auto['order']}, {auto['density']:.4f})" if auto.get("order") else ""
        grid = re.match(r"grid\(([^)]*)\)", r["text"])
        if f["status"] == "ok":
            flex = fmt_ms(f["ms"])
        else:
            flex = short.get(f["status"], f["status"])
            if "detail" in f:
                notes.setdefault(f["status"], []).append(f"{r['pattern']} at {r['S']}: {f['detail']}")
        table.append([
            r["pattern"] + (f" ({grid.group(1).replace(', ', 'x')})" if grid else ""), r["S"],
            f"{p['natural']['density']:.4f}" if ok else "", fmt_ms(p["natural"]["ms"]) if ok else p["status"], permuted,
            f"{p['peak_rss_mib']:.0f} / {p['tracemalloc_peak_mib']:.1f}" if ok else "", flex,
            f"{f['peak_rss_mib']:.0f}" if f["status"] == "ok" else "",
            f"{r['speedup']:.0f}x" if "speedup" in r else "", {True: "yes", False: "NO"}.get(r.get("same_blocks"), "")])
    headers = ["pattern", "S", "density", "patternc", "patternc, auto's order (density)",
               "patternc peak MiB: process / build", "create_block_mask", "its peak MiB", "speedup", "same blocks"]
    envs = ", ".join(f"{k} {v}" for k, v in env.items() if k not in ("command",))
    flex_how = "compiled, after a compiling call at the same length" if env["device"] != "cpu" else "eager, after a warm-up"
    lines = [
        f"# Layout build: patternc vs FlexAttention create_block_mask ({env['device']})", "",
        f"{envs}.", "", f"`{env['command']}`", "",
        f"{args.heads} heads, {args.block}x{args.block} tiles, self-attention (M = N = S). **patternc**: median of "
        f"{args.repeats} builds of `Pattern.layout(S, heads={args.heads}, order='natural')`, the same tiles as "
        "FlexAttention's, each from a freshly parsed pattern; the next column is the default `order='auto'` where "
        "it differs (residue or box order, fewer tiles). moba includes its block selection from random q, k. "
        f"**create_block_mask**: one call, {flex_how}; `H=None` unless the mask varies by head (s2). "
        "**same blocks**: the two block maps, full and partial tiles, are identical. **speedup**: create_block_mask "
        "time / patternc time (natural order). **Memory**: the whole-life peak resident set of the child process "
        "that measured, imports included, and for patternc the tracemalloc peak of one build; one S x S bool mask "
        "alone would be 64 MiB at 8k, 1 GiB at 32k, 16 GiB at 128k. Grid patterns get a grid of S tokens "
        "(shown) with the suite's window. `–`: create_block_mask not asked for this pattern; `not measured`: "
        "only at the smallest length without --full.", "",
        tabulate(table, headers=headers, tablefmt="github"), "",
    ]
    for status, items in notes.items():
        lines += [f"{status}:", ""] + [f"- {x}" for x in items] + [""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
