"""The backward kernels one by one, per config: where the backward's time goes.

For each pattern, length and config, the generated backward (`launch_backward`: the row
pre-pass, dK/dV per key tile, dQ per query tile) runs on the forward's output and LSE, and
torch.profiler gives each kernel's GPU time; FlexAttention's backward kernels (same tiles via
`to_flex_block_mask`, compiled) are profiled in the same run. The best config of each kernel
apart shows what tiles chosen per kernel would give. Writes `backward_kernels.json` and
`backward_kernels.md` into --out.

    python benchmarks/backward_kernels.py --out DIR [--patterns swa causal] [--configs 64x128/w8/s3 ...]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from attention import environment, kernel_times  # noqa: E402
from suite import SUITE  # noqa: E402
from tabulate import tabulate  # noqa: E402

import patternc  # noqa: E402
from patternc.aot import parse_config  # noqa: E402
from patternc.runtime.attention import _device_tag, _prepare  # noqa: E402

CONFIGS = ("64x64/w4/s3", "64x128/w8/s3", "128x64/w8/s3", "64x128/w4/s3", "128x64/w4/s3", "128x128/w8/s2",
           "32x128/w4/s3", "128x32/w4/s3", "64x128/w8/s2", "128x64/w8/s2")
KERNELS = ("rows", "dkdv", "dq")


def patternc_row(pattern, cfg, q, k, v, do) -> dict:
    """Per-kernel microseconds of one config's backward (and the forward it needs, once)."""
    B, H, M, D = q.shape
    module, layout = _prepare(pattern, B, H, M, k.shape[2], D, cfg, str(q.device), _device_tag(q.device),
                              backward=True)
    lse = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)
    out, lse = module.launch(q, k, v, layout, lse=lse)
    times = kernel_times(lambda: module.launch_backward(q, k, v, out, lse, do, layout))
    by_kernel = {name: sum(us for key, us in times.items() if key.startswith(f"attention_bwd_{name}"))
                 for name in KERNELS}
    return {name: round(us, 1) for name, us in by_kernel.items()}


def flex_row(text, S, q, k, v, do) -> dict:
    """FlexAttention's backward kernels (its forward excluded), microseconds per call."""
    from torch.nn.attention.flex_attention import flex_attention

    flex = torch.compile(flex_attention, dynamic=False)
    H = q.shape[1]
    block_mask = patternc.compile(text).layout(S, heads=H, order="natural").to_flex_block_mask().to("cuda")
    qg, kg, vg = (x.detach().requires_grad_() for x in (q, k, v))
    out = flex(qg, kg, vg, block_mask=block_mask)
    times = kernel_times(lambda: torch.autograd.grad(out, (qg, kg, vg), do, retain_graph=True))
    return {"backward": round(sum(us for key, us in times.items() if "backward" in key), 1),
            "all": round(sum(us for key, us in times.items() if key.startswith("triton")), 1)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--patterns", nargs="+", default=["swa", "causal", "dilated"])
    ap.add_argument("--lengths", nargs="+", type=int, default=[8192, 32768])
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS))
    ap.add_argument("--memories", nargs="+", default=["tma"])
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--head-dim", type=int, default=128)
    args = ap.parse_args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.patterns:
        text = SUITE[name][0]
        pattern = patternc.compile(text)
        for S in args.lengths:
            q, k, v, do = (torch.randn(1, args.heads, S, args.head_dim, device="cuda", dtype=torch.bfloat16)
                           for _ in range(4))
            try:
                flex = flex_row(text, S, q, k, v, do)
            except Exception as e:  # noqa: BLE001 - reported in the table
                flex = {"error": f"{type(e).__name__}: {e}"[:200]}
            rows.append({"pattern": name, "S": S, "config": "flex", **flex})
            print(rows[-1], flush=True)
            for memory in args.memories:
                for cfg_text in args.configs:
                    cfg = dict(parse_config(cfg_text), memory=memory)
                    row = {"pattern": name, "S": S, "config": f"{cfg_text}/{memory}"}
                    try:
                        row.update(patternc_row(pattern, cfg, q, k, v, do))
                        row["total"] = round(sum(row[n] for n in KERNELS), 1)
                    except Exception as e:  # noqa: BLE001 - e.g. out of shared memory: reported
                        row["error"] = f"{type(e).__name__}: {e}"[:200]
                    rows.append(row)
                    print(row, flush=True)
    env = environment()
    (out_dir / "backward_kernels.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=1))
    lines = [f"# Backward kernels per config (us per call)\n\n{env}\n"]
    for name in args.patterns:
        for S in args.lengths:
            mine = [r for r in rows if r["pattern"] == name and r["S"] == S and "total" in r]
            if not mine:
                continue
            best = {n: min(mine, key=lambda r: r[n]) for n in ("dkdv", "dq", "total")}
            split = best["dkdv"]["dkdv"] + best["dq"]["dq"] + best["dkdv"]["rows"]
            lines.append(f"\n## {name} {S}\n\nbest single config {best['total']['config']} "
                         f"{best['total']['total']} us; dK/dV best {best['dkdv']['config']}, dQ best "
                         f"{best['dq']['config']}: {split:.1f} us together\n")
            table = [r for r in rows if r["pattern"] == name and r["S"] == S]
            lines.append(tabulate(table, headers="keys", tablefmt="github"))
    (out_dir / "backward_kernels.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
