"""`patternc show FILE -n N`: a pattern's mask as an ASCII map (and, with --png, an image)."""
from __future__ import annotations

import math

from .common import (MAX_SHOW_PAIRS, UsageError, command, file_argument, head_argument, lengths_arguments,
                     lengths_text, pattern_argument, png_argument, positive, problem, progress, write_png)


def _arguments(p):
    file_argument(p)
    pattern_argument(p)
    lengths_arguments(p)
    head_argument(p, "which head to draw (default 0)")
    p.add_argument("--cell", type=positive, metavar="C",
                   help="tokens per map character, C x C (default: the smallest power of two giving <= 64 columns)")
    png_argument(p, "also write the map as an image, finer than the text map (needs matplotlib: pip install "
                    "'patternc[plot]')")


@command("show", "draw a pattern's mask as an ASCII map ('#' full cell, '+' partial, '.' empty)", _arguments)
def cmd_show(args) -> int:
    from ..layout.render import PNG_CELLS, cell_counts, map_cell, mask_png, mask_text, pool_cells

    name, pattern, M, N, heads = problem(args)
    if M * N > MAX_SHOW_PAIRS:
        raise UsageError(f"{M} x {N} is too large to draw from the brute-force mask; use a shorter --seq-len")
    cell = args.cell or map_cell(N)
    fine = math.gcd(cell, map_cell(max(M, N), PNG_CELLS)) if args.png else cell  # the image's cells divide the map's
    counts, areas, visible = cell_counts(pattern, M, N, heads, args.head, fine,
                                         progress=lambda bands: progress(bands, "mask rows", unit="band"))
    section = next(s for s in pattern.sections(heads) if s.lo <= args.head <= s.hi)
    lengths = lengths_text(M, N)
    print(f"{name}: {section.expr}")
    note = " (routed: blocks chosen for random q, k)" if pattern.is_routed else ""
    print(f"{lengths}, head {args.head} of {heads}, cell {cell}x{cell} tokens{note}")
    for line in mask_text(pool_cells(counts, cell // fine), pool_cells(areas, cell // fine)):
        print(line)
    print(f"visible: {visible} of {M * N} pairs ({100 * visible / (M * N):.2f}%)")
    if args.png:
        title = f"{name}: {section.expr}\n{lengths}, head {args.head} of {heads}, cell {fine}x{fine} tokens{note}"
        write_png(mask_png, args.png, counts, areas, fine, M, N, title)
    return 0
