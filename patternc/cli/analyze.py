"""`patternc analyze FILE`: visible keys per query, density and cost as functions of N."""
from __future__ import annotations

import json

from .common import chosen, command, file_argument, fit_table, json_argument, pattern_argument, progress, wide_argument


def _arguments(p):
    file_argument(p)
    pattern_argument(p, "analyze only this pattern (default: all of the file)")
    wide_argument(p)
    json_argument(p)
    p.add_argument("--predict", metavar="DEVICE", nargs="?", const="h100",
                   help="also the simulator's predicted speedup over dense as a function of N and the "
                        "break-even length on DEVICE (default h100; 16 heads, head_dim 128, bf16)")


@command("analyze", "visible keys per query, density and cost as functions of N (self-attention)", _arguments)
def cmd_analyze(args) -> int:
    from ..analysis import analyze

    patterns = chosen(args)
    results = [(name, analyze(p)) for name, p in progress(patterns, "analyze", unit="pattern")]
    predictions = {}
    if args.predict:
        from ..sim.formulas import closed_form

        for name, p in progress(patterns, "predict", unit="pattern"):
            predictions[name] = closed_form(p, heads=p.default_heads if isinstance(p.body, tuple) else 16,
                                            device=args.predict)
    if args.json:
        out = [{"pattern": name, "sections": [a.to_dict() for a in sections],
                **({"prediction": predictions[name].to_dict() if predictions[name] else None} if args.predict else {})}
               for name, sections in results]
        print(json.dumps({"file": args.file, "patterns": out}, indent=2))
        return 0
    rows = []
    for name, sections in results:
        for a in sections:
            heads = str(a.heads[0]) if a.heads[0] == a.heads[1] else f"{a.heads[0]}..{a.heads[1]}"
            empty = "no" if not a.empty_rows else \
                "yes" + (f" (N={a.empty_example[0]}, q={a.empty_example[2]})" if a.empty_example else "")
            keys = _short(a.count)
            if a.count is None and a.samples:  # no formula: say what was measured
                n = max(a.samples)
                keys = f"~{a.samples[n]:.5g} at N={n}"
            rows.append([name, heads, keys, _short(a.density_limit), a.cost, empty,
                         a.basis.split(";")[0]])
    print(fit_table(rows, ["pattern", "heads", "keys/query", "density ~", "cost", "empty rows", "result"],
                    wrap=(0, 2, 5, 6), wide=args.wide))
    print("\nkeys/query: mean visible keys per query at length N (M = N); density ~: leading term as N grows")
    if args.predict:
        rows = [[name, "no closed form (grid, routed or not polynomial)"] if f is None else
                [name, _short(f.speedup), f"N>={f.valid_from}, N%{f.step}==0",
                 "none up to 2^24" if f.break_even is None else f.break_even, f.config]
                for name, f in predictions.items()]
        print(f"\npredicted speedup over dense on {args.predict} (simulator, 16 heads, head_dim 128, bf16):")
        print(fit_table(rows, ["pattern", "speedup(N)", "valid for", "break-even", "config"], wrap=(0, 1, 2),
                        wide=args.wide))
    return 0


def _short(expr) -> str:
    """For people: log2(N) instead of log(N)/log(2), ^ for powers."""
    if expr is None:
        return "?"
    import sympy as sp

    from ..analysis import N

    expr = sp.expand(expr.subs(sp.log(N), sp.log(2) * sp.Function("log2")(N)))
    return str(expr).replace("**", "^")
