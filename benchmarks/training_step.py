"""Forward+backward per training step: the wall time of a loop of steps against the GPU time of
the kernels they launch, to see where a step is host-bound.

For each pattern and length (bf16, B 1, H 16, D 128 by default, inputs requiring grad), a step is
`out = attend(q, k, v); torch.autograd.grad(out, (q, k, v), do)` through:

- `patternc`: `patternc.attention`, eager (its `autograd.Function` path);
- `custom op`: the `patternc::attention` custom op called directly (what `torch.compile` traces,
  and the eager path before the Function);
- `flex`: compiled FlexAttention with the same tiles (`to_flex_block_mask`).

`wall`: a loop of --steps steps, the GPU synchronized at both ends, per step; `gpu`: the sum of
the kernel times of one step (torch.profiler); `host-bound by`: wall - gpu where positive; and
whether a later step's gradients equal the first step's bit for bit (patternc's kernels are
deterministic; its later steps replay the first one's recorded launches). Writes
training_step.json and training_step.md into --out.

    python benchmarks/training_step.py --out DIR [--patterns swa causal] [--lengths 1024 8192] [--projection]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from attention import environment, kernel_times  # noqa: E402
from suite import SUITE  # noqa: E402
from tabulate import tabulate  # noqa: E402

import patternc  # noqa: E402
from patternc.runtime.autograd import attention_op, problem_key  # noqa: E402


def wall_ms(step, steps: int) -> float:
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps * 1e3


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--patterns", nargs="+", default=["swa", "causal"])
    ap.add_argument("--lengths", nargs="+", type=int, default=[1024, 8192])
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--projection", action="store_true",
                    help="q, k, v as views of one [B, S, 3, H, D] tensor (a fused projection's output), not three tensors")
    args = ap.parse_args(argv)
    from torch.nn.attention.flex_attention import flex_attention

    flex = torch.compile(flex_attention, dynamic=False)
    rows = []
    for name in args.patterns:
        text = SUITE[name][0] if name in SUITE else name
        pattern = patternc.compile(text)
        key = problem_key(pattern.text, None)
        for S in args.lengths:
            if args.projection:  # views of one [B, S, 3, H, D] tensor, as a fused qkv projection makes them
                qkv = torch.randn(1, S, 3, args.heads, args.head_dim, device="cuda", dtype=torch.bfloat16,
                                  requires_grad=True)
                leaves = (qkv,)
                q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            else:
                leaves = q, k, v = (torch.randn(1, args.heads, S, args.head_dim, device="cuda", dtype=torch.bfloat16,
                                                requires_grad=True) for _ in range(3))
            do = torch.randn_like(q)
            block_mask = pattern.layout(S, heads=args.heads, order="natural").to_flex_block_mask().to("cuda")
            paths = {
                "patternc": lambda: patternc.attention(q, k, v, pattern),
                "custom op": lambda: attention_op(q, k, v, None, key, None)[0],
                "flex": lambda: flex(q, k, v, block_mask=block_mask),
            }
            for path, attend in paths.items():
                step = lambda: torch.autograd.grad(attend(), leaves, do)  # noqa: E731
                first = step()  # the recorded launches (patternc), then replays: the same gradients
                wall = wall_ms(step, args.steps)
                same = all(torch.equal(a, b) for a, b in zip(step(), first))
                gpu = sum(us for key_, us in kernel_times(step, 20).items()
                          if not key_.startswith(("aten::", "cuda", "Memcpy", "Memset", "ProfilerStep"))) / 1e3
                rows.append({"pattern": name, "S": S, "path": path, "wall_ms": round(wall, 4),
                             "gpu_ms": round(gpu, 4), "host-bound by ms": round(max(wall - gpu, 0.0), 4),
                             "later steps' gradients == first's": same})
                print(rows[-1], flush=True)
    env = environment()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "training_step.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=1))
    (out / "training_step.md").write_text(f"# Training step: wall vs GPU time\n\n{env}\n\n"
                                          + tabulate(rows, headers="keys", tablefmt="github") + "\n")


if __name__ == "__main__":
    main()
