"""Routed selection (`topk`, MoBA) on one GPU: what the selection costs and what a whole call
costs against FlexAttention fed the same blocks for free (issue 13, target 6).

Per pattern and length (B 1, H 16, D 128, bf16 by default), all in one process:

- `selection_ms`: `routing.route` alone (pool q and k, score, pick, write the index tables),
  replayed from a CUDA graph: GPU time with no host overhead; `pool_us` / `select_us`: its two
  kernels' GPU time (torch.profiler), `pool_tbps`: the bytes pooling reads over its time;
- `call_ms`: the whole `patternc.attention` call (selection included), `do_bench` median, and
  `call_graph_ms` the same call replayed from a CUDA graph (no host overhead);
- `attention_ms`: the attention kernel alone on precomputed tables (`module.launch`);
- `flex_ms`: FlexAttention with a BlockMask built from patternc's own tables at 128x128 (the
  blocks for free), its mask_mod causal over patternc's choice (`causal & topk(...)`; other
  patterns: the pattern's own);
- checks: patternc's output against FlexAttention's (`rel_err_vs_flex`) and patternc's choice
  against the torch reference's (`selection_mismatch`, a share of (head, query block, key block));
- targets: `selection_share` = selection_ms / call_ms (<= 5 % at 32k), `speedup_vs_flex` =
  flex_ms / call_ms (>= 1.1 at 8k, 32k and 128k).

`--sweep` also times the pooling launch shapes (`routing.POOL_ROWS`, `routing.POOL_WARPS`) at the
longest lengths and says which is fastest. With `--before FILE` (an older routing.py, e.g.
`git show a2ad262:patternc/runtime/routing.py > routing_before.py`; tried from git when it is
not given) its `route` is timed on the same plan, for a before/after in one run.

    python benchmarks/routed_selection.py --out benchmarks/results/DATE-h200-routed-selection

Writes `routed_selection.json` (after every row) and `routed_selection.md` into --out. Needs
torch, triton and patternc only; no network.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import patternc  # noqa: E402
from patternc.cli.bench import rel_err  # noqa: E402
from patternc.runtime import routing  # noqa: E402
from patternc.runtime.routed import SELECTED_BIT, fit_tiles, routed_plan, select  # noqa: E402

PATTERNS = {
    "moba": "causal & topk(4, block=512)",
    "moba_top8": "causal & topk(8, block=512)",
}
LENGTHS = (8192, 32768, 131072)
SELECTION_KERNELS = ("pool_blocks", "select_blocks", "select_tokens")
DEVICE = "cuda"  # --smoke: "cpu", a check of this script under TRITON_INTERPRET=1 (timings meaningless)
BEFORE_COMMIT = "a2ad262"  # the last commit with the three-launch routing kernels


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def environment() -> dict:
    from patternc.cli.bench import environment as cuda_environment

    return cuda_environment() if DEVICE == "cuda" else {"card": DEVICE, "torch": torch.__version__,
                                                          "patternc": patternc.__version__}


def bench(fn) -> float:
    """Median milliseconds of `fn` (`do_bench`; one timed call with --smoke)."""
    from patternc.cli.bench import bench as cuda_bench

    if DEVICE == "cuda":
        return cuda_bench(fn)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def graph_ms(fn) -> float:
    """Median time of `fn` replayed from a CUDA graph (its GPU time, launch gaps included)."""
    if DEVICE != "cuda":
        return bench(fn)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return bench(graph.replay)


def kernel_times(fn) -> dict:
    """GPU microseconds per call of each kernel `fn` launches (benchmarks/attention.py's; empty,
    and said, where that can't run)."""
    if DEVICE != "cuda":
        return {}
    try:
        from attention import kernel_times as times

        return times(fn, calls=10)
    except Exception as e:  # noqa: BLE001 - the kernel split is extra information
        print(f"  no kernel times: {type(e).__name__}: {str(e)[:200]}", flush=True)
        return {}


def parse_config(text: str) -> dict:
    """"128x128/w8/s3" (and "/tma") -> the config dict patternc.attention takes."""
    from patternc.aot import parse_config as parse

    parts = text.split("/")
    memory = "tma" if "tma" in parts else "pointers"
    cfg = parse("/".join(p for p in parts if p != "tma"))
    return dict(cfg, memory=memory)


def load_before(path: str | None):
    """An older routing.py as a module (from --before, else from git), or None."""
    import tempfile

    if path:
        target = Path(path)
    else:
        try:
            done = subprocess.run(["git", "show", f"{BEFORE_COMMIT}:patternc/runtime/routing.py"], cwd=ROOT,
                                  capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        if done.returncode != 0 or not done.stdout:
            return None
        target = Path(tempfile.mkdtemp()) / "routing_before.py"  # triton reads a kernel's source from its file
        target.write_text(done.stdout)
    spec = importlib.util.spec_from_file_location("routing_before", target)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_CHOSEN, _BLOCK = None, 1  # what routed_mask reads (module globals: one function, compiled once per shape)


def routed_mask(b, h, q_idx, kv_idx):
    """`causal & topk(...)` over patternc's own choice."""
    return _CHOSEN[h, q_idx // _BLOCK, kv_idx // _BLOCK] & (q_idx >= kv_idx)


def flex_block_mask(pattern, text, layout, choice, q, k, S, H, tile):
    """FlexAttention's BlockMask over patternc's tables (tile x tile): the same blocks, and a
    mask_mod that agrees with them: for `causal & topk(...)` patternc's choice and causality
    (`routed_mask`), else the pattern's own over the reference choice."""
    import re

    from torch.nn.attention.flex_attention import BlockMask

    global _CHOSEN, _BLOCK
    Mt = Nt = -(-S // tile)

    def widen(x):
        x = (x & (SELECTED_BIT - 1)).view(1, H, Mt, -1)
        return torch.nn.functional.pad(x, (0, Nt - x.shape[-1])).contiguous()

    if re.fullmatch(r"causal & topk\([^()]*\)", text.strip()) and "token" not in text:
        _CHOSEN, _BLOCK = choice[0], layout.block
        mask_mod = routed_mask
    else:
        pattern_mask = pattern.mask_mod(S, heads=H, q=q[0], k=k[0])

        def mask_mod(b, h, q_idx, kv_idx):
            return pattern_mask(b, h, q_idx, kv_idx) != 0

    return BlockMask.from_kv_blocks(
        layout.kv_num_blocks.view(1, H, Mt), widen(layout.kv_indices), layout.full_kv_num_blocks.view(1, H, Mt),
        widen(layout.full_kv_indices), BLOCK_SIZE=(tile, tile), mask_mod=mask_mod, seq_lengths=(S, S))


def pooled_bytes(plan, B, H, Hkv, S, D, element_bytes) -> int:
    """What the pooling launch reads (the blocks some choice depends on, as `route` picks them)."""
    b = plan.block
    n = -(-S // b)
    count = n if plan.count is None else plan.count - 1
    k_blocks = n - 1 if plan.causal else n
    q_first = min(max(count + 1, 0), n) if (plan.causal and plan.threshold is None) else 0
    q_blocks = (n - q_first) if plan.query == "block" else 0
    return (B * Hkv * k_blocks + B * H * q_blocks) * b * D * element_bytes


def run_case(name, text, S, args, flex, before) -> dict:
    H, Hkv, D, dtype = args.heads, args.kv_heads or args.heads, args.head_dim, getattr(torch, args.dtype)
    pattern = patternc.compile(text)
    g = torch.Generator(device=DEVICE).manual_seed(S)
    q = torch.randn(1, H, S, D, device=DEVICE, dtype=dtype, generator=g)
    k, v = (torch.randn(1, Hkv, S, D, device=DEVICE, dtype=dtype, generator=g) for _ in range(2))
    cfg = fit_tiles(pattern, parse_config(args.config))
    row = {"pattern": name, "text": text, "S": S, "config": args.config}
    plan = routed_plan(pattern, S, S, H, cfg["block_m"], cfg["block_n"], str(q.device))

    # the selection alone
    layout = plan.layout(q, k)
    sync()
    row["selection_ms"] = graph_ms(lambda: routing.route(plan, q, k))
    row["selection_host_ms"] = bench(lambda: routing.route(plan, q, k))
    kernels = kernel_times(lambda: routing.route(plan, q, k))
    row["pool_us"] = kernels.get("pool_blocks")
    row["select_us"] = kernels.get("select_blocks", kernels.get("select_tokens"))
    if row["pool_us"]:
        row["pool_tbps"] = pooled_bytes(plan, 1, H, Hkv, S, D, q.element_size()) / (row["pool_us"] * 1e6)
    if before is not None:
        try:
            row["before_selection_ms"] = graph_ms(lambda: before.route(plan, q, k))
            old = before.route(plan, q, k)
            same = torch.equal(old["block_choice"], layout.block_choice) if "block_choice" in old else None
            row["before_same_choice"] = same
        except Exception as e:  # noqa: BLE001 - the comparison is optional
            row["before_error"] = f"{type(e).__name__}: {str(e)[:300]}"

    # the choice against the torch reference (fp32 matmul: a near-tie may rank differently)
    if plan.query == "block":
        row["selection_mismatch"] = (layout.block_choice != select(q, k, pattern)).float().mean().item()

    # the whole call, and the attention kernel alone on precomputed tables
    call = lambda: patternc.attention(q, k, v, pattern, config=cfg)  # noqa: E731
    t0 = time.perf_counter()
    out = call()
    sync()
    row["first_call_ms"] = (time.perf_counter() - t0) * 1e3
    row["call_ms"] = bench(call)
    try:
        row["call_graph_ms"] = graph_ms(call)
    except Exception as e:  # noqa: BLE001 - not every version captures
        row["call_graph_error"] = f"{type(e).__name__}: {str(e)[:200]}"
    kernels = kernel_times(call)
    row["kernels_us"] = kernels
    selection_us = sum(us for key, us in kernels.items() if key in SELECTION_KERNELS)
    row["call_gpu_selection_share"] = selection_us / max(sum(kernels.values()), 1e-9)
    try:
        from patternc.runtime.attention import _device_tag, _prepare  # private: may change

        module, _ = _prepare(pattern, 1, H, S, S, D, cfg, str(q.device), _device_tag(q.device))
        row["attention_ms"] = bench(lambda: module.launch(q, k, v, layout))
    except Exception as e:  # noqa: BLE001 - private API: report and go on
        row["attention_error"] = f"{type(e).__name__}: {str(e)[:300]}"

    # FlexAttention on the same blocks, chosen for free; patternc's tables at 128x128 tiles (or
    # the routing block's, when smaller)
    tile = min(128, plan.block)
    flex_layout = routed_plan(pattern, S, S, H, tile, tile, str(q.device)).layout(q, k)
    tiles = -(-S // tile)
    row["density"] = float((flex_layout.kv_num_blocks.sum() + flex_layout.full_kv_num_blocks.sum()) / (H * tiles ** 2))
    block_mask = flex_block_mask(pattern, text, flex_layout, layout.block_choice, q, k, S, H, tile)
    ref = flex(q, k, v, block_mask=block_mask)
    row["flex_ms"] = bench(lambda: flex(q, k, v, block_mask=block_mask))
    row["rel_err_vs_flex"] = rel_err(out, ref)

    row["selection_share"] = row["selection_ms"] / row["call_ms"]
    row["speedup_vs_flex"] = row["flex_ms"] / row["call_ms"]
    if "call_graph_ms" in row:
        row["speedup_vs_flex_graph"] = row["flex_ms"] / row["call_graph_ms"]
    if "attention_ms" in row:
        row["attention_vs_flex"] = row["flex_ms"] / row["attention_ms"]
    return row


def sweep(text, S, args) -> list[dict]:
    """The selection's time per pooling launch shape (POOL_ROWS x POOL_WARPS)."""
    H, Hkv, D, dtype = args.heads, args.kv_heads or args.heads, args.head_dim, getattr(torch, args.dtype)
    pattern = patternc.compile(text)
    cfg = fit_tiles(pattern, parse_config(args.config))
    plan = routed_plan(pattern, S, S, H, cfg["block_m"], cfg["block_n"], DEVICE)
    q = torch.randn(1, H, S, D, device=DEVICE, dtype=dtype)
    k = torch.randn(1, Hkv, S, D, device=DEVICE, dtype=dtype)
    default = (routing.POOL_ROWS, routing.POOL_WARPS)
    rows = []
    try:
        for rows_, warps in ((32, 4), (64, 4), (128, 4), (128, 8)):
            routing.POOL_ROWS, routing.POOL_WARPS = rows_, warps
            try:
                ms = graph_ms(lambda: routing.route(plan, q, k))
                pool = kernel_times(lambda: routing.route(plan, q, k)).get("pool_blocks")
                rows.append({"S": S, "rows": rows_, "warps": warps, "selection_ms": ms, "pool_us": pool,
                             "pool_tbps": pooled_bytes(plan, 1, H, Hkv, S, D, q.element_size()) / (pool * 1e6)
                             if pool else None})
            except Exception as e:  # noqa: BLE001
                rows.append({"S": S, "rows": rows_, "warps": warps, "error": f"{type(e).__name__}: {str(e)[:200]}"})
            print(f"  sweep S={S} rows={rows_} warps={warps}: {rows[-1]}", flush=True)
    finally:
        routing.POOL_ROWS, routing.POOL_WARPS = default
    return rows


COLUMNS = ["pattern", "S", "density", "selection_ms", "pool_us", "select_us", "pool_tbps", "before_selection_ms",
           "call_ms", "call_graph_ms", "attention_ms", "flex_ms", "selection_share", "call_gpu_selection_share",
           "speedup_vs_flex", "speedup_vs_flex_graph", "attention_vs_flex", "rel_err_vs_flex", "selection_mismatch"]


def markdown(env, args, rows, sweeps) -> str:
    def cell(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    lines = [f"# Routed selection, {env['card']}", "",
             ", ".join(f"{k} {v}" for k, v in env.items() if k != "card"), "",
             f"B 1, H {args.heads}, Hkv {args.kv_heads or args.heads}, D {args.head_dim}, {args.dtype}, "
             f"config {args.config}. selection_ms: routing.route from a CUDA graph; call_ms: patternc.attention "
             f"(do_bench median); flex_ms: FlexAttention with patternc's blocks for free. Targets (issue 13, 6): "
             f"selection_share <= 0.05 at 32k, speedup_vs_flex >= 1.1.", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(cell(row.get(c)) for c in COLUMNS) + " |")
    for row in rows:
        problems = [f"{k}: {v}" for k, v in row.items() if k.endswith("error")]
        if problems:
            lines.append(f"\n{row['pattern']} {row['S']}: " + "; ".join(problems))
    if sweeps:
        lines += ["", "Pooling launch shapes (selection_ms from a CUDA graph):", "",
                  "| S | rows | warps | selection_ms | pool_us | pool_tbps |", "|---|---|---|---|---|---|"]
        for s in sweeps:
            lines.append(f"| {s['S']} | {s.get('rows')} | {s.get('warps')} | {cell(s.get('selection_ms'))} | "
                         f"{cell(s.get('pool_us'))} | {cell(s.get('pool_tbps'))} |")
        timed = [s for s in sweeps if s.get("selection_ms")]
        for S in sorted({s["S"] for s in timed}):
            best = min((s for s in timed if s["S"] == S), key=lambda s: s["selection_ms"])
            lines.append(f"\nfastest at {S}: POOL_ROWS, POOL_WARPS = {best['rows']}, {best['warps']}")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="directory for routed_selection.json / .md")
    parser.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    parser.add_argument("--patterns", nargs="*", default=None, help="name=text, default: moba and moba_top8")
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--kv-heads", type=int, default=None)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--config", default="128x128/w8/s3", help="patternc's kernel config, e.g. 128x128/w8/s3/tma")
    parser.add_argument("--sweep", action=argparse.BooleanOptionalAction, default=True,
                        help="time the pooling launch shapes at the longest lengths (moba)")
    parser.add_argument("--before", default=None, help="an older routing.py to time on the same plans")
    parser.add_argument("--smoke", action="store_true",
                        help="check this script on the CPU (TRITON_INTERPRET=1, e.g. --lengths 256 --heads 2 "
                             "--head-dim 16 --dtype float32 --config 32x32 --patterns m='causal & topk(2, block=64)')")
    args = parser.parse_args(argv)
    global DEVICE
    DEVICE = "cpu" if args.smoke else "cuda"
    if DEVICE == "cuda" and not torch.cuda.is_available():
        sys.exit("needs a CUDA GPU (or --smoke)")
    from torch.nn.attention.flex_attention import flex_attention

    start = time.perf_counter()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = environment()
    print(env, flush=True)
    patterns = dict(p.split("=", 1) for p in args.patterns) if args.patterns else PATTERNS
    lengths = [int(s) for s in args.lengths.split(",")]
    flex = torch.compile(flex_attention, dynamic=False) if DEVICE == "cuda" else flex_attention
    before = None
    try:
        before = load_before(args.before)
    except Exception as e:  # noqa: BLE001 - optional
        print(f"no before/after: {type(e).__name__}: {e}", flush=True)
    rows, sweeps = [], []

    def save():
        (out_dir / "routed_selection.json").write_text(json.dumps(
            {"environment": env, "args": vars(args), "rows": rows, "sweep": sweeps,
             "defaults": {"POOL_ROWS": routing.POOL_ROWS, "POOL_WARPS": routing.POOL_WARPS},
             "seconds": round(time.perf_counter() - start, 1)}, indent=1))
        (out_dir / "routed_selection.md").write_text(markdown(env, args, rows, sweeps))

    for name, text in patterns.items():
        for S in lengths:
            try:
                row = run_case(name, text, S, args, flex, before)
            except Exception as e:  # noqa: BLE001 - a failed row is reported, the rest still runs
                traceback.print_exc()
                row = {"pattern": name, "text": text, "S": S, "error": f"{type(e).__name__}: {str(e)[:500]}"}
            rows.append(row)
            print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items() if k != "kernels_us"},
                  flush=True)
            if row.get("rel_err_vs_flex", 0) > 2e-2:
                print(f"!! {name} S={S}: patternc differs from FlexAttention (rel err {row['rel_err_vs_flex']:.3e})",
                      flush=True)
            if DEVICE == "cuda":
                torch.cuda.empty_cache()
            save()
    if args.sweep:
        first = next(iter(patterns.values()))
        for S in sorted(lengths)[-2:]:
            try:
                sweeps += sweep(first, S, args)
            except Exception as e:  # noqa: BLE001
                sweeps.append({"S": S, "error": f"{type(e).__name__}: {str(e)[:300]}"})
            save()
    save()
    print((out_dir / "routed_selection.md").read_text())
    print(f"done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
