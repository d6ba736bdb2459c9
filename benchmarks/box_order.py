"""Box order's tiles on the CPU: the suite's grid patterns laid out in natural order (a tile is
consecutive tokens, a piece of a grid row) and in box order (`order="auto"`: a tile is a box of
the grid), at their 16k tokens and 64x64 / 128x64 tiles. Layouts only, no kernel runs.

For each: full and partial tiles, visited tiles and the visited share of the score matrix (the
density), the partial share of the visited tiles, the box shapes and the build time (median of
3 builds from a freshly parsed pattern).

    python benchmarks/box_order.py --out benchmarks/results/2026-12-02-box-order-cpu

Writes box_order.md and box_order.json into --out.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from suite import SUITE  # noqa: E402

import patternc  # noqa: E402

PATTERNS = ("natten2d", "natten2d_dil", "gna3d")
TILES = ((64, 64), (128, 64))


def measure(name: str, block_m: int, block_n: int, order: str) -> dict:
    text, (S,) = SUITE[name]
    times = []
    for _ in range(3):
        pattern = patternc.compile(text)
        t0 = time.perf_counter()
        layout = pattern.layout(S, block_m=block_m, block_n=block_n, order=order)
        times.append(time.perf_counter() - t0)
    c, s = layout.counts, layout.summary()
    perm = layout.permutation
    return {"pattern": name, "S": S, "tiles": f"{block_m}x{block_n}", "order": order,
            "token_order": "natural" if perm is None else perm.describe(), "boxes": _boxes(perm),
            "full": c["full"], "partial": c["partial"],
            "visited": c["full"] + c["partial"], "density": layout.density, "partial_share": s["partial_share"],
            "build_ms": 1e3 * sorted(times)[1]}


def _boxes(perm) -> str:
    """Box order's tile shapes (and dilation groups), briefly; "" in natural order."""
    if perm is None:
        return ""
    groups = "" if set(perm.dilation) == {1} else f", groups {'x'.join(map(str, perm.dilation))}"
    return " in ".join("x".join(map(str, b)) for b in perm.boxes) + groups


def markdown(rows: list[dict]) -> str:
    from tabulate import tabulate

    table = []
    for before, after in zip(rows[::2], rows[1::2]):
        table.append([before["pattern"], before["tiles"], f"{before['full']} / {after['full']}",
                      f"{before['partial']} / {after['partial']}", f"{before['visited']} / {after['visited']}",
                      f"{before['density']:.4f} / {after['density']:.4f}",
                      f"{before['visited'] / after['visited']:.2f}x",
                      f"{before['partial_share']:.2f} / {after['partial_share']:.2f}",
                      f"{before['build_ms']:.0f} / {after['build_ms']:.0f}", after["boxes"]])
    headers = ["pattern (16k)", "tiles", "full", "partial", "visited", "density", "fewer visited",
               "partial share", "build ms", "boxes"]
    return ("Natural order / box order (`order='natural'` / `order='auto'`), one head.\n\n"
            + tabulate(table, headers=headers, tablefmt="github") + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    rows = [measure(name, bm, bn, order) for name in PATTERNS for bm, bn in TILES for order in ("natural", "auto")]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "box_order.json").write_text(json.dumps(rows, indent=2) + "\n")
    text = markdown(rows)
    (args.out / "box_order.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
