"""`patternc layout FILE -n N`: the tiles a kernel visits, as tables and a block map."""
from __future__ import annotations

import json

from .common import (MAX_SHOW_PAIRS, block_argument, command, file_argument, head_argument, json_argument,
                     lengths_arguments, lengths_text, order_argument, pattern_argument, plural, png_argument, problem,
                     write_png)

EMPTY_ROWS_SHOWN = 8


def _arguments(p):
    file_argument(p)
    pattern_argument(p)
    lengths_arguments(p)
    block_argument(p)
    order_argument(p)
    head_argument(p, "which head's block map to draw (default 0)")
    json_argument(p, "print JSON instead of tables and a map")
    png_argument(p, "also write the block map as an image (needs matplotlib: pip install 'patternc[plot]')")


@command("layout", "the tiles a kernel visits: density, full/partial/empty counts, empty rows and the block map",
         _arguments)
def cmd_layout(args) -> int:
    from ..analysis import routed_data
    from ..layout.render import MAP_CELLS, block_png, block_text

    name, pattern, M, N, heads = problem(args)
    bm, bn = args.block
    data = routed_data(pattern, M, N, heads) or {}
    layout = pattern.layout(M, N, heads=heads, block_m=bm, block_n=bn, order=args.order, **data)
    empty = _empty_rows(layout, pattern)
    blocks = layout.block_map()
    H, Mt, Nt = layout.shape
    perm = layout.permutation
    if args.json:
        out = {"file": args.file, "pattern": name, "text": str(pattern), "M": M, "N": N, "heads": H,
               "block": [bm, bn], "tiles_per_head": [Mt, Nt], "routed": pattern.is_routed,
               "residue": {"modulus": perm.modulus, "class_len": perm.class_len} if hasattr(perm, "modulus") else None,
               "order": "natural" if perm is None else perm.describe(),
               "natural_order_reason": _natural_reason(pattern, layout),
               "counts": layout.counts, "density": layout.density,
               "ideal_speedup": None if layout.density == 0 else layout.ideal_speedup,
               "partial_share": layout.summary()["partial_share"], "refined_tiles": layout.refined_tiles,
               "empty_rows": None if empty is None else
               [{"head": h, "count": len(rows), "first": rows[:EMPTY_ROWS_SHOWN].tolist()}
                for h, rows in enumerate(empty)]}
        if Mt <= MAP_CELLS and Nt <= MAP_CELLS:  # small: the whole map, one list of rows per head
            out["block_map"] = [block_text(blocks[h]) for h in range(H)]
        print(json.dumps(out, indent=2))
        return 0
    _print_layout(name, pattern, layout, empty, blocks[args.head], args.head)
    if args.png:
        write_png(block_png, args.png, blocks[args.head], layout,
                  f"{name}: {lengths_text(M, N)}, {bm}x{bn} tiles, head {args.head} of {H}")
    return 0


def _empty_rows(layout, pattern):
    """Per head, the query rows that see no key; None where that is too costly or data-dependent."""
    visited = layout.counts["full"] + layout.counts["partial"]
    if pattern.is_routed or visited * layout.block_m * layout.block_n > MAX_SHOW_PAIRS:
        return None
    return layout.empty_rows


def _print_layout(name, pattern, layout, empty, blocks, head):
    from tabulate import tabulate

    from ..layout.render import block_text, downsample, map_cell

    H, Mt, Nt = layout.shape
    c = layout.counts
    perm = layout.permutation
    sections = pattern.sections(H)
    print(f"{name}: {sections[0].expr}" if len(sections) == 1 else
          f"{name}:\n" + "\n".join(f"    {s}" for s in sections))
    note = " (routed: blocks chosen for random q, k)" if pattern.is_routed else ""
    print(f"{lengths_text(layout.M, layout.N)}, {plural(H, 'head')}, tiles {layout.block_m}x{layout.block_n} "
          f"({Mt} x {Nt} per head){note}\n")
    visited = c["full"] + c["partial"]
    rows = [
        ["density", f"{layout.density:.4f}  ({visited} of {c['total']} tiles visited)"],
        ["ideal speedup", "inf (no tile visited)" if layout.density == 0 else f"{layout.ideal_speedup:.2f}x"],
        ["full tiles", c["full"]],
        ["partial tiles", f"{c['partial']}  ({100 * c['partial'] / visited if visited else 0:.1f}% of visited)"],
        ["empty tiles", c["empty"]],
        ["refined tiles", f"{layout.refined_tiles}  (undecided by interval arithmetic, split until decided)"],
        ["token order", _order_text(pattern, layout)],
    ]
    if empty is None:
        rows.append(["empty rows", "not checked" + (" (routed: depends on q, k)" if pattern.is_routed else
                                                   " (too many visited pairs; use a shorter --seq-len)")])
    elif not any(len(e) for e in empty):
        rows.append(["empty rows", "none"])
    else:
        rows.append(["empty rows", f"{sum(len(e) for e in empty)} over all heads (output 0, LSE -inf)"])
    print(tabulate(rows, tablefmt="plain"))
    if empty is not None and any(len(e) for e in empty):
        print()
        groups = _group_heads([tuple(e.tolist()) for e in empty])
        table = [[heads, len(rows), _first(rows)] for heads, rows in groups if rows]
        print(tabulate(table, headers=["heads", "empty rows", "first rows (tokens)"]))
    cell = map_cell(max(Mt, Nt))
    order = "" if perm is None else f", tiles in {perm.name}"
    scale = "" if cell == 1 else f"; downsampled: each character is the max of {cell}x{cell} tiles"
    print(f"\nblock map, head {head} ('#' full, '+' partial, '.' empty; rows: query tiles, columns: key tiles"
          f"{order}{scale}):")
    for line in block_text(downsample(blocks, cell)):
        print(line)


def _natural_reason(pattern, layout) -> str | None:
    from ..layout.residue import natural_order_reason

    if layout.permutation is not None:
        return None
    return natural_order_reason(pattern, layout.M, layout.N, layout.heads, layout.block_m, layout.block_n)


def _order_text(pattern, layout) -> str:
    perm = layout.permutation
    if perm is not None and not hasattr(perm, "modulus"):
        return perm.describe()
    if perm is not None:
        return (f"residue classes mod {perm.modulus} ({perm.modulus} classes of {perm.class_len} tokens; "
                f"a tile reads rows {perm.modulus} apart)")
    reason = _natural_reason(pattern, layout)
    return "natural" + (f" ({reason})" if reason else "")


def _group_heads(values: list) -> list[tuple[str, object]]:
    """[(heads "lo..hi", value)] for runs of consecutive heads with one value."""
    out, lo = [], 0
    for h in range(1, len(values) + 1):
        if h == len(values) or values[h] != values[lo]:
            out.append((str(lo) if lo == h - 1 else f"{lo}..{h - 1}", values[lo]))
            lo = h
    return out


def _first(rows) -> str:
    shown = ", ".join(map(str, rows[:EMPTY_ROWS_SHOWN]))
    return shown + (", ..." if len(rows) > EMPTY_ROWS_SHOWN else "")
