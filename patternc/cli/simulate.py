"""`patternc simulate FILE -n N`: a pattern's predicted kernel time and speedups, or a ranked sweep.

    patternc simulate examples/llm.pat --pattern swa --seq-len 32768 --heads 16
    patternc simulate examples/llm.pat -p swa -n 32768 --sweep w=256..4096
    patternc simulate - -n 8192 --json < pattern.txt
"""
from __future__ import annotations

import json

from .common import (UsageError, command, device_argument, dtype_argument, file_argument, head_dim_argument,
                     json_argument, lengths_arguments, lengths_text, load_patterns, pattern_argument, pick, positive)


def _arguments(p):
    file_argument(p)
    pattern_argument(p)
    lengths_arguments(p, "query length M (required unless swept)", required=False)
    head_dim_argument(p)
    dtype_argument(p)
    p.add_argument("--batch", "-b", type=positive, default=1, metavar="B", help="batch size (default 1)")
    device_argument(p)
    p.add_argument("--config", metavar="MxN/wW/sS/MEM",
                   help="predict only this tile config, e.g. 64x64/w4/s3/tma (default: every autotuner candidate)")
    p.add_argument("--sweep", action="append", metavar="PARAM=A..B",
                   help="predict over a range of a pattern parameter (or seq_len): A..B doubles, A..B:S steps by S, "
                        "A,B,C lists; repeat for a grid. Ranks the points by predicted time")
    p.add_argument("--all-configs", action="store_true", help="with --sweep: list every (point, config) pair")
    p.add_argument("--closed-form", action="store_true",
                   help="also give the predicted time and speedup as formulas in N and the break-even length "
                        "(self-attention; where the tile counts are polynomial in N)")
    p.add_argument("--backward", action="store_true",
                   help="predict a training step's attention: forward + backward at the training tiles")
    json_argument(p, "print JSON instead of tables")


@command("simulate", "predict a pattern's kernel time and speedup over dense and FlexAttention "
         "(--sweep ranks values and tile configs)", _arguments)
def cmd_simulate(args) -> int:
    from .. import simulate
    from ..sim.sweeps import LENGTH_NAMES, parse_sweep, sweep

    name, pattern = pick(load_patterns(args.file), args.pattern, args.file)
    sweeps = [parse_sweep(s) for s in args.sweep or []]
    if args.seq_len is None and not any(n in LENGTH_NAMES for n, _ in sweeps):
        raise UsageError("--seq-len is required (or sweep seq_len)")
    if args.all_configs and not sweeps:
        raise UsageError("--all-configs goes with --sweep")
    if args.backward and (sweeps or args.closed_form):
        raise UsageError("--backward predicts one point: it doesn't go with --sweep or --closed-form")
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
    if args.backward:
        return _training(name, pattern, args, common)
    prediction = simulate(pattern, args.seq_len, args.kv_len, **common)
    form = None
    if args.closed_form:
        from ..sim.formulas import closed_form

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


def _training(name, pattern, args, common) -> int:
    from ..sim import simulate_training

    t = simulate_training(pattern, args.seq_len, args.kv_len, **common)
    if args.json:
        print(json.dumps({"file": args.file, "name": name, **t.to_dict()}, indent=2))
        return 0
    print(f"{name}: forward + backward {t.ms:.4g} ms (forward {t.forward.ms:.4g} ms, backward {t.backward_ms:.4g} ms) "
          f"at {t.forward.config_name} on {t.forward.device}")
    for note in t.notes:
        print(f"note: {note}")
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
    print(f"{name}: {p.pattern}")
    print(f"{lengths_text(p.M, p.N)}, {p.heads} heads, head_dim {p.head_dim}, {p.dtype}, batch {p.batch}; "
          f"device profile {p.device}\n")
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


def _body_text(pattern) -> str:
    """The pattern as one line, its parameters unbound (`causal & window(w)`): a sweep's points bind them."""
    body = pattern.body
    if isinstance(body, tuple):
        return "; ".join(str(s) for s in body)
    return str(body)


def _print_sweep(name, pattern, points, all_configs) -> None:
    from tabulate import tabulate

    first = points[0].prediction
    print(f"{name}: {first.pattern if len(points) == 1 else _body_text(pattern)}")
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
    for pt in points:
        if pt.prediction.slower_than_dense:
            print(f"warning: {pt.label()}: {pt.prediction.warnings[0]}")
