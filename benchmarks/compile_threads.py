"""Compile threads, no GPU needed: the autotuner's candidates for one problem compiled by Triton
for sm_90 (a stand-in driver reports the GPU; nothing is launched), one after another and at
once in N threads as `autotune.compile_all` does on a first call, each in a fresh process with
an empty Triton cache. Says whether compiles scale with this machine's cores (runtime/
autotune.py `MIN_CORES`; the GPU host's first call: benchmarks/first_call.py).

    python benchmarks/compile_threads.py [--workers 1 2 4 16] [--backward] [--seq-len 8192] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# runs in the child: prints one JSON line
CHILD = r"""
import json, sys, time, types
import torch
from triton.backends.compiler import GPUTarget
from triton.runtime import driver
from triton.runtime.cache import triton_key

import patternc
from patternc.runtime import autotune

rt = sys.modules["patternc.runtime.attention"]
workers, S, backward, text = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4]
sm90 = GPUTarget("cuda", 90, 32)
driver.set_active(types.SimpleNamespace(get_current_device=lambda: 0, get_current_target=lambda: sm90,
                                        get_current_stream=lambda device: 0))
q = torch.empty(1, 16, S, 128, dtype=torch.bfloat16)
pattern = patternc.compile(text)
configs = (autotune.backward_candidates if backward else autotune.candidates)(128, q.dtype, (9, 0))


def prepared(cfg):
    return rt._prepare(pattern, 1, 16, S, S, 128, dict(cfg), "cpu", "cuda-sm90", backward=backward)


def warm(cfg):
    module, layout = prepared(cfg)
    if backward:
        rt._run_backward(autotune.warming(module), layout, q, q, q, q, q, torch.empty(1, 16, S), None, None)
    else:
        rt._run(autotune.warming(module), layout, q, q, q, None, False, False)


for cfg in configs:  # layouts, modules and Triton's own key first: only the compiles are timed
    prepared(cfg)
triton_key()
start, cpu = time.perf_counter(), time.process_time()
if workers == 1:
    for cfg in configs:
        warm(cfg)
else:
    autotune.compile_workers = lambda count: workers
    autotune.compile_all(warm, configs, 3 if backward else 1)
print(json.dumps({"configs": len(configs), "s": time.perf_counter() - start, "cpu_s": time.process_time() - cpu}))
"""


def child(workers: int, S: int, backward: bool, text: str) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
        env.update(PATTERNC_CACHE_DIR=f"{cache}/patternc", TRITON_CACHE_DIR=f"{cache}/triton",
                   PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
        done = subprocess.run([sys.executable, "-c", CHILD, str(workers), str(S), "1" if backward else "0", text],
                              env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1][:200] if done.stderr.strip() else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--backward", action="store_true", help="the backward's candidates (3 kernels each)")
    ap.add_argument("--seq-len", type=int, default=8192)
    ap.add_argument("--pattern", default="causal & window(1024)")
    ap.add_argument("--out", help="write compile_threads.json there")
    args = ap.parse_args(argv)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    rows = []
    for workers in args.workers:
        row = {"cores": cores, "direction": "backward" if args.backward else "forward", "workers": workers,
               **child(workers, args.seq_len, args.backward, args.pattern)}
        if "s" in row and rows and "s" in rows[0]:
            row["speedup"] = round(rows[0]["s"] / row["s"], 2)
        rows.append(row)
        print(row, flush=True)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "compile_threads.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
