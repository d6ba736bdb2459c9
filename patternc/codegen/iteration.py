"""Iteration: which tiles a program visits, and in which loops. One emitter per strategy.

`Runs` loops over a few ranges of consecutive tiles per line of the layout (no index loads:
the loops software-pipeline like a dense one); `Table` reads the layout's index tables. Both
follow a `Sweep`: `ROWS` (a program per query tile, looping over key tiles: the forward pass
and dQ) or `COLUMNS` (a program per key tile, looping over query tiles through the
transposed tables: dK/dV). The loop body is the kernel family's: `loops` takes it as a
function of `masked` (partial tiles evaluate the predicate, full tiles don't). With `clip`,
tiles at or past the end of the side looped over are left out of the loops (packed documents: a
layout line made for the packed length passes the end of a short document): runs end there, and
table loops count their entries before it by bisection (`tiles_before`, entries ascend).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .template import Arg, indent


@dataclass(frozen=True)
class Sweep:
    """How a program walks the layout: it owns the tile `own` (a tile index, on the side
    lettered `own_letter`) and loops over the tiles of the other side that its line (`row` or
    `column`) of the layout visits, `loop` holding the first layout position of the one it is at."""

    own: str
    own_letter: str
    loop: str
    block: str  # the size of the tiles looped over
    line: str
    tile: str  # what a tile looped over is called
    tables: tuple[str, str, str, str]  # Layout's full counts, full indices, partial counts, partial indices
    runs: str | None  # the Layout method giving runs of tiles per line (None: the layout has none)
    length: str  # the length of the side looped over (a tile at or past it holds no token)

    @property
    def strides(self) -> tuple[str, ...]:
        """Strides of the four tables: counts per head; indices per head and per line."""
        return tuple(f"stride_{kind}{axis}" for kind in ("f", "p") for axis in ("nh", "ih", "i" + self.own_letter))


ROWS = Sweep("start_m", "m", "start_n", "BLOCK_N", "row", "key tile",
             ("full_kv_num_blocks", "full_kv_indices", "kv_num_blocks", "kv_indices"), "runs", "KV_LEN")
COLUMNS = Sweep("start_n", "n", "start_m", "BLOCK_M", "column", "query tile",
                ("full_q_num_blocks", "full_q_indices", "q_num_blocks", "q_indices"), None, "Q_LEN")

FULL_WHY = "every (query, key) pair is visible"
PARTIAL_WHY = "the pattern's predicate decides per element"
Step = Callable[[bool], list]  # masked -> the loop body's lines


def tile_start(sweep: Sweep, index: str) -> str:
    """`loop` set to the first layout position of the tile with this index."""
    return f"{sweep.loop} = tl.multiple_of({index} * {sweep.block}, {sweep.block})"


class Table:
    def doc(self, sweep: Sweep) -> str:
        return "read from the layout's index tables"

    def layout_doc(self, sweep: Sweep) -> str:
        return "int32 tables\n    " + ", ".join(f"`{t}`" for t in sweep.tables)

    def params(self, sweep: Sweep) -> list[list[Arg]]:
        full_n, full_i, part_n, part_i = sweep.tables
        s = sweep.strides
        return [[Arg(t, f"layout.{t}") for t in sweep.tables],
                [Arg(s[0], f"layout.{full_n}.stride(0)"), Arg(s[1], f"layout.{full_i}.stride(0)"),
                 Arg(s[2], f"layout.{full_i}.stride(1)"), Arg(s[3], f"layout.{part_n}.stride(0)"),
                 Arg(s[4], f"layout.{part_i}.stride(0)"), Arg(s[5], f"layout.{part_i}.stride(1)")]]

    def prepare(self, sweep: Sweep) -> list[str]:
        return []

    def loops(self, sweep: Sweep, routed, step: Step, clip: bool = False) -> list[str]:
        full_n, full_i, part_n, part_i = sweep.tables
        s, own, head = sweep.strides, sweep.own, routed.table_row

        def clipped(kind: str) -> list[str]:
            if not clip:
                return []
            return [f"# the {sweep.tile}s of a line may pass a document's end: keep those before it",
                    f"n_{kind} = tiles_before({kind}_{sweep.line}, n_{kind}, {sweep.length}, {sweep.block})"]

        return [f"# full tiles: {FULL_WHY}",
                f"n_full = tl.load({full_n} + {head} * {s[0]} + {own})",
                f"full_{sweep.line} = {full_i} + {head} * {s[1]} + {own} * {s[2]}",
                *clipped("full"),
                "for i in range(0, n_full):",
                "    " + tile_start(sweep, f"tl.load(full_{sweep.line} + i)"),
                *indent(step(False), 4),
                "",
                f"# partial tiles: {PARTIAL_WHY}",
                f"n_partial = tl.load({part_n} + {head} * {s[3]} + {own})",
                f"partial_{sweep.line} = {part_i} + {head} * {s[4]} + {own} * {s[5]}",
                *clipped("partial"),
                *routed.partial_setup(sweep),
                "for i in range(0, n_partial):",
                *indent(routed.decode(sweep, f"partial_{sweep.line} + i"), 4),
                *indent(step(True), 4),
                ""]


@dataclass(frozen=True)
class Runs:
    full: int  # runs of full tiles per line (the most any line has)
    partial: int

    def doc(self, sweep: Sweep) -> str:
        return f"looped over runs of consecutive {sweep.tile}s\n    (ranges: no index loads inside the loops)"

    def _check(self, sweep: Sweep):
        if sweep.runs is None:
            raise ValueError(f"the layout has no runs of {sweep.tile}s per {sweep.line}: iterate with index tables")

    def layout_doc(self, sweep: Sweep) -> str:
        return f"runs of {sweep.tile}s\n    `layout.{sweep.runs}()` = (full [H, Mt, Rf, 2], partial [H, Mt, Rp, 2])"

    def params(self, sweep: Sweep) -> list[list[Arg]]:
        self._check(sweep)
        return [[Arg("full_runs", "full_runs"), Arg("partial_runs", "partial_runs"),
                 Arg("stride_frh", "full_runs.stride(0)"), Arg(f"stride_fr{sweep.own_letter}", "full_runs.stride(1)"),
                 Arg("stride_prh", "partial_runs.stride(0)"),
                 Arg(f"stride_pr{sweep.own_letter}", "partial_runs.stride(1)")]]

    def prepare(self, sweep: Sweep) -> list[str]:
        return [f"full_runs, partial_runs = layout.{sweep.runs}()"]

    def loops(self, sweep: Sweep, routed, step: Step, clip: bool = False) -> list[str]:
        if routed.selects:
            raise ValueError("routed kernels read their tiles' choices from index tables, not from runs")
        lines = []
        for kind, n, masked, why in (("full", self.full, False, FULL_WHY), ("partial", self.partial, True, PARTIAL_WHY)):
            line, k = f"{kind}_{sweep.line}", kind[0]
            lines += [f"# {kind} tiles: {why}; {n} run(s) of consecutive {sweep.tile}s per {sweep.line}",
                      f"{line} = {kind}_runs + off_h * stride_{k}rh + {sweep.own} * stride_{k}r{sweep.own_letter}",
                      f"for r in tl.static_range({n}):",
                      f"    lo = tl.load({line} + 2 * r) * {sweep.block}",
                      f"    hi = tl.load({line} + 2 * r + 1) * {sweep.block}",
                      *([f"    hi = tl.minimum(hi, {sweep.length})  # a line's runs may pass a document's end"]
                        if clip else []),
                      f"    for {sweep.loop} in range(lo, hi, {sweep.block}):",
                      f"        {sweep.loop} = tl.multiple_of({sweep.loop}, {sweep.block})",
                      *indent(step(masked), 8),
                      ""]
        return lines
