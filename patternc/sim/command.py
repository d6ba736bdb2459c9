"""The `simulate` and `calibrate` subcommands (wired into `patternc.cli`).

    patternc simulate examples/llm.pat --pattern swa --seq-len 32768 --heads 16
    patternc simulate examples/llm.pat -p swa -n 32768 --sweep w=256..4096
    patternc simulate - -n 8192 --json < pattern.txt
    patternc calibrate                      # on a GPU: writes <cache>/profiles/<gpu>.json
    patternc calibrate --from-log LOG --base PROFILE -o OUT.json   # no GPU: refit to a run's printed times

Each is `add_*_arguments(parser)` + `run*(args) -> int`. They report their own errors
(a pattern error in the compiler format, exit 1; a usage error, exit 2) so they behave the
same whether `patternc.cli.main` or a test calls them. Importing this module is cheap.
"""
from __future__ import annotations

import argparse
import json
import sys

DTYPES = ("bf16", "fp16", "fp32", "bfloat16", "float16", "float32")


def _positive(text: str) -> int:
    from ..cli import _positive as positive  # the CLI's own check (cli imports this module first)

    return positive(text)


# --------------------------------------------------------------------------- simulate


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of `patternc simulate`."""
    p.add_argument("file", metavar="FILE", help="a .pat file, - for stdin, or a .py file of @patternc.jit predicates")
    p.add_argument("--pattern", "-p", metavar="P", help="which pattern of the file (needed if it has several)")
    p.add_argument("--seq-len", "-n", type=_positive, metavar="N", help="query length M (required unless swept)")
    p.add_argument("--kv-len", type=_positive, metavar="N", help="key length (default: the query length)")
    p.add_argument("--heads", type=_positive, metavar="H", help="number of heads (default: the pattern's)")
    p.add_argument("--head-dim", type=int, default=128, choices=(16, 32, 64, 128, 256), metavar="D",
                   help="head dimension (default 128)")
    p.add_argument("--dtype", choices=DTYPES, default="bf16", help="input dtype (default bf16)")
    p.add_argument("--batch", "-b", type=_positive, default=1, metavar="B", help="batch size (default 1)")
    p.add_argument("--device", default="h100", metavar="NAME|PATH",
                   help="device profile: a shipped name (h100), one `patternc calibrate` wrote, or a JSON path")
    p.add_argument("--config", metavar="MxN/wW/sS/MEM",
                   help="predict only this tile config, e.g. 64x64/w4/s3/tma (default: every autotuner candidate)")
    p.add_argument("--sweep", action="append", metavar="PARAM=A..B",
                   help="predict over a range of a pattern parameter (or seq_len): A..B doubles, A..B:S steps by S, "
                        "A,B,C lists; repeat for a grid. Ranks the points by predicted time")
    p.add_argument("--all-configs", action="store_true", help="with --sweep: list every (point, config) pair")
    p.add_argument("--closed-form", action="store_true",
                   help="also give the predicted time and speedup as formulas in N and the break-even length "
                        "(self-attention; where the tile counts are polynomial in N)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")


def run(args) -> int:
    """`patternc simulate`."""
    from ..errors import PatternError

    try:
        return _simulate(args)
    except PatternError as e:
        print(e.format(), file=sys.stderr)
        return 1
    except _Usage as e:
        print(f"patternc simulate: error: {e}", file=sys.stderr)
        return 2


class _Usage(Exception):
    pass


def _load(args):
    from .. import cli

    try:
        return cli.pick(cli.load_patterns(args.file), args.pattern, args.file)
    except cli.UsageError as e:
        raise _Usage(str(e)) from None


def _simulate(args) -> int:
    from .predict import simulate
    from .sweeps import LENGTH_NAMES, parse_sweep, sweep

    name, pattern = _load(args)
    sweeps = [parse_sweep(s) for s in args.sweep or []]
    if args.seq_len is None and not any(n in LENGTH_NAMES for n, _ in sweeps):
        raise _Usage("--seq-len is required (or sweep seq_len)")
    if args.all_configs and not sweeps:
        raise _Usage("--all-configs goes with --sweep")
    common = dict(heads=args.heads, head_dim=args.head_dim, dtype=args.dtype, batch=args.batch,
                  device=args.device, config=args.config)
    if sweeps:
        points = sweep(pattern, sweeps, args.seq_len, args.kv_len, **common)
        if args.json:
            print(json.dumps({"file": args.file, "pattern": name, "sweep": [f"{n}={v}" for n, v in sweeps],
                              "points": [pt.to_dict() for pt in points]}, indent=2))
        else:
            _print_sweep(name, pattern, points, args.all_configs)
        return 0
    prediction = simulate(pattern, args.seq_len, args.kv_len, **common)
    form = None
    if args.closed_form:
        from .formulas import closed_form

        form = closed_form(pattern, args.heads, args.head_dim, args.dtype, args.batch, args.device,
                           config=prediction.config, reference_length=args.seq_len)
    if args.json:
        extra = {"closed_form": None if form is None else form.to_dict()} if args.closed_form else {}
        print(json.dumps({"file": args.file, "name": name, **prediction.to_dict(), **extra}, indent=2))
        return 0
    _print_prediction(name, prediction)
    if args.closed_form:
        _print_closed_form(form)
    return 0


def _print_closed_form(form) -> None:
    if form is None:
        print("\nclosed form: none (the tile counts are not a polynomial in N here: a token grid, routed blocks, "
              "or log terms such as pow2's); sweep seq_len instead")
        return
    print(f"\nclosed form ({form.config}, M = N, N >= {form.valid_from} and a multiple of {form.step}; "
          "no last-wave imbalance):")
    print(f"  time(N)    = {form.time_us} us")
    print(f"  dense(N)   = {form.dense_us} us")
    print(f"  speedup(N) = {form.speedup}")
    if form.break_even is None:
        print("  break-even: none up to N = 2^24 (predicted slower than dense)")
    elif form.break_even == form.valid_from:
        print(f"  break-even: at or below N = {form.break_even} (faster than dense wherever the form holds)")
    else:
        print(f"  break-even: N = {form.break_even}")


def _x(value) -> str:
    if value is None:
        return "-"
    return "inf" if value == float("inf") else f"{value:.2f}x"


def _print_prediction(name, p) -> None:
    from tabulate import tabulate

    c = p.chosen
    lengths = f"M = N = {p.M}" if p.M == p.N else f"M = {p.M}, N = {p.N}"
    print(f"{name}: {p.pattern}")
    print(f"{lengths}, {p.heads} heads, head_dim {p.head_dim}, {p.dtype}, batch {p.batch}; device profile {p.device}\n")
    rows = [
        ["predicted", f"{p.ms:.4g} ms", f"{p.config_name}: {c.iteration} loop, {c.ctas_per_sm} CTA/SM, "
                                         f"{c.waves:.1f} waves, {c.utilization:.0%} busy, {p.bound}-bound"],
        ["dense (cuDNN-class)", f"{p.dense_ms:.4g} ms", f"speedup {_x(p.speedup_vs_dense)}"],
        ["FlexAttention", "-" if p.flex_ms is None else f"{p.flex_ms:.4g} ms", f"speedup {_x(p.speedup_vs_flex)}"],
        ["ideal (1/density)", _x(p.ideal_speedup), f"density {p.density:.4f} at {c.config['block_m']}x"
                                                   f"{c.config['block_n']} tiles"],
        ["worst-tile bound", _x(p.worst_tile_speedup), f"{c.key_tiles} key tiles / {c.worst_row_tiles} in the "
                                                        "longest row"],
        ["block-sparse", "yes" if p.block_sparse else "no", "no partial tiles: the predicate never runs"
         if p.block_sparse else f"{c.partial} partial of {c.full + c.partial} visited tiles"],
    ]
    if p.routed_ms:
        rows.append(["routed selection", f"{p.routed_ms:.4g} ms", "included above (modelled)"])
    print(tabulate(rows, tablefmt="plain"))
    print("\nconfigs, fastest first (ms; the time split: full tiles + partial tiles + overheads + tail = compute):")
    table = [[r.name, f"{r.ms:.4g}", _x(p.dense_ms / r.ms), r.iteration, r.ctas_per_sm, f"{r.waves:.1f}",
              f"{r.utilization:.0%}", f"{r.full_tiles_ms:.3g}", f"{r.partial_tiles_ms:.3g}", f"{r.overhead_ms:.3g}",
              f"{r.tail_ms:.3g}", f"{r.density:.4f}", r.partial, "yes" if r.block_sparse else ""]
             for r in p.configs]
    print(tabulate(table, headers=["config", "ms", "vs dense", "loop", "CTA/SM", "waves", "busy", "full", "partial",
                                   "overhead", "tail", "density", "partial tiles", "block-sparse"]))
    for note in p.notes:
        print(f"note: {note}")
    for warning in p.warnings:
        print(f"warning: {warning}")


def pattern_text(pattern) -> str:
    """The pattern as one line, its parameters unbound (`causal & window(w)`)."""
    body = pattern.body
    if isinstance(body, tuple):
        return "; ".join(str(s) for s in body)
    return str(body)


def _print_sweep(name, pattern, points, all_configs) -> None:
    from tabulate import tabulate

    first = points[0].prediction
    print(f"{name}: {first.pattern if len(points) == 1 else pattern_text(pattern)}")
    print(f"{first.heads} heads, head_dim {first.head_dim}, {first.dtype}, batch {first.batch}; device profile "
          f"{first.device}; {len(points)} points, fastest first\n")
    rows = []
    if all_configs:
        ranked = sorted(((pt, c) for pt in points for c in pt.prediction.configs), key=lambda pc: pc[1].ms)
        for rank, (pt, c) in enumerate(ranked, 1):
            flags = ", ".join(f for f in ("block-sparse" if c.block_sparse else "",
                                          "slower than dense" if c.ms > pt.prediction.dense_ms else "") if f)
            rows.append([rank, pt.label(), c.name, f"{c.ms:.4g}", _x(pt.prediction.dense_ms / c.ms),
                         f"{c.density:.4f}", c.partial, flags])
        print(tabulate(rows, headers=["rank", "point", "config", "ms", "vs dense", "density", "partial tiles",
                                      "flags"]))
    else:
        for rank, pt in enumerate(points, 1):
            p = pt.prediction
            sparse = [c.name for c in p.configs if c.block_sparse]
            flags = ", ".join(f for f in ("slower than dense" if p.slower_than_dense else "",) if f)
            rows.append([rank, pt.label(), f"{p.ms:.4g}", p.config_name, _x(p.speedup_vs_dense),
                         _x(p.speedup_vs_flex), _x(p.ideal_speedup), f"{p.density:.4f}",
                         "all" if len(sparse) == len(p.configs) else ", ".join(sparse) or "-", flags])
        print(tabulate(rows, headers=["rank", "point", "ms", "config", "vs dense", "vs flex", "ideal", "density",
                                      "block-sparse configs", "flags"]))
    slow = [pt for pt in points if pt.prediction.slower_than_dense]
    for pt in slow:
        print(f"warning: {pt.label()}: {pt.prediction.warnings[0]}")


# --------------------------------------------------------------------------- calibrate


def add_calibrate_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of `patternc calibrate`."""
    p.add_argument("--name", metavar="NAME", help="profile name (default: from the GPU's name, e.g. h100-80gb-hbm3)")
    p.add_argument("--output", "-o", metavar="PATH",
                   help="where to write the profile JSON (default: <patternc cache>/profiles/NAME.json, which "
                        "`simulate --device NAME` finds)")
    p.add_argument("--seq-len", "-n", type=_positive, metavar="N",
                   help="sequence length of the microbenchmarks (default 8192; with --from-log: read from the log)")
    p.add_argument("--heads", type=_positive, default=16, metavar="H", help="heads (default 16)")
    p.add_argument("--head-dim", type=int, default=128, choices=(16, 32, 64, 128, 256), metavar="D",
                   help="head dimension the profile is measured at (default 128)")
    p.add_argument("--dtype", choices=DTYPES, default="bf16", help="dtype the profile is measured at (default bf16)")
    p.add_argument("--flex", action="store_true",
                   help="also time FlexAttention (torch.compile: adds a minute); else its costs are scaled from h100")
    p.add_argument("--from-log", metavar="LOG",
                   help="no GPU: refit a profile to the times an earlier calibrate run printed (LOG: its output), "
                        "e.g. after the model changed; needs --base")
    p.add_argument("--base", metavar="NAME|PATH",
                   help="with --from-log: the profile that run wrote (device constants, capability, environment)")
    p.add_argument("--json", action="store_true", help="print the profile as JSON")


def run_calibrate(args) -> int:
    """`patternc calibrate`."""
    from ..errors import PatternError

    try:
        from .calibrate import calibrate, refit_from_log, require_gpu
        from .profile import user_profile_dir

        if args.from_log:
            if not args.base:
                print("patternc calibrate: error: --from-log needs --base (the profile of that GPU)", file=sys.stderr)
                return 2
            profile, fits = refit_from_log(args.from_log, args.base, args.name, args.seq_len, args.heads,
                                           args.head_dim, args.dtype)
        else:
            require_gpu()  # before anything slow, so a CPU machine gets the answer at once
            say = (lambda *a, **k: None) if args.json else (lambda text: print(text, flush=True))
            profile, fits = calibrate(args.name, args.seq_len or 8192, args.heads, args.head_dim, args.dtype,
                                      args.flex, progress=say)
        from pathlib import Path

        path = Path(args.output) if args.output else user_profile_dir() / f"{profile.name}.json"
        profile.write(path)
    except PatternError as e:
        print(e.format(), file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"path": str(path), **profile.to_dict()}, indent=2))
        return 0
    print(f"\nwrote {path}: {profile.device}, {profile.sm_count} SMs; kernel fit rms error "
          f"{fits['kernel'].rms:.1%} over {len(fits['kernel'].errors)} measurements")
    print(f"use it: patternc simulate FILE --seq-len N --device {profile.name}")
    return 0
