"""First-call time of a new (pattern, shape): compile, autotune and layout, as a user meets them.

Each measurement runs in a fresh Python process with an empty patternc cache and an empty
Triton cache (a new pattern on a warm machine: torch and triton imported, CUDA initialised,
before the clock starts), then once more in a fresh process over the caches the first one
left (a later run of the same program). Target (issue 13): <= 3 s for the first. Writes
`first_call.json` and `first_call.md` into --out.

The autotuner compiles its candidates at once, in threads, before it times them (runtime/
autotune.py `compile_all`; `workers` in the table: threads, 1 where the machine has fewer
than MIN_CORES cores). `--sequential` adds a cold run with that off (each candidate compiled
when it is first timed, as before), in fresh caches of its own, so one invocation compares
both on the same machine. `--triton-ready` starts the clock after Triton's driver is set up
too (its C utilities built and loaded, as on a machine that has run a Triton kernel before).
Columns: cores the process may run on, seconds to the first forward (and backward), of which
in the autotuner's search (`*_tune_s`) and in its concurrent compile (`*_compile_s`, part of
the search), compile threads of each search (`workers`, forward/backward).

    python benchmarks/first_call.py --out DIR [--patterns swa dilated] [--seq-len 8192] [--backward] [--profile]
        [--sequential] [--triton-ready]
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
from patternc.runtime import autotune
text, S, backward, profile = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4]
sequential, triton_ready = sys.argv[5] == "1", sys.argv[6] == "1"
workers, used = (lambda count: 1) if sequential else autotune.compile_workers, []  # sequential: as before
autotune.compile_workers = lambda count: used.append(workers(count)) or used[-1]  # threads per search
spent = {"tune": 0.0, "compile": 0.0}  # in the search, and in its concurrent compile


def timed(name, function):
    def call(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            spent[name] += time.perf_counter() - start
    return call


autotune.tune, autotune.compile_all = timed("tune", autotune.tune), timed("compile", autotune.compile_all)
torch.cuda.init()
if triton_ready:
    from triton.runtime import driver
    driver.active.get_current_device()
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
times = {"cores": len(os.sched_getaffinity(0)), "forward_s": t1 - t0, "fwd_tune_s": spent["tune"],
         "fwd_compile_s": spent["compile"]}
if backward:
    spent.update(tune=0.0, compile=0.0)
    t2 = time.perf_counter()
    out.backward(torch.randn_like(out))
    torch.cuda.synchronize()
    times.update(backward_s=time.perf_counter() - t2, bwd_tune_s=spent["tune"], bwd_compile_s=spent["compile"])
times["workers"] = "/".join(map(str, used))
if profiler:
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(40)
    open(profile, "w").write(text.getvalue())
print(json.dumps(times))
"""


def child(text: str, S: int, backward: bool, cache: str, profile: str = "", sequential: bool = False,
          triton_ready: bool = False) -> dict:
    env = dict(os.environ, PATTERNC_CACHE_DIR=f"{cache}/patternc", TRITON_CACHE_DIR=f"{cache}/triton")
    flags = ["1" if flag else "0" for flag in (backward, sequential, triton_ready)]
    done = subprocess.run([sys.executable, "-c", CHILD, text, str(S), flags[0], profile, *flags[1:]], env=env,
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
    ap.add_argument("--sequential", action="store_true",
                    help="also a cold run with the candidates compiled one after another (as before)")
    ap.add_argument("--triton-ready", action="store_true", help="Triton's driver set up before the clock starts")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.patterns:
        text = SUITE[name][0]
        runs = [("cold", "warm caches")] + ([("cold, sequential",)] if args.sequential else [])
        for fresh in runs:  # each in caches of its own
            with tempfile.TemporaryDirectory() as cache:
                for run in fresh:
                    profile = str(out / f"{name}_{run.replace(', ', '_').split()[0]}.prof.txt") if args.profile else ""
                    row = {"pattern": name, "S": args.seq_len, "run": run,
                           **child(text, args.seq_len, args.backward, cache, profile, run.endswith("sequential"),
                                   args.triton_ready)}
                    rows.append(row)
                    print(row, flush=True)
    (out / "first_call.json").write_text(json.dumps(rows, indent=1))
    (out / "first_call.md").write_text("# First call (s)\n\n" + tabulate(rows, headers="keys", tablefmt="github")
                                       + "\n")


if __name__ == "__main__":
    main()
