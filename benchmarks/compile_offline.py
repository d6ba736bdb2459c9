"""Compile generated kernels for a GPU without one: the forward and backward kernels of suite
patterns, laid out with `order="auto"`, through `triton.compile(ASTSource(...), target=GPUTarget(
"cuda", 90, 32))` (the local triton and its ptxas; nothing runs). Catches what the interpreter
doesn't: types, layouts and shared memory the Hopper backend would refuse.

    python benchmarks/compile_offline.py --patterns natten2d natten2d_dil gna3d
    python benchmarks/compile_offline.py --memory tma --configs 64x64/w4/s3

Prints, per pattern, tile config and kernel: ok and its shared memory, or the error. With
`--memory tma`, kernels whose token order can't use TMA descriptors are compiled with pointers
(as the runtime does), and said.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from suite import SUITE  # noqa: E402

import patternc  # noqa: E402
from patternc.codegen import make_spec, module_source  # noqa: E402
from patternc.codegen.forward import emitters  # noqa: E402

TENSORS = ("Q", "K", "V", "Out", "DO", "DQ", "DK", "DV")  # the dtype's pointers
QUERY_DESCRIPTORS = ("desc_q", "desc_o", "desc_do", "desc_dq")  # TMA: [.., BLOCK_M, ..] boxes, else BLOCK_N
STATISTICS = ("Lse", "Delta", "Lse2", "DLse")  # float32 pointers
SCALES = ("qk_scale", "sm_scale")
KERNELS = {"attention_fwd": {"WRITE_LSE": True}, "attention_bwd_dkdv": {}, "attention_bwd_dq": {}}


def signature(fn, constants: dict, dtype: str, boxes: dict) -> dict:
    """Triton types of a generated kernel's parameters: tensors (or their TMA descriptors, whose
    `boxes` per side are given), statistics, scales, int32 tables (the layout's) and int32
    scalars (strides, lengths)."""
    tables = ("num_blocks", "indices", "row_order", "runs")
    out = {}
    for name in fn.arg_names:
        out[name] = ("constexpr" if name in constants else f"*{dtype}" if name in TENSORS else
                     f"tensordesc<{dtype}[{boxes['m' if name in QUERY_DESCRIPTORS else 'n']}]>"
                     if name.startswith("desc_") else
                     "*fp32" if name in STATISTICS else "fp32" if name in SCALES else
                     "*i32" if any(t in name for t in tables) and not name.startswith("stride") else "i32")
    return out


def compile_pattern(name: str, block_m: int, block_n: int, warps: int, stages: int, head_dim: int, arch: int,
                    tma: bool, workdir: Path) -> None:
    import triton
    from triton.backends.compiler import GPUTarget

    text, (S, *_) = SUITE[name]
    pattern = patternc.compile(text)
    layout = pattern.layout(S, block_m=block_m, block_n=block_n)
    order = {} if layout.permutation is None else layout.permutation.kernel_order
    tma = tma and getattr(layout.permutation, "tma", True)
    spec = make_spec(pattern, heads=16, M=S, N=S, head_dim=head_dim, block_m=block_m, block_n=block_n,
                     num_warps=warps, num_stages=stages, tma=tma, **order)
    sizes = {"BLOCK_M": block_m, "BLOCK_N": block_n, "D": head_dim}  # the names in a descriptor's block
    order_emitter = emitters(spec)[2]
    boxes = {side: ", ".join(str(sizes.get(x) or int(x)) for x in order_emitter.box(f"BLOCK_{side.upper()}", "D")
                             .split(", ")) for side in "mn"} if tma else {}
    path = workdir / f"{name}_{block_m}x{block_n}.py"
    path.write_text(module_source(spec, backward=True))
    loader = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    base = {"HEAD_DIM": head_dim, "BLOCK_M": block_m, "BLOCK_N": block_n, "EVEN_M": S % block_m == 0,
            "EVEN_N": S % block_n == 0, "INPUT_PRECISION": "tf32"}
    order_name = ("natural" if layout.permutation is None else layout.permutation.name) + (", tma" if tma else "")
    for kernel, extra in KERNELS.items():
        fn = getattr(module, kernel)
        constants = {k: v for k, v in dict(base, **extra).items() if k in fn.arg_names}
        source = triton.compiler.ASTSource(fn=fn, signature=signature(fn, constants, "bf16", boxes),
                                           constexprs={(fn.arg_names.index(k),): v for k, v in constants.items()})
        depth = stages if kernel == "attention_fwd" else max(1, stages - 1)  # NUM_STAGES_BWD
        t0 = time.perf_counter()
        try:
            compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32),
                                      options={"num_warps": warps, "num_stages": depth})
            result = f"ok, shared memory {compiled.metadata.shared} B"
        except Exception as e:  # noqa: BLE001 - reported, the next kernel is tried
            result = f"FAILED {type(e).__name__}: {str(e)[:800]}"
        print(f"{name} ({order_name}) {block_m}x{block_n}/w{warps}/s{stages} {kernel}: {result} "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patterns", nargs="+", default=["natten2d", "natten2d_dil", "gna3d"])
    ap.add_argument("--configs", nargs="+", default=["128x64/w8/s3", "64x64/w4/s3"])
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 (Hopper), 80 (Ampere)")
    ap.add_argument("--memory", choices=("pointers", "tma"), default="pointers")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.patterns:
            for config in args.configs:
                tiles, warps, stages = config.split("/")
                block_m, block_n = map(int, tiles.split("x"))
                compile_pattern(name, block_m, block_n, int(warps[1:]), int(stages[1:]), args.head_dim, args.arch,
                                args.memory == "tma", Path(workdir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
