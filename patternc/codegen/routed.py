"""Routing: where a tile's run-time choice comes from. One emitter per mode.

`Static`: the layout fixes every tile. For a routed primitive (`Primitive.routed`, topk) the
routing kernels build per-(batch, head) tables at run time, and the predicate reads a tile's
`selected` flag: `ByBlock`, a partial tile's table entry carries the choice of its key block
(one choice per query block); `ByToken`, every query row reads its own choice, a bit per key
block. Only `Table` iteration carries choices.
"""
from __future__ import annotations

from .iteration import Sweep, tile_start
from .template import Arg


class Static:
    selects = False  # do partial tiles carry a run-time choice (`selected`)?
    table_row = "off_h"  # the tables' row: one per head
    predicate_param = ""
    token_pointers = ()  # (pointer, row stride) indexed by query token (packed documents move them)

    def params(self) -> list[list[Arg]]:
        return []

    def step_params(self) -> list[str]:
        return []

    def call_arg(self, masked: bool) -> str:
        return ""

    def partial_setup(self, sweep: Sweep) -> list[str]:
        return []

    def decode(self, sweep: Sweep, entry: str) -> list[str]:
        """Lines setting the loop's tile from a partial tiles' table entry (and its choice)."""
        return [tile_start(sweep, f"tl.load({entry})")]


class ByBlock(Static):
    selects = True
    table_row = "off_hz"  # chosen from each batch's q and k: one row per (batch, head)
    predicate_param = ", selected"

    def step_params(self) -> list[str]:
        return ["selected,"]

    def call_arg(self, masked: bool) -> str:
        return "selected, " if masked else "0, "  # full tiles are never routed

    def decode(self, sweep: Sweep, entry: str) -> list[str]:
        return [f"entry = tl.load({entry})  # {sweep.tile} | the topk choice << 30",
                tile_start(sweep, "(entry & 0x3FFFFFFF)"),
                "selected = entry >> 30"]


class ByToken(ByBlock):
    token_pointers = (("choice_words", "stride_cwm"),)

    def params(self) -> list[list[Arg]]:
        return [[Arg("choice_words", "layout.choice_words"), Arg("stride_cwh", "layout.choice_words.stride(0)"),
                 Arg("stride_cwm", "layout.choice_words.stride(1)"), Arg("route_block", "layout.block")]]

    def partial_setup(self, sweep: Sweep) -> list[str]:
        if sweep.own_letter == "m":  # the program's own query rows, over the key blocks it loops
            return ["choice_rows = choice_words + off_hz * stride_cwh + offs_m * stride_cwm"]
        # the program's own key block (dK/dV), over the query rows it loops
        return ["key_block = start_n * BLOCK_N // route_block  # this program's key tile lies in one routing block",
                "choice_column = choice_words + off_hz * stride_cwh + key_block // 32"]

    def decode(self, sweep: Sweep, entry: str) -> list[str]:
        if sweep.own_letter == "m":
            return Static.decode(self, sweep, entry) + [
                "# each query row's own topk choice of this key block: one bit of its words",
                f"key_block = {sweep.loop} // route_block",
                "words = tl.load(choice_rows + key_block // 32, mask=offs_m < Q_LEN, other=0)",
                "selected = ((words >> (key_block % 32)) & 1)[:, None]"]
        return Static.decode(self, sweep, entry) + [
            "# each query row's own topk choice of this program's key block: one bit of its words",
            f"rows = {sweep.loop} + tl.arange(0, BLOCK_M)",
            "words = tl.load(choice_column + rows * stride_cwm, mask=rows < Q_LEN, other=0)",
            "selected = ((words >> (key_block % 32)) & 1)[None, :]  # transposed, as the dK/dV tiles"]


MODES = {"": Static(), "block": ByBlock(), "token": ByToken()}
