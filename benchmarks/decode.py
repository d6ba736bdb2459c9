"""Chunked prefill and decoding (M new queries over N cached keys, queries at the last M
positions): patternc vs FlexAttention fed the same tiles, correctness first, then time.

    python benchmarks/decode.py --out benchmarks/results/<date>-h200-decode
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from attention import bench, environment, rel_err  # noqa: E402

import patternc  # noqa: E402

CASES = [("swa", "causal & window(1024)", 2048, 16384), ("swa", "causal & window(1024)", 128, 32768),
         ("sinks", "causal & (window(1024) | sink(4))", 2048, 16384), ("causal", "causal", 2048, 16384)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--head-dim", type=int, default=128)
    args = ap.parse_args(argv)
    from torch.nn.attention.flex_attention import flex_attention

    env, rows = environment(), []
    flex = torch.compile(flex_attention, dynamic=False)
    H, D = args.heads, args.head_dim
    for name, text, M, N in CASES:
        pattern = patternc.compile(text)
        q = torch.randn(1, H, M, D, device="cuda", dtype=torch.bfloat16)
        k, v = (torch.randn(1, H, N, D, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        block_mask = pattern.layout(M, N, heads=H, order="natural").to_flex_block_mask().to("cuda")
        ref = flex(q, k, v, block_mask=block_mask)
        out = patternc.attention(q, k, v, pattern)
        row = {"pattern": name, "text": text, "M": M, "N": N, "rel_err_vs_flex": rel_err(out, ref),
               "keys_seen_by_the_last_query": int(pattern.mask(1, N)[0, 0].sum()),
               "patternc_ms": bench(lambda: patternc.attention(q, k, v, pattern)),
               "flex_ms": bench(lambda: flex(q, k, v, block_mask=block_mask))}
        row["speedup_vs_flex"] = row["flex_ms"] / row["patternc_ms"]
        rows.append(row)
        print(row, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "decode.json").write_text(json.dumps({"env": env, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
