"""Train a tiny decoder-only transformer whose attention is a patternc pattern.

The text is the project itself (README and source files, read as bytes: a 256-token
vocabulary), so the example needs no download. Every layer's attention runs
`patternc.attention(q, k, v, pattern)` with a pattern from a `.pat` file; `--dense` trains the
same model with dense masked SDPA over the same mask (`Pattern.mask`), for comparison.

    python examples/train_tiny.py                                     # GPU: 8k tokens, examples/llm.pat:sinks
    python examples/train_tiny.py --dense --log dense.json            # the same model, dense masked SDPA
    python examples/train_tiny.py --plot curve.png a.json b.json      # loss curves of earlier runs

On a CPU it runs too (small `--seq-len`; attention then falls back to patternc's dense
reference unless TRITON_INTERPRET=1). Each step prints its loss and time.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import patternc

ROOT = Path(__file__).resolve().parent.parent


def corpus() -> torch.Tensor:
    """The project's README and Python sources, as bytes."""
    files = [ROOT / "README.md", *sorted((ROOT / "patternc").rglob("*.py"))]
    return torch.tensor(list(b"\n".join(f.read_bytes() for f in files)), dtype=torch.long)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, pattern, dense_mask):
        super().__init__()
        self.heads, self.pattern, self.dense_mask = heads, pattern, dense_mask
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def forward(self, x):
        B, S, dim = x.shape
        q, k, v = self.qkv(x).view(B, S, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        if self.dense_mask is None:
            y = patternc.attention(q, k, v, self.pattern)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=self.dense_mask)
        return self.out(y.transpose(1, 2).reshape(B, S, dim))


class Block(nn.Module):
    def __init__(self, dim, heads, pattern, dense_mask):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, pattern, dense_mask)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyLM(nn.Module):
    def __init__(self, seq_len, dim, heads, layers, pattern, dense_mask=None):
        super().__init__()
        self.embed, self.position = nn.Embedding(256, dim), nn.Embedding(seq_len, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, pattern, dense_mask) for _ in range(layers))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, 256, bias=False)

    def forward(self, tokens):
        x = self.embed(tokens) + self.position(torch.arange(tokens.shape[1], device=tokens.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def load_pattern(spec: str):
    """`FILE:NAME` (a pattern of a .pat file) or pattern text."""
    file, _, name = spec.rpartition(":")
    return patternc.load(file)[name] if file.endswith(".pat") else patternc.compile(spec)


def train(args) -> list[dict]:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(args.seed)
    pattern = load_pattern(args.pattern)
    dense_mask = pattern.mask(args.seq_len, device=device)[None] if args.dense else None  # [1, H, S, S]
    model = TinyLM(args.seq_len, args.dim, args.heads, args.layers, pattern, dense_mask).to(device)
    if args.compile == "reduce-overhead":
        # Inductor's debug check of CUDA graph pools rejects the first backward's warm-up (it
        # sees the forward's saved output as freed while alive; the gradients are right: see README)
        from torch._inductor import config as inductor_config

        inductor_config.triton.slow_path_cudagraph_asserts = False
    step_fn = torch.compile(model, mode=args.compile) if args.compile else model
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1)
    data = corpus()
    batches = torch.Generator().manual_seed(args.seed)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    log = []
    for step in range(args.steps):
        starts = torch.randint(0, len(data) - args.seq_len - 1, (args.batch,), generator=batches)
        chunk = torch.stack([data[s: s + args.seq_len + 1] for s in starts.tolist()]).to(device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        began = time.perf_counter()
        with amp:
            logits = step_fn(chunk[:, :-1])
            loss = F.cross_entropy(logits.float().flatten(0, 1), chunk[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        log.append({"step": step, "loss": loss.item(), "ms": 1e3 * (time.perf_counter() - began)})
        print(f"step {step:4d}  loss {log[-1]['loss']:.4f}  {log[-1]['ms']:8.1f} ms", flush=True)
    return log


def plot(png: str, logs: list[str]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for path in logs:
        run = json.loads(Path(path).read_text())
        steps = [r["step"] for r in run["steps"]]
        median = statistics.median(r["ms"] for r in run["steps"][10:])  # past compilation and warm-up
        ax.plot(steps, [r["loss"] for r in run["steps"]], label=f"{run['label']} ({median:.0f} ms/step)")
    ax.set(xlabel="step", ylabel="training loss (nats/byte)", title="examples/train_tiny.py")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pattern", default=f"{ROOT / 'examples' / 'llm.pat'}:sinks", help="FILE:NAME or pattern text")
    p.add_argument("--dense", action="store_true", help="dense masked SDPA over the same mask instead of patternc")
    p.add_argument("--seq-len", type=int, default=8192)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device")
    p.add_argument("--compile", nargs="?", const="default", choices=["default", "reduce-overhead", "max-autotune"],
                   help="torch.compile the model (with this mode; reduce-overhead: CUDA graphs)")
    p.add_argument("--log", help="write the losses and step times as JSON")
    p.add_argument("--plot", nargs="+", metavar=("PNG", "LOG"), help="plot earlier --log files into PNG and exit")
    args = p.parse_args(argv)
    if args.plot:
        plot(args.plot[0], args.plot[1:])
        return []
    log = train(args)
    if args.log:
        label = (("dense SDPA" if args.dense else "patternc")
                 + (f" compiled ({args.compile})" if args.compile and args.compile != "default" else
                    " compiled" if args.compile else ""))
        Path(args.log).write_text(json.dumps({"label": label, "args": vars(args), "steps": log}, indent=1))
    first, last = (sum(r["loss"] for r in part) / len(part) for part in (log[:3], log[-3:]))
    print(f"loss {first:.3f} -> {last:.3f} ({math.exp(last):.1f} perplexity per byte)")
    return log


if __name__ == "__main__":
    main()
