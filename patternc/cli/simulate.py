"""`patternc simulate FILE -n N`: a pattern's predicted kernel time and speedups, or a ranked sweep.

    patternc simulate examples/llm.pat --pattern swa --seq-len 32768 --heads 16
    patternc simulate examples/llm.pat -n 32768            # every pattern of the file, one row each
    patternc simulate examples/llm.pat -p swa -n 32768 --sweep w=256..4096
    patternc simulate - -n 8192 --json < pattern.txt
"""
from __future__ import annotations

import json
import sys

from ..errors import PatternError
from .common import (UsageError, command, device_argument, dtype_argument, file_argument, fit_table,
                     head_dim_argument, json_argument, lengths, lengths_arguments, lengths_text, load_patterns,
                     pattern_argument, pick, plural, positive, progress, wide_argument)


def _arguments(p):
    file_argument(p)
    pattern_argument(p, "which pattern of the file (default: every pattern, one row each)")
    lengths_arguments(p, "query length M (needed unless swept or the pattern's grid fixes it)")
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
    wide_argument(p)
    json_argument(p, "print JSON instead of tables")


@command("simulate", "predict a pattern's kernel time and speedup over dense and FlexAttention "
         "(--sweep ranks values and tile configs)", _arguments)
def cmd_simulate(args) -> int:
    from .. import simulate
    from ..sim.sweeps import LENGTH_NAMES, parse_sweep, sweep

    patterns = load_patterns(args.file)
    if args.pattern is None and len(patterns) > 1:
        if args.sweep or args.closed_form or args.backward or args.all_configs:
            raise UsageError(f"{args.file} defines {len(patterns)} patterns ({', '.join(patterns)}); "
                             "--sweep, --closed-form and --backward take one: choose it with --pattern")
        return _every_pattern(patterns, args)
    name, pattern = pick(patterns, args.pattern, args.file)
    sweeps = [parse_sweep(s) for s in args.sweep or []]
    if args.all_configs and not sweeps:
        raise UsageError("--all-configs goes with --sweep")
    if args.backward and (sweeps or args.closed_form):
        raise UsageError("--backward predicts one point: it doesn't go with --sweep or --closed-form")
    common = dict(heads=args.heads, head_dim=args.head_dim, dtype=args.dtype, batch=args.batch,
                  device=args.device, config=args.config)
    if sweeps:
        M, N = (args.seq_len, args.kv_len) if any(n in LENGTH_NAMES for n, _ in sweeps) else lengths(args, name, pattern)
        points = sweep(pattern, sweeps, M, N, **common)
        if args.json:
            print(json.dumps({"file": args.file, "pattern": name, "sweep": [f"{n}={v}" for n, v in sweeps],
                              "points": [pt.to_dict() for pt in points]}, indent=2))
        else:
            _print_sweep(name, pattern, points, args.all_configs, args.wide)
        return 0
    M, N = lengths(args, name, pattern)
    if args.backward:
        return _training(name, pattern, M, N, args, common)
    prediction = simulate(pattern, M, N, **common)
    form = None
    if args.closed_form:
        from ..sim.formulas import closed_form

        form = closed_form(pattern, args.heads, args.head_dim, args.dtype, args.batch, args.device,
                           config=prediction.config, reference_length=M)
    if args.json:
        extra = {"closed_form": None if form is None else form.to_dict()} if args.closed_form else {}
        print(json.dumps({"file": args.file, "name": name, **prediction.to_dict(), **extra}, indent=2))
        return 0
    _print_prediction(name, prediction, args.wide)
    if args.closed_form:
        _print_closed_form(form)
    return 0


def _every_pattern(patterns, args) -> int:
    """One prediction per pattern of the file (each at its fastest config), a row each; a pattern
    that fails is reported on stderr and the others go on (exit status 1)."""
    from .. import simulate

    status, found = 0, []
    for name, pattern in progress(patterns.items(), "patterns", total=len(patterns), unit="pattern"):
        try:
            M, N = lengths(args, name, pattern)
            found.append((name, simulate(pattern, M, N, heads=args.heads, head_dim=args.head_dim,
                                         dtype=args.dtype, batch=args.batch, device=args.device,
                                         config=args.config)))
        except PatternError as e:
            print(e.format(), file=sys.stderr)
            status = 1
    if args.json:
        print(json.dumps({"file": args.file, "patterns": [{"name": name, **p.to_dict()} for name, p in found]},
                         indent=2))
        return status
    if not found:
        return status
    first = found[0][1]
    shapes = {(p.M, p.N) for _, p in found}
    same = len(shapes) == 1
    print(f"{args.file}: {len(found)} of {len(patterns)} patterns"
          + (f", {lengths_text(first.M, first.N)}" if same else "")
          + f"; head_dim {first.head_dim}, {first.dtype}, batch {first.batch}; profile {first.device}\n")
    routed = any(p.routed_ms for _, p in found)
    rows = [[name] + ([] if same else [p.M if p.M == p.N else f"{p.M} / {p.N}"])
            + [p.heads, f"{p.ms:.4g}", p.config_name, _x(p.speedup_vs_dense), _x(p.speedup_vs_flex)]
            + [_x(p.ideal_speedup)] * args.wide + [f"{p.density:.4f}"]
            + ([f"{p.routed_ms:.3g}" if p.routed_ms else "-"] if routed else []) for name, p in found]
    headers = (["pattern"] + ([] if same else ["M / N" if any(M != N for M, N in shapes) else "M = N"])
               + ["heads", "ms", "config", "vs dense", "vs flex"] + ["ideal"] * args.wide + ["density"]
               + ["selection"] * routed)
    print(fit_table(rows, headers, wrap=(0,), wide=args.wide))
    if routed:
        print("\nms: predicted time, routed patterns' block selection (selection, ms) included")
    slow = [name for name, p in found if p.slower_than_dense]
    if slow:
        print(f"warning: predicted slower than dense (below break-even): {', '.join(slow)}")
    return status


def _training(name, pattern, M, N, args, common) -> int:
    from ..sim import simulate_training

    t = simulate_training(pattern, M, N, **common)
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


# the config table's columns: (header, shown by default, value of a config r of prediction p)
CONFIG_COLUMNS = (
    ("config", True, lambda p, r: r.name),
    ("ms", True, lambda p, r: f"{r.ms + p.routed_ms:.4g}"),
    ("vs dense", True, lambda p, r: _x(p.dense_ms / (r.ms + p.routed_ms))),
    ("loop", True, lambda p, r: r.iteration),
    ("CTA/SM", False, lambda p, r: r.ctas_per_sm),
    ("waves", True, lambda p, r: f"{r.waves:.1f}"),
    ("busy", True, lambda p, r: f"{r.utilization:.0%}"),
    ("full", False, lambda p, r: f"{r.full_tiles_ms:.3g}"),
    ("partial", False, lambda p, r: f"{r.partial_tiles_ms:.3g}"),
    ("overhead", False, lambda p, r: f"{r.overhead_ms:.3g}"),
    ("tail", False, lambda p, r: f"{r.tail_ms:.3g}"),
    ("selection", True, lambda p, r: f"{p.routed_ms:.3g}"),  # routed patterns only
    ("density", True, lambda p, r: f"{r.density:.4f}"),
    ("partial tiles", True, lambda p, r: r.partial),
    ("block-sparse", False, lambda p, r: "yes" if r.block_sparse else ""),
)


def _print_prediction(name, p, wide=False) -> None:
    c = p.chosen
    print(f"{name}: {p.pattern}")
    print(f"{lengths_text(p.M, p.N)}, {plural(p.heads, 'head')}, head_dim {p.head_dim}, {p.dtype}, batch {p.batch}; "
          f"device profile {p.device}\n")
    selection = " + selection" if p.routed_ms else ""
    rows = [
        ["predicted", f"{p.ms:.4g} ms", f"{p.config_name}{selection}: {c.iteration} loop, {c.ctas_per_sm} CTA/SM, "
                                         f"{c.waves:.1f} waves, {c.utilization:.0%} busy, {p.bound}-bound"],
        ["dense (cuDNN-class)", f"{p.dense_ms:.4g} ms", f"speedup {_x(p.speedup_vs_dense)}"],
        ["FlexAttention", "-" if p.flex_ms is None else f"{p.flex_ms:.4g} ms", f"speedup {_x(p.speedup_vs_flex)}"
                                                                              + (" (selection included)"
                                                                                 if p.routed_ms else "")],
        ["ideal (1/density)", _x(p.ideal_speedup), f"density {p.density:.4f} at {c.config['block_m']}x"
                                                   f"{c.config['block_n']} tiles"],
        ["worst-tile bound", _x(p.worst_tile_speedup), f"{c.key_tiles} key tiles / {c.worst_row_tiles} in the "
                                                        "longest row"],
        ["block-sparse", "yes" if p.block_sparse else "no", "no partial tiles: the predicate never runs"
         if p.block_sparse else f"{c.partial} partial of {c.full + c.partial} visited tiles"],
    ]
    if p.routed_ms:
        rows.append(["routed selection", f"{p.routed_ms:.4g} ms", "pooling, scoring and choosing the blocks "
                                                                  "(modelled): included in every time"])
    print(fit_table(rows, wrap=(2,), wide=wide, tablefmt="plain"))
    columns = [(head, value) for head, narrow, value in CONFIG_COLUMNS
               if (wide or narrow) and (head != "selection" or p.routed_ms)]
    split = "; the time split: full tiles + partial tiles + overheads + tail = compute" if wide else \
        "; --wide for the time split"
    print(f"\nconfigs, fastest first (ms{', selection included' if p.routed_ms else ''}{split}):")
    table = [[value(p, r) for _, value in columns] for r in p.configs]
    print(fit_table(table, [head for head, _ in columns], wide=wide))
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


def _print_sweep(name, pattern, points, all_configs, wide=False) -> None:
    first = points[0].prediction
    print(f"{name}: {first.pattern if len(points) == 1 else _body_text(pattern)}")
    print(f"{first.heads} heads, head_dim {first.head_dim}, {first.dtype}, batch {first.batch}; device profile "
          f"{first.device}; {len(points)} points, fastest first\n")
    rows = []
    if all_configs:
        ranked = sorted(((pt, c) for pt in points for c in pt.prediction.configs), key=lambda pc: pc[1].ms + pc[0].prediction.routed_ms)
        for rank, (pt, c) in enumerate(ranked, 1):
            ms = c.ms + pt.prediction.routed_ms
            flags = ", ".join(f for f in ("block-sparse" if c.block_sparse else "",
                                          "slower than dense" if ms > pt.prediction.dense_ms else "") if f)
            rows.append([rank, pt.label(), c.name, f"{ms:.4g}", _x(pt.prediction.dense_ms / ms),
                         f"{c.density:.4f}", c.partial, flags])
        print(fit_table(rows, ["rank", "point", "config", "ms", "vs dense", "density", "partial tiles", "flags"],
                        wrap=(1, 7), wide=wide))
    else:
        for rank, pt in enumerate(points, 1):
            p = pt.prediction
            sparse = [c.name for c in p.configs if c.block_sparse]
            flags = ", ".join(f for f in ("slower than dense" if p.slower_than_dense else "",) if f)
            rows.append([rank, pt.label(), f"{p.ms:.4g}", p.config_name, _x(p.speedup_vs_dense),
                         _x(p.speedup_vs_flex), _x(p.ideal_speedup), f"{p.density:.4f}",
                         "all" if len(sparse) == len(p.configs) else ", ".join(sparse) or "-", flags])
        print(fit_table(rows, ["rank", "point", "ms", "config", "vs dense", "vs flex", "ideal", "density",
                               "block-sparse configs", "flags"], wrap=(1, 8, 9), wide=wide))
    for pt in points:
        if pt.prediction.slower_than_dense:
            print(f"warning: {pt.label()}: {pt.prediction.warnings[0]}")
