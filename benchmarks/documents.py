"""Packed documents (variable-length batches): patternc's `documents=` against FlexAttention
with a document mask and against dense attention run per document, correctness first.

A packed batch of --tokens tokens (default 64k) in documents of 512..16k tokens (seeded), bf16,
B 1, H 16, D 128, for `causal` and `causal & window(1024)`:

- patternc: `patternc.attention(q, k, v, pattern, documents=cu_seqlens)` (its kernel's programs
  laid out from the boundaries on the device, each call);
- FlexAttention: a document mask written here (document ids per token, attention-gym's
  `generate_doc_mask_mod` form), `create_block_mask` compiled (timed apart: it is made once per
  batch), `flex_attention` compiled;
- per document: FlashAttention's `flash_attn_varlen_func` when installed, else SDPA called once
  per document (flash backend, `is_causal=True`; for the window, a boolean mask per document
  on the efficient backend), the loop included in the time.

Forward and forward+backward (gradients of q, k, v). Outputs and gradients are compared with
FlexAttention's before anything is timed.

    python benchmarks/documents.py --out benchmarks/results/<date>-h200-documents
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from attention import bench, environment, rel_err  # noqa: E402

import patternc  # noqa: E402

PATTERNS = {"causal": ("causal", None), "swa": ("causal & window(1024)", 1024)}


def document_lengths(tokens: int, lo: int, hi: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    lengths = []
    while sum(lengths) < tokens:
        lengths.append(int(torch.randint(lo, hi + 1, (1,), generator=g)))
    lengths[-1] -= sum(lengths) - tokens
    return [n for n in lengths if n > 0]


def document_mask_mod(lengths: list[int], window: int | None):
    """attention-gym's document mask: same document, causal inside it (and the window)."""
    doc = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths)).cuda()

    def mask_mod(b, h, q_idx, kv_idx):
        keep = (doc[q_idx] == doc[kv_idx]) & (q_idx >= kv_idx)
        if window is not None:
            keep = keep & (q_idx - kv_idx < window)
        return keep
    return mask_mod


def per_document(lengths: list[int], window: int | None):
    """Attention run document by document: flash_attn_varlen_func if installed, else SDPA."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    bounds = [0]
    for n in lengths:
        bounds.append(bounds[-1] + n)
    try:
        from flash_attn import flash_attn_varlen_func

        cu = torch.tensor(bounds, dtype=torch.int32, device="cuda")
        longest = max(lengths)
        ws = (-1, -1) if window is None else (window - 1, 0)

        def attend(q, k, v):  # [1, H, N, D] -> varlen [N, H, D]
            t = [x[0].transpose(0, 1) for x in (q, k, v)]
            out = flash_attn_varlen_func(*t, cu, cu, longest, longest, causal=True, window_size=ws)
            return out.transpose(0, 1)[None]
        return attend, "flash_attn_varlen_func"
    except ImportError:
        pass
    masks = {}
    if window is not None:
        for n in set(lengths):
            i = torch.arange(n, device="cuda")
            masks[n] = (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] < window)

    def attend(q, k, v):
        outs = []
        for a, b in zip(bounds[:-1], bounds[1:]):
            part = [x[:, :, a:b] for x in (q, k, v)]
            if window is None:
                with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                    outs.append(sdpa(*part, is_causal=True))
            else:
                with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]):
                    outs.append(sdpa(*part, attn_mask=masks[b - a]))
        return torch.cat(outs, 2)
    return attend, "SDPA per document" + (" (flash, is_causal)" if window is None else " (efficient, bool mask)")


def fwd_bwd(attend, q, k, v, do):
    return torch.autograd.grad(attend(q, k, v), (q, k, v), do)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tokens", type=int, default=65536)
    ap.add_argument("--min-doc", type=int, default=512)
    ap.add_argument("--max-doc", type=int, default=16384)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    env, rows = environment(), []
    flex = torch.compile(flex_attention, dynamic=False)
    lengths = document_lengths(args.tokens, args.min_doc, args.max_doc, args.seed)
    N, H, D = args.tokens, args.heads, args.head_dim
    cu = torch.tensor([0] + torch.cumsum(torch.tensor(lengths), 0).tolist(), dtype=torch.int32, device="cuda")
    print(f"{len(lengths)} documents: {lengths}", flush=True)
    q, k, v = (torch.randn(1, H, N, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    do = torch.randn_like(q)
    for name, (text, window) in PATTERNS.items():
        pattern = patternc.compile(text)
        row = {"pattern": name, "text": text, "tokens": N, "documents": len(lengths)}
        t0 = time.perf_counter()
        block_mask = create_block_mask(document_mask_mod(lengths, window), 1, None, N, N, device="cuda", _compile=True)
        torch.cuda.synchronize()
        row["create_block_mask_first_ms"] = (time.perf_counter() - t0) * 1e3
        row["create_block_mask_ms"] = bench(lambda: create_block_mask(document_mask_mod(lengths, window), 1, None, N,
                                                                      N, device="cuda", _compile=True))
        row["flex_density"] = 1 - block_mask.sparsity() / 100
        ours = lambda q, k, v: patternc.attention(q, k, v, pattern, documents=cu)  # noqa: E731
        theirs = lambda q, k, v: flex(q, k, v, block_mask=block_mask)  # noqa: E731
        dense, row["per_document"] = per_document(lengths, window)
        with torch.no_grad():
            t0 = time.perf_counter()
            out = ours(q, k, v)
            torch.cuda.synchronize()
            row["first_call_ms"] = (time.perf_counter() - t0) * 1e3
            ref = theirs(q, k, v)
            row["rel_err_vs_flex"] = rel_err(out, ref)
            row["rel_err_vs_per_document"] = rel_err(out, dense(q, k, v))
            row["patternc_ms"] = bench(lambda: ours(q, k, v))
            # the same pattern over the whole sequence as one document: what the packing costs
            row["patternc_one_sequence_ms"] = bench(lambda: patternc.attention(q, k, v, pattern))
            row["flex_ms"] = bench(lambda: theirs(q, k, v))
            row["per_document_ms"] = bench(lambda: dense(q, k, v))
        grads, want = fwd_bwd(ours, q, k, v, do), fwd_bwd(theirs, q, k, v, do)
        row["grad_rel_err_vs_flex"] = max(rel_err(a, b) for a, b in zip(grads, want))
        row["patternc_fwd_bwd_ms"] = bench(lambda: fwd_bwd(ours, q, k, v, do))
        row["flex_fwd_bwd_ms"] = bench(lambda: fwd_bwd(theirs, q, k, v, do))
        row["per_document_fwd_bwd_ms"] = bench(lambda: fwd_bwd(dense, q, k, v, do))
        for kind in ("", "_fwd_bwd"):
            row[f"speedup_vs_flex{kind}"] = row[f"flex{kind}_ms"] / row[f"patternc{kind}_ms"]
            row[f"speedup_vs_per_document{kind}"] = row[f"per_document{kind}_ms"] / row[f"patternc{kind}_ms"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "documents.json").write_text(json.dumps({"env": env, "lengths": lengths, "rows": rows}, indent=1))
    cols = ["pattern", "documents", "patternc_ms", "patternc_one_sequence_ms", "flex_ms", "per_document_ms", "speedup_vs_flex",
            "speedup_vs_per_document", "patternc_fwd_bwd_ms", "flex_fwd_bwd_ms", "per_document_fwd_bwd_ms",
            "speedup_vs_flex_fwd_bwd", "rel_err_vs_flex", "grad_rel_err_vs_flex", "create_block_mask_ms"]
    lines = [f"# Packed documents, {env['card']}, torch {env['torch']}, triton {env['triton']}, driver {env['driver']}",
             "", f"{N} tokens in {len(lengths)} documents ({args.min_doc}..{args.max_doc}, seed {args.seed}); "
             f"H {H}, D {D}, bf16; per document: {rows[0]['per_document']}", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        lines.append("| " + " | ".join(f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c]) for c in cols)
                     + " |")
    (args.out / "documents.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
