"""`patternc compile FILE -n N -o DIR`: standalone modules (torch + triton only), one per pattern."""
from __future__ import annotations

import argparse
import sys

from ..errors import PatternError
from ..runtime.attention import DTYPES, SUPPORTED_HEAD_DIMS
from .common import (chosen, command, dtype_argument, file_argument, head_dim_argument, lengths, lengths_arguments,
                     order_argument, pattern_argument)


def _config(text: str) -> dict:
    from ..aot import parse_config

    try:
        return parse_config(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _arguments(p):
    file_argument(p)
    pattern_argument(p, "compile only this pattern (default: all of the file)")
    lengths_arguments(p)
    head_dim_argument(p, f"head dimension, one of {', '.join(map(str, SUPPORTED_HEAD_DIMS))} (default 128)")
    dtype_argument(p, tuple(DTYPES))
    p.add_argument("--config", type=_config, metavar="MxN/wW/sS",
                   help="tile shape, warps and stages, e.g. 128x64/w8/s3 (default: the GPU default for D, dtype)")
    p.add_argument("--memory", choices=("pointers", "tma"), default="pointers",
                   help="pointers (any GPU, the interpreter) or tma (Hopper tensor descriptors)")
    order_argument(p)
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="directory to write <pattern>.py and .md into")


@command("compile", "write standalone modules (torch + triton only) running each pattern for one problem shape",
         _arguments)
def cmd_compile(args) -> int:
    from ..aot import build_module, config_text

    patterns = chosen(args)
    config = dict(args.config or {}, memory=args.memory, order=args.order)
    sizes = {}
    for name, pattern in patterns:  # a missing --seq-len is a usage error before anything is written
        try:
            sizes[name] = lengths(args, name, pattern)
        except PatternError as e:
            sizes[name] = e
    status, written = 0, 0
    for name, pattern in patterns:
        try:
            if isinstance(sizes[name], PatternError):
                raise sizes[name]
            M, N = sizes[name]
            built = build_module(pattern, M, N, args.heads, args.head_dim, args.dtype, config, name)
            path = built.write(args.output)
        except PatternError as e:
            if len(patterns) == 1:
                raise
            print(e.format(), file=sys.stderr)  # report it and go on with the file's other patterns
            status = 1
            continue
        written += 1
        layout = built.layout
        speedup = "inf" if layout.density == 0 else f"{layout.ideal_speedup:.2f}x"
        most = " at most (routed: every key block chosen)" if built.routed else ""
        print(f"wrote {path} ({built.name}.md): density {layout.density:.4f}{most}, ideal speedup {speedup}, "
              f"{config_text(built.config)} {args.memory}")
    if not written and status == 0:
        print(f"patternc: error: {args.file} has no pattern that can be compiled yet", file=sys.stderr)
        return 1
    return status
