"""Context parallelism on several GPUs: patternc.distributed against one GPU and against PyTorch's
own context parallelism, in the same run (issue 15).

For each length (default 128k and 512k tokens) and pattern of examples/llm.pat (default swa,
sinks, dilated), bf16, B 1, H 16, D 128:

- one GPU (rank 0, the others waiting): `patternc.attention` (its own layout order) and the
  natural-order whole block (`block_forward` over everything: what the ranks split);
- patternc on `--world` GPUs: `context_parallel_attention` over contiguous shards and over the
  sharding the simulator picks (`choose_sharding`) when that differs; the output gathered and
  compared with the one-GPU output first; planned bytes moved per rank (`plan`), and the
  simulator's prediction (`patternc.sim.distributed`) beside the measurement;
- PyTorch's ring: `torch.distributed.tensor.experimental.context_parallel` with SDPA (round-robin
  head-tail load balance, its default; SDPA there takes `is_causal` only, so this is the causal
  attention each pattern is a subset of: what a ring-based stack runs today), once per length;
  and FlexAttention's context parallelism (`_ContextParallel(FLEX)` with `_create_cp_block_mask`:
  private API, all-gathers keys and values) with the pattern's mask_mod; where these fail, the
  reason goes into the row.

Forward and forward+backward (gradients of q, k, v). Scaling efficiency = one-GPU time /
(world x multi-GPU time). Timed with CUDA events, a fixed number of iterations after warm-up,
every rank between barriers, the slowest rank's median reported.

    python benchmarks/context_parallel.py --out benchmarks/results/<date>-h200x2-context-parallel
    python benchmarks/context_parallel.py --smoke --out /tmp/cp-smoke     # CPU, gloo, tiny: the plumbing only

Where a command may run only so long, split it: `--lengths 131072`, then `--lengths 524288`
(into another --out), `--baselines` (none) for patternc alone, `--no-backward`.

Needs `--world` GPUs (default 2); with fewer it says so and exits with status 2.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import socket
import statistics
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PATTERNS = ("swa", "sinks", "dilated")


def _args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--lengths", type=int, nargs="+", default=[131072, 524288])
    ap.add_argument("--patterns", nargs="+", default=list(PATTERNS), help="names in examples/llm.pat")
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--no-backward", action="store_true", help="forward only")
    ap.add_argument("--baselines", nargs="*", default=["sdpa", "flex"], help="sdpa (ring), flex")
    ap.add_argument("--smoke", action="store_true", help="CPU, gloo, tiny sizes: checks the script, times nothing")
    args = ap.parse_args(argv)
    if args.smoke:
        args.lengths, args.heads, args.head_dim, args.iters, args.warmup = [512], 2, 16, 1, 0
    return args


# ------------------------------------------------------------------------------ timing


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(fn, device, iters, warmup, barrier=None):
    """Median ms of `fn()` over `iters` calls after `warmup`, each call started after `barrier()`."""
    import torch

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if barrier:
            barrier()
        _sync(device)
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _slowest(ms, device):
    """The slowest rank's value."""
    import torch
    import torch.distributed as dist

    t = torch.tensor([ms], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def _rel_err(a, b) -> float:
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def _grads(out, inputs, do):
    import torch

    return torch.autograd.grad(out, inputs, do)


# ------------------------------------------------------------------------------ the runs


def _one_gpu(row, pattern, q, k, v, do, args, device):
    """Rank 0 alone: patternc.attention and the natural-order whole block, forward (+ backward)."""
    import patternc
    from patternc.runtime.blocks import block_forward

    N = q.shape[2]
    row["single_ms"] = _median_ms(lambda: patternc.attention(q, k, v, pattern), device, args.iters, args.warmup)
    row["single_natural_ms"] = _median_ms(lambda: block_forward(q, k, v, pattern, 0, 0, N), device, args.iters,
                                          args.warmup)
    if not args.no_backward:
        qg, kg, vg = (x.detach().requires_grad_() for x in (q, k, v))
        row["single_fwd_bwd_ms"] = _median_ms(lambda: _grads(patternc.attention(qg, kg, vg, pattern), (qg, kg, vg), do),
                                              device, args.iters, args.warmup)
    return patternc.attention(q, k, v, pattern)


def _patternc_cp(row, prefix, pattern, sharding, q, k, v, do, want, args, device, rank, world):
    import torch.distributed as dist

    from patternc.distributed import context_parallel_attention, gather, plan, shard

    qs, ks, vs, dos = (shard(x, sharding, rank) for x in (q, k, v, do))
    p = plan(pattern, sharding, heads=q.shape[1], head_dim=q.shape[3], dtype=q.dtype, kv_heads=k.shape[1])
    summary = p.summary()
    row[f"{prefix}_ranges"] = [r["ranges"] for r in summary["ranks"]]
    row[f"{prefix}_bytes_received_per_rank"] = [r["bytes_received"] for r in summary["ranks"]]
    row[f"{prefix}_bytes_sent_per_rank"] = [r["bytes_sent"] for r in summary["ranks"]]
    row[f"{prefix}_backward_bytes_per_rank"] = [r["backward_bytes_sent"] for r in summary["ranks"]]
    row[f"{prefix}_tiles_per_rank"] = [r["tiles"] for r in summary["ranks"]]
    row[f"{prefix}_blocks_per_rank"] = [r["blocks"] for r in summary["ranks"]]

    def run():
        return context_parallel_attention(qs, ks, vs, pattern, sharding=sharding)

    out = gather(run(), sharding)
    if rank == 0:
        row[f"{prefix}_rel_err_vs_single"] = _rel_err(out, want)
    del out
    row[f"{prefix}_ms"] = _slowest(_median_ms(run, device, args.iters, args.warmup, dist.barrier), device)
    if not args.no_backward:
        qg, kg, vg = (x.detach().requires_grad_() for x in (qs, ks, vs))
        row[f"{prefix}_fwd_bwd_ms"] = _slowest(_median_ms(
            lambda: _grads(context_parallel_attention(qg, kg, vg, pattern, sharding=sharding), (qg, kg, vg), dos),
            device, args.iters, args.warmup, dist.barrier), device)


def _ring_sdpa(row, q, k, v, do, args, device, mesh, rank, world):
    """PyTorch's context_parallel with SDPA, is_causal (its only mask); the one-GPU SDPA beside it."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.distributed.tensor.experimental import context_parallel

    if rank == 0:
        row["sdpa_single_ms"] = _median_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), device,
                                           args.iters, args.warmup)
    dist.barrier()
    qc, kc, vc = (x.detach().clone() for x in (q, k, v))
    buffers = [qc, kc, vc]
    with context_parallel(mesh, buffers=buffers, buffer_seq_dims=[2, 2, 2], no_restore_buffers=set(buffers)):
        row["sdpa_ring_ms"] = _slowest(_median_ms(lambda: F.scaled_dot_product_attention(qc, kc, vc, is_causal=True),
                                                  device, args.iters, args.warmup, dist.barrier), device)
        if not args.no_backward:
            qg, kg, vg = (x.detach().requires_grad_() for x in (qc, kc, vc))
            dl = torch.randn_like(qg)
            row["sdpa_ring_fwd_bwd_ms"] = _slowest(_median_ms(
                lambda: _grads(F.scaled_dot_product_attention(qg, kg, vg, is_causal=True), (qg, kg, vg), dl),
                device, args.iters, args.warmup, dist.barrier), device)
    tokens = q.shape[2] - q.shape[2] // world
    row["sdpa_ring_bytes_received_per_rank"] = tokens * 2 * k.shape[1] * k.shape[3] * k.element_size()


def _flex_cp(row, pattern, q, k, v, want, args, device, mesh, rank, world):
    """FlexAttention's context parallelism (private API; all-gathers keys and values)."""
    import torch
    import torch.distributed as dist
    from torch.distributed.tensor.experimental._context_parallel._attention import (_context_parallel_shard,
                                                                                    _ContextParallel,
                                                                                    _create_cp_block_mask,
                                                                                    context_parallel_unshard)
    from torch.distributed.tensor.experimental._context_parallel._load_balancer import _HeadTailLoadBalancer
    from torch.distributed.tensor.parallel import parallelize_module
    from torch.nn.attention.flex_attention import flex_attention

    B, H, N, D = q.shape
    balancer = _HeadTailLoadBalancer(N, world, device)
    block_mask = _create_cp_block_mask(pattern.mask_mod(N, heads=H), B, H, N, N, mesh, balancer)
    compiled = torch.compile(flex_attention, dynamic=False)

    class Flex(torch.nn.Module):
        def forward(self, q, k, v, block_mask=None):
            return compiled(q, k, v, block_mask=block_mask)

    module = parallelize_module(Flex(), mesh, _ContextParallel(seq_dim=2,
                                                               attention_type=_ContextParallel.AttentionType.FLEX))
    qs, ks, vs = _context_parallel_shard(mesh, [q, k, v], [2, 2, 2], balancer)
    out = module(qs, ks, vs, block_mask=block_mask)
    (whole,) = context_parallel_unshard(mesh, [out], [2], balancer)
    if rank == 0:
        row["flex_cp_rel_err_vs_single"] = _rel_err(whole, want)
    row["flex_cp_ms"] = _slowest(_median_ms(lambda: module(qs, ks, vs, block_mask=block_mask), device, args.iters,
                                            args.warmup, dist.barrier), device)
    row["flex_cp_bytes_received_per_rank"] = (N - N // world) * 2 * k.shape[1] * D * k.element_size()
    if not args.no_backward:
        qg, kg, vg = (x.detach().requires_grad_() for x in (qs, ks, vs))
        dl = torch.randn_like(qg)
        row["flex_cp_fwd_bwd_ms"] = _slowest(_median_ms(
            lambda: _grads(module(qg, kg, vg, block_mask=block_mask), (qg, kg, vg), dl), device, args.iters,
            args.warmup, dist.barrier), device)


def _attempt(row, key, fn):
    """Run a baseline; on failure its reason goes into the row (collective failures stay fatal)."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - a baseline's failure is a result
        row[f"{key}_error"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        traceback.print_exc()


def _length(N, args, patterns, device, mesh, rank, world) -> list[dict]:
    """Every pattern at N tokens, then the ring baseline."""
    import torch
    import torch.distributed as dist

    from patternc.distributed import Sharding, choose_sharding
    from patternc.runtime.blocks import block_tiles
    from patternc.sim.distributed import simulate_context_parallel
    from patternc.sim.predict import pattern_text

    dtype = torch.float32 if args.smoke else torch.bfloat16
    rows = []
    g = torch.Generator(device=device).manual_seed(N)
    q, k, v, do = (torch.randn(1, args.heads, N, args.head_dim, device=device, dtype=dtype, generator=g)
                   for _ in range(4))
    for name in args.patterns:
        pattern = patterns[name]
        row = {"pattern": name, "text": pattern_text(pattern, args.heads), "tokens": N,
               "world": world, "heads": args.heads, "head_dim": args.head_dim, "dtype": str(dtype)}
        want = _one_gpu(row, pattern, q, k, v, do, args, device) if rank == 0 else None
        dist.barrier()
        tile = math.lcm(*block_tiles(args.head_dim, dtype))
        size = -(-N // world // tile) * tile
        contiguous = Sharding.contiguous([max(0, min(size, N - r * size)) for r in range(world)])
        _patternc_cp(row, "cp", pattern, contiguous, q, k, v, do, want, args, device, rank, world)
        chosen = choose_sharding(pattern, N, world, heads=args.heads, head_dim=args.head_dim,
                                 dtype="float32" if args.smoke else "bfloat16")
        row["chosen_order"] = chosen.order
        if chosen.order != "contiguous":
            _patternc_cp(row, "cp_chosen", pattern, chosen, q, k, v, do, want, args, device, rank, world)
        pred = simulate_context_parallel(pattern, N, world, heads=args.heads, head_dim=args.head_dim,
                                         sharding=contiguous, device="h200")
        row.update(predicted_cp_ms=pred.ms, predicted_single_ms=pred.single_auto_ms,
                   predicted_efficiency=pred.efficiency, predicted_training_efficiency=pred.training_efficiency)
        if "flex" in args.baselines:
            _attempt(row, "flex_cp", lambda: _flex_cp(row, pattern, q, k, v, want, args, device, mesh, rank, world))
            dist.barrier()
        for kind, single in (("", "single_ms"), ("_fwd_bwd", "single_fwd_bwd_ms")):
            if rank == 0 and single in row:
                for prefix in ("cp", "cp_chosen", "flex_cp"):
                    if f"{prefix}{kind}_ms" in row:
                        row[f"{prefix}{kind}_efficiency"] = row[single] / (world * row[f"{prefix}{kind}_ms"])
        rows.append(row)
        if rank == 0:
            print(json.dumps(row), flush=True)
    if "sdpa" in args.baselines:
        row = {"pattern": "causal (SDPA ring)", "tokens": N, "world": world}
        _attempt(row, "sdpa_ring", lambda: _ring_sdpa(row, q, k, v, do, args, device, mesh, rank, world))
        dist.barrier()
        if rank == 0 and "sdpa_single_ms" in row and "sdpa_ring_ms" in row:
            row["sdpa_ring_efficiency"] = row["sdpa_single_ms"] / (world * row["sdpa_ring_ms"])
        rows.append(row)
        if rank == 0:
            print(json.dumps(row), flush=True)
    return rows


def _worker(rank, world, port, args):
    import torch
    import torch.distributed as dist

    import patternc

    if args.smoke:
        device, backend = torch.device("cpu"), "gloo"
        torch.set_num_threads(1)
    else:
        device, backend = torch.device("cuda", rank), "nccl"
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            device_id=device if backend == "nccl" else None)
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(device.type, (world,))
    patterns = patternc.load(ROOT / "examples" / "llm.pat")
    rows = []
    for N in args.lengths:
        rows += _length(N, args, patterns, device, mesh, rank, world)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if rank == 0:
        _write(args, rows, world)
    dist.barrier()
    dist.destroy_process_group()


def _write(args, rows, world):
    import torch

    from patternc.cli.bench import environment

    try:
        env = environment()
    except Exception as e:  # noqa: BLE001 - no triton on a CPU smoke run
        env = {"card": "cpu", "torch": torch.__version__, "error": str(e)}
    env["gpus"] = world
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "context_parallel.json").write_text(json.dumps(
        {"env": env, "args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1))
    cols = ["pattern", "tokens", "single_ms", "single_natural_ms", "cp_ms", "cp_efficiency", "chosen_order",
            "cp_chosen_ms", "cp_chosen_efficiency", "predicted_efficiency", "single_fwd_bwd_ms", "cp_fwd_bwd_ms",
            "cp_fwd_bwd_efficiency", "cp_bytes_received_per_rank", "flex_cp_ms", "flex_cp_efficiency",
            "flex_cp_bytes_received_per_rank", "cp_rel_err_vs_single", "sdpa_single_ms", "sdpa_ring_ms",
            "sdpa_ring_efficiency", "sdpa_ring_fwd_bwd_ms", "sdpa_ring_bytes_received_per_rank"]
    cols = [c for c in cols if any(c in r for r in rows)]

    def cell(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        if isinstance(v, list):
            return "/".join(cell(x) for x in v)
        return "" if v is None else str(v)

    lines = [f"# Context parallelism, {world} x {env.get('card')}, torch {env.get('torch')}", "",
             f"{rows[0].get('dtype', '') if rows else ''}, B 1, H {args.heads}, D {args.head_dim}; efficiency = one-GPU time / ({world} x multi-GPU time); "
             "bytes: forward keys and values received per rank (patternc: planned; ring and Flex: every other shard)",
             "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in cols) + " |" for r in rows]
    errors = [f"- {r['pattern']} {r['tokens']}: {k}: {v}" for r in rows for k, v in r.items() if k.endswith("_error")]
    if errors:
        lines += ["", "Baselines that failed:", *errors]
    (args.out / "context_parallel.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None):
    args = _args(argv)
    import torch

    if not args.smoke and torch.cuda.device_count() < args.world:
        print(f"context_parallel.py needs {args.world} GPUs and this machine has {torch.cuda.device_count()}: "
              "run it on a machine with several GPUs (e.g. two H200s), or --smoke on a CPU to check the script",
              file=sys.stderr)
        sys.exit(2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    torch.multiprocessing.start_processes(_worker, args=(args.world, port, args), nprocs=args.world,
                                          start_method="spawn")


if __name__ == "__main__":
    main()
