"""First-call time of a new (pattern, shape): compile, autotune and layout, as a user meets them.

Each measurement runs in a fresh Python process with an empty patternc cache and an empty
Triton cache (a new pattern on a warm machine: torch and triton imported, CUDA initialised,
before the clock starts), then once more in a fresh process over the caches the first one
left (a later run of the same program). Target (issue 13): <= 3 s for the first. Writes
`first_call.json` and `first_call.md` into --out.

    python benchmarks/first_call.py --out DIR [--patterns swa dilated] [--seq-len 8192] [--backward] [--profile]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from suite import SUITE  # noqa: E402
from tabulate import tabulate  # noqa: E402

# runs in the child: prints one JSON line of seconds
CHILD = r"""
import cProfile, io, json, os, pstats, sys, time
import torch, triton
import patternc
text, S, backward, profile = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4]
torch.cuda.init()
q, k, v = (torch.randn(1, 16, S, 128, device="cuda", dtype=torch.bfloat16, requires_grad=backward) for _ in range(3))
torch.cuda.synchronize()
profiler = cProfile.Profile() if profile else None
if profiler:
    profiler.enable()
t0 = time.perf_counter()
pattern = patternc.compile(text)
out = patternc.attention(q, k, v, pattern)
torch.cuda.synchronize()
t1 = time.perf_counter()
times = {"forward_s": t1 - t0}
if backward:
    out.backward(torch.randn_like(out))
    torch.cuda.synchronize()
    times["backward_s"] = time.perf_counter() - t1
if profiler:
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(40)
    open(profile, "w").write(text.getvalue())
print(json.dumps(times))
"""


def child(text: str, S: int, backward: bool, cache: str, profile: str = "") -> dict:
    env = dict(os.environ, PATTERNC_CACHE_DIR=f"{cache}/patternc", TRITON_CACHE_DIR=f"{cache}/triton")
    done = subprocess.run([sys.executable, "-c", CHILD, text, str(S), "1" if backward else "0", profile], env=env,
                          capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1][:200] if done.stderr.strip() else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--patterns", nargs="+", default=["swa", "dilated"])
    ap.add_argument("--seq-len", type=int, default=8192)
    ap.add_argument("--backward", action="store_true", help="time the first backward too")
    ap.add_argument("--profile", action="store_true", help="cProfile each run into PATTERN_RUN.prof.txt")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.patterns:
        text = SUITE[name][0]
        with tempfile.TemporaryDirectory() as cache:
            for run in ("cold", "warm caches"):
                profile = str(out / f"{name}_{run.split()[0]}.prof.txt") if args.profile else ""
                row = {"pattern": name, "S": args.seq_len, "run": run,
                       **child(text, args.seq_len, args.backward, cache, profile)}
                rows.append(row)
                print(row, flush=True)
    (out / "first_call.json").write_text(json.dumps(rows, indent=1))
    (out / "first_call.md").write_text("# First call (s)\n\n" + tabulate(rows, headers="keys", tablefmt="github")
                                       + "\n")


if __name__ == "__main__":
    main()
