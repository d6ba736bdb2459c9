"""The autotuner's first call (runtime/autotune.py): every candidate's kernels are compiled at
once, in threads, before any is timed, and the timed launches find them compiled.

CPU: real generated modules and Triton's own JIT dispatch (binding, specialisation, cache
key, `AsyncCompileMode`), over a stand-in driver that reports an sm_90 GPU and a stand-in for
Triton's compile entry (`triton.compiler.compile`) that counts compiles and returns a kernel
whose launcher records its launches. So a warm-up that specialised a kernel otherwise than the
launch (alignment, EVEN_M, descriptors or pointers, options) would show as a second compile.
In a process of its own: Triton's JIT is set up for the interpreter in this one.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent  # this checkout's patternc in the child, not an installed one
SCRIPT = r"""
import json, os, sys, threading, time, types
import torch, triton, triton.compiler
import triton.testing
from triton.backends.compiler import GPUTarget
from triton.runtime import driver

import patternc
from patternc.runtime import autotune

rt = sys.modules["patternc.runtime.attention"]


events, state = [], {"in_flight": 0, "most": 0, "fail": lambda module: False}


def launcher(src, metadata):  # the host-side launcher Triton builds for a compiled kernel
    events.append(("launcher", tiles(sys.modules[src.fn.module]), src.fn.__name__, None,
                   threading.current_thread().name))


driver.set_active(types.SimpleNamespace(  # what Triton's JIT dispatch asks of a driver
    get_current_device=lambda: 0, get_current_stream=lambda device: 0,
    get_current_target=lambda: GPUTarget("cuda", 90, 32), launcher_cls=launcher))
lock = threading.Lock()


def tiles(module):
    memory = "/tma" if "TensorDescriptor" in vars(module) else "/pointers"
    return f"{module.BLOCK_M}x{module.BLOCK_N}s{module.NUM_STAGES}{memory}"


class Compiled:  # a CompiledKernel whose launcher records the launch
    function, packed_metadata = 1, ()

    def __init__(self, module, name):
        self.module, self.name = module, name

    def launch_metadata(self, *args):
        return None

    def run(self, *args):
        events.append(("launch", tiles(self.module), self.name, id(self), threading.current_thread().name))


# Triton's compile entry: a kernel of the same source, specialisation and options as one
# compiled before is found in Triton's disk cache ("cached", milliseconds), else compiled
def compile(src, target=None, options=None, _env_vars=None):
    module = sys.modules[src.fn.module]
    compiled = Compiled(module, src.fn.__name__)
    compiled.src, compiled.metadata = src, None
    key = (src.hash(), repr(sorted(options.items())))
    if key in disk:
        events.append(("cached", tiles(module), src.fn.__name__, id(compiled), threading.current_thread().name))
        return compiled
    with lock:
        state["in_flight"] += 1
        state["most"] = max(state["most"], state["in_flight"])
    time.sleep(0.05)  # long enough for compiles submitted together to overlap
    with lock:
        state["in_flight"] -= 1
    failed = state["fail"](module)
    events.append(("compile", tiles(module), src.fn.__name__, None if failed else id(compiled),
                   threading.current_thread().name))
    if failed:
        raise RuntimeError("out of shared memory (stand-in)")
    disk.add(key)
    return compiled


disk = set()
triton.compiler.compile = compile  # JITFunctions take it from here when they first bind


def counted(prepare):
    def call(*args, **kwargs):
        state["prepared"] += 1
        return prepare(*args, **kwargs)
    return call


def do_bench(fn, **kwargs):  # the launch once; a fixed time per config: 64x64 through pointers is fastest
    prepared = state["prepared"]
    fn()
    state["timed_prepares"] += state["prepared"] - prepared  # layouts and modules readied in the timed call
    last = events[-1][1]
    return {"64x64s3/pointers": 1.0}.get(last, 2.0 + len([e for e in events if e[1] == last]) * 1e-3)


triton.testing.do_bench = do_bench
rt._capability = lambda device: (9, 0)
rt._prepare = counted(rt._prepare)
state.update(prepared=0, timed_prepares=0)
workers = sys.argv[1]
counts = []  # the kernels each search compiles
if workers == "1":
    autotune.compile_workers = lambda count: counts.append(count) or 1
else:  # this machine may have fewer cores than MIN_CORES
    autotune.compile_workers = lambda count: counts.append(count) or count
fail = sys.argv[2]
if fail == "128x128":
    state["fail"] = lambda module: module.BLOCK_M == 128 and module.BLOCK_N == 128
elif fail == "all":
    state["fail"] = lambda module: True

# patternc's kernel path on CPU tensors, autotuned as on a GPU (Triton itself is not interpreting)
rt.os = types.SimpleNamespace(environ=dict(os.environ, TRITON_INTERPRET="1"))
rt._autotunes = lambda interpret: True
q, k, v = (torch.randn(1, 2, 256, 128, dtype=torch.float16) for _ in range(3))
result = {}
for direction in ("forward", "backward"):
    pattern = patternc.compile(f"causal & window({64 if direction == 'forward' else 96})")
    events.clear()
    try:
        if direction == "forward":  # as training's forward calls it: the LSE written too
            rt._attention(q, k, v, pattern, None, True, None, False)
        else:
            out, lse = torch.randn_like(q), torch.randn(1, 2, 256)
            rt.backward(torch.randn_like(q), q, k, v, out, lse, None, pattern, None, None)
        cfg = autotune.lookup(rt._problem(q, k, pattern, rt._device_tag(q.device), None,
                                          "" if direction == "forward" else "backward|"))
        chosen = f"{cfg['block_m']}x{cfg['block_n']}s{cfg['num_stages']}/{cfg.get('memory', 'pointers')}"
    except RuntimeError as e:
        chosen = "error: " + str(e)
    result[direction] = {"chosen": chosen, "events": list(events), "most": state["most"], "counts": list(counts),
                         "timed_prepares": state["timed_prepares"]}
    counts.clear()
    state["most"] = 0
print(json.dumps(result))
"""


def _run(tmp_path, workers: int, fail: str = "") -> dict:
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env.update(PATTERNC_CACHE_DIR=str(tmp_path / "patternc"), TRITON_CACHE_DIR=str(tmp_path / "triton"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(workers), fail], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


FORWARD = {"128x128s3/tma", "64x64s3/tma", "128x64s3/pointers", "64x64s3/pointers"}  # D 128, Hopper
BACKWARD = {"64x64s3/tma", "64x64s4/tma", "64x64s3/pointers", "64x64s4/pointers"}


def _compiles(events):
    return [e for e in events if e[0] == "compile"]


def _check_each_compiled_once_then_reused(run, candidates, kernels, shared=()):
    """Each of `kernels` of each candidate compiled once, and its launcher built, in the pool,
    before the first timed launch, and every timed launch ran one of those compiles; `shared`: kernels whose source
    and options candidates share, compiled once for all of them (Triton's AsyncCompileMode keeps
    one compile per cache key)."""
    events = run["events"]
    compiles, launches = _compiles(events), [e for e in events if e[0] == "launch"]
    assert len({(e[1], e[2]) for e in compiles}) == len(compiles)  # none compiled twice
    for name in kernels:
        assert {e[1] for e in compiles if e[2] == name} == candidates, name
    assert {e[2] for e in compiles} == set(kernels) | set(shared)
    assert all(e[4].startswith("patternc-compile") for e in compiles), compiles  # in the pool's threads
    launchers = [e for e in events if e[0] == "launcher"]  # each compiled kernel's, after it on its thread
    assert sorted((e[1], e[2], e[4]) for e in launchers) == sorted((e[1], e[2], e[4]) for e in compiles)
    assert len(compiles) + len(launchers) == events.index(launches[0])  # all of them before the first timed launch
    assert run["most"] >= 2  # compiles overlapped
    # launches ran what was compiled, or found in Triton's disk cache: Triton 3.6 fills the kernel
    # cache of only the first of two kernels that share a compile (a shared kernel's second copy)
    cached = [e for e in events if e[0] == "cached"]
    assert {e[2] for e in cached} <= set(shared), cached
    assert launches and {e[3] for e in launches} <= {e[3] for e in compiles + cached}
    assert {e[1] for e in launches} == candidates  # and every candidate was timed
    assert launches[-1][1] == run["chosen"]  # the call's own launch, after the search: the winner, not compiled again


def test_candidates_compile_at_once_before_they_are_timed(tmp_path):
    """A first call: forward (as training calls it, writing the LSE), the 4 candidates' kernels
    (D 128, half precision, Hopper) compiled once each in the pool before the first timed
    launch, reused by every timed launch and by the call's own launch of the winner; backward:
    the 3 kernels of each of its 4 candidates likewise (the row statistics' kernel is the same
    at both pipeline depths). The choice is the fastest, as before."""
    runs = _run(tmp_path, 4)
    assert runs["forward"]["counts"] == [4] and runs["backward"]["counts"] == [4 * 3]  # compiles, threads at most
    assert runs["forward"]["timed_prepares"] == runs["backward"]["timed_prepares"] == 0  # only launches timed
    _check_each_compiled_once_then_reused(runs["forward"], FORWARD, ["attention_fwd"])
    _check_each_compiled_once_then_reused(runs["backward"], BACKWARD, ["attention_bwd_dkdv", "attention_bwd_dq"],
                                          ["attention_bwd_rows"])
    assert runs["forward"]["chosen"] == runs["backward"]["chosen"] == "64x64s3/pointers"


def test_one_worker_compiles_as_it_times(tmp_path):
    """With one worker (fewer cores than MIN_CORES) nothing is compiled ahead: each kernel is
    compiled once, on the caller's thread, by the launch that times it, as before."""
    runs = _run(tmp_path, 1)
    for direction, per_candidate in (("forward", 1), ("backward", 2)):
        compiles = _compiles(runs[direction]["events"])
        assert len(compiles) == len({(e[1], e[2]) for e in compiles}) >= len(FORWARD) * per_candidate
        assert all(e[4] == "MainThread" for e in compiles)
        assert runs[direction]["events"][0][0] == "compile" and runs[direction]["events"][1][0] == "launch"
        assert runs[direction]["chosen"] == "64x64s3/pointers"


def test_a_candidate_that_fails_to_compile_is_skipped(tmp_path):
    """A candidate whose compile fails in the warm-up fails again when timed, and is skipped as
    before; the others are compiled once each and timed."""
    run = _run(tmp_path, 4, "128x128")["forward"]
    compiles = _compiles(run["events"])
    failed = [e for e in compiles if e[1] == "128x128s3/tma"]
    assert [e[4].startswith("patternc-compile") for e in failed] == [True, False]  # in the pool, then when timed
    others = [e for e in compiles if e[1] != "128x128s3/tma"]
    assert len(others) == 3 and {e[1] for e in others} == FORWARD - {"128x128s3/tma"}
    assert "128x128s3/tma" not in {e[1] for e in run["events"] if e[0] == "launch"}
    assert run["chosen"] == "64x64s3/pointers"


def test_every_candidate_failing_is_an_error(tmp_path):
    runs = _run(tmp_path, 4, "all")
    for direction in ("forward", "backward"):
        assert runs[direction]["chosen"] == "error: no kernel configuration compiled for this problem"


def test_nothing_compiles_ahead_in_the_interpreter(monkeypatch):
    """Under TRITON_INTERPRET=1 there is no compile: the warm-up is not run (and patternc does
    not autotune there at all)."""
    from patternc.runtime import autotune

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(autotune, "compile_workers", lambda count: count)
    warmed = []
    autotune.compile_all(warmed.append, [{"block_m": 16}, {"block_m": 32}])
    assert warmed == []


@pytest.mark.parametrize("cores, count, workers", [(1, 4, 1), (2, 4, 1), (4, 4, 4), (16, 4, 4), (16, 12, 12),
                                                   (8, 12, 8)])
def test_compile_workers(monkeypatch, cores, count, workers):
    from patternc.runtime import autotune

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    assert autotune.compile_workers(count) == workers


def test_triton_hashes_its_key_while_the_first_call_prepares(monkeypatch):
    """The first GPU call starts Triton's own cache key (a hash of its 400-500 MB library) in a
    thread, once per process; preparing a kernel waits for it, before anything reaches Triton's JIT."""
    import time

    import torch
    import triton.runtime.cache

    import patternc

    rt = sys.modules["patternc.runtime.attention"]
    hashed = []

    def triton_key():
        time.sleep(0.3)
        hashed.append(threading.current_thread().name)

    monkeypatch.setattr(triton.runtime.cache, "triton_key", triton_key)
    monkeypatch.setattr(rt, "_triton_hash", None)
    start = time.perf_counter()
    rt._hash_triton()
    rt._hash_triton()
    assert time.perf_counter() - start < 0.2 and hashed == []  # started, not waited for
    cfg = {"block_m": 16, "block_n": 16, "num_warps": 4, "num_stages": 1}
    rt._prepare(patternc.compile("causal"), 1, 2, 32, 32, 16, cfg, "cpu", rt._device_tag(torch.device("cpu")))
    assert hashed == ["patternc-triton-key"]  # once, in its thread, done when the kernel was prepared
