"""Token order: which tokens a tile of the layout holds. The emitter is an `Order`.

Natural order (`Order()`): a tile is BLOCK consecutive tokens. Residue order
(`Order(modulus=R)`, `Layout.permutation`): tokens are grouped by residue class modulo R, and a
tile holds BLOCK tokens of one class, R apart, which the kernel reads with a row stride of R
(no copy is made). Box order (`Boxes`, a `layout.box.BoxOrder`): a tile is a box of the
pattern's grid, whose tokens `box_token()` computes from layout positions with integer division
and modulo by constants (through pointers, or TMA where a tile is one box of an undilated grid).
Every method works on a `Tile` of either side of the score matrix, so forward and backward
kernels share them.
"""
from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass

from .template import Arg, fill


@dataclass(frozen=True)
class Side:
    """One side of the score matrix: the queries (m) or the keys (n)."""

    letter: str  # m | n: BLOCK_M, EVEN_M, the suffix of a row stride (stride_qm)
    prefix: str  # q | kv: the prefix of a tile's variables (q_cls, kv_first)
    noun: str  # query | key
    length: str  # Q_LEN | KV_LEN: the length inside kernels
    size: str  # M | N: the length in launch()

    @property
    def block(self) -> str:
        return f"BLOCK_{self.letter.upper()}"

    @property
    def even(self) -> str:
        return f"EVEN_{self.letter.upper()}"


QUERIES = Side("m", "q", "query", "Q_LEN", "M")
KEYS = Side("n", "kv", "key", "KV_LEN", "N")


@dataclass(frozen=True)
class Tile:
    """A tile a kernel works on: `first`, its first layout position; `tokens`, the variable
    holding its token indices, computed from `offsets`, the positions within the tile; `own`:
    the program's own tile (addressed absolutely), not one of those it loops over (addressed
    from a base pointer)."""

    side: Side
    first: str
    tokens: str
    offsets: str
    own: bool


@dataclass(frozen=True)
class Order:
    modulus: int | None = None  # None: natural order

    @property
    def doc(self) -> str:
        return ("tokens in their own order" if self.modulus is None else
                "tokens grouped by residue class modulo R (each tile: BLOCK tokens of one class, R apart)")

    def constants(self) -> list[str]:
        if self.modulus is None:
            return []
        return [f"R = {self.modulus}  # residue modulus of the token order (None: natural order)"]

    def params(self) -> list[list[Arg]]:
        return [] if self.modulus is None else [[Arg("CLASS_LEN", "N // R"), Arg("R", "R", constexpr=True)]]

    def tokens(self, tile: Tile) -> list[str]:
        """Lines setting `tile.tokens`, the token indices of the tile."""
        p, first = tile.side.prefix, tile.first
        if self.modulus is None:
            return [f"{tile.tokens} = {first} + {tile.offsets}"]
        note = ["# layout position p is token (p % CLASS_LEN) * R + p // CLASS_LEN: this tile holds",
                f"# tokens {p}_cls + R * ({p}_first + i) of one residue class"] if tile.own else []
        lead = f"({first})" if " " in first else first
        return note + [f"{p}_cls = {lead} // CLASS_LEN", f"{p}_first = {first} - {p}_cls * CLASS_LEN",
                       f"{tile.tokens} = {p}_cls + R * ({p}_first + {tile.offsets})"]

    def row0(self, tile: Tile) -> str:
        """The tile's first token, as an expression."""
        return tile.first if self.modulus is None else f"{tile.side.prefix}_cls + R * {tile.side.prefix}_first"

    def row_stride(self, stride: str) -> str:
        """The distance between a tile's rows, for a tensor's row stride."""
        return stride if self.modulus is None else f"(R * {stride})"

    def rows(self, tile: Tile) -> str:
        """The rows of a tile relative to its first row, in units of `row_stride`."""
        return tile.offsets

    helper = ""  # no function of its own in the module

    def coords(self, tile: Tile) -> str:
        """The tile's coordinates in a tensor descriptor, after the (batch, head) row."""
        p = tile.side.prefix
        return f"{tile.first}, 0" if self.modulus is None else f"{p}_first, {p}_cls, 0"

    def view(self, tensor: str, heads: str, length: str) -> str:
        """The tensor a descriptor addresses: `tensor` [B, heads, length, D] itself, or a view."""
        return tensor if self.modulus is None else f"{tensor}.view(B, {heads}, {length} // R, R, D)"

    def box(self, block: str, dim: str) -> str:
        """The shape of a descriptor's block (and of the tile it copies)."""
        return f"1, 1, {block}, {dim}" if self.modulus is None else f"1, 1, {block}, 1, {dim}"

    def view_note(self) -> list[str]:
        if self.modulus is None:
            return []
        return ["# 5-D views [batch, heads, N / R, R, D]: a class is a column of R-strided rows"]


BOX_TOKEN = '''

@triton.jit
def box_token(p):
    {doc}
    {lines}
    return token
'''


@dataclass(frozen=True)
class Boxes:
    """Box order: a tile of BLOCK tokens is a box of the grid (`layout.box.BoxOrder`): its first
    token `box_token(first)` plus the tile-independent offsets `box_token(i)`, computed from
    layout positions by division and modulo by constants. Through pointers, or TMA descriptors
    over views [batch, heads, *grid, D] where the order allows (`BoxOrder.tma`)."""

    order: object  # the layout's BoxOrder

    @property
    def doc(self) -> str:
        return self.order.describe().replace("box order: tiles are", "tokens in box order (tiles:") + ")"

    def constants(self) -> list[str]:
        return []

    def params(self) -> list[list[Arg]]:
        return []

    @property
    def helper(self) -> str:
        """`box_token()`: a line per level of the position's digits (`BoxOrder.digits`), a term
        per dimension it moves along: `(p // below % count) * move`."""
        order = self.order
        names = [" x ".join(map(str, b)) for b in order.boxes]
        grouped = set(order.dilation) != {1}
        notes = ([f"a token of its {names[0]} box"] + [f"the {a} box in its {b} box" for a, b in zip(names, names[1:])]
                 + [f"the {names[-1]} box in the grid" + (" (of its dilation group)" if grouped else ""),
                    "the dilation group"])
        lines, below, N = [], 1, math.prod(order.grid)
        for (counts, moves), note in zip(order.digits(), notes):
            terms = []
            for count, move in zip(reversed(counts), reversed(moves)):
                if count == 1:
                    continue
                digit = "p" if below == 1 else f"p // {below}"
                below *= count
                if below < N:  # the most significant digit needs no modulo
                    digit = f"{digit} % {count}"
                terms.append(f"({digit})" + (f" * {move}" if move != 1 else ""))
            if terms:
                lines.append(f"token {'+= ' if lines else '= '}{' + '.join(terms)}  # {note}")
        groups = ("dilation group by dilation group (" + " x ".join(map(str, order.dilation)) + "), then "
                  if grouped else "")
        inner = (f", each {math.prod(order.boxes[1]) // math.prod(order.boxes[0])} boxes of {names[0]}"
                 if len(names) > 1 else "")
        doc = (f'"""The token at layout position p. Positions go {groups}box by box over the grid '
               f"{' x '.join(map(str, order.grid))} (boxes of {names[-1]}{inner}), row-major at every level. "
               "Each digit of p moves the token by a fixed amount, so inside a tile "
               'box_token(first + i) = box_token(first) + box_token(i)."""')
        return fill("BOX_TOKEN", BOX_TOKEN, doc=textwrap.wrap(doc, 92), lines=lines)

    def tokens(self, tile: Tile) -> list[str]:
        """Lines setting `tile.tokens`: the tile's first token and the box's offsets from it."""
        p = tile.side.prefix
        note = [f"# box order: this tile is a box of the grid, its tokens {p}_row0 + box_token(i)"] if tile.own else []
        return note + [f"{p}_row0 = box_token({tile.first})  # the tile's first {tile.side.noun} token",
                       f"{tile.tokens} = {p}_row0 + box_token({tile.offsets})"]

    def row0(self, tile: Tile) -> str:
        return f"{tile.side.prefix}_row0"

    def row_stride(self, stride: str) -> str:
        return stride

    def rows(self, tile: Tile) -> str:
        return f"box_token({tile.offsets})"

    def coords(self, tile: Tile) -> str:
        """The tile's first token's grid coordinates, a descriptor's coordinates after its row."""
        self._check_tma()
        grid, row0 = self.order.grid, self.row0(tile)
        inner = [math.prod(grid[d + 1:]) for d in range(len(grid))]
        coords = [f"{row0} // {inner[0]}"] + [(f"{row0} // {i} % {L}" if i > 1 else f"{row0} % {L}")
                                              for i, L in zip(inner[1:], grid[1:])]
        return ", ".join(coords) + ", 0"

    def view(self, tensor: str, heads: str, length: str) -> str:
        self._check_tma()
        return f"{tensor}.view(B, {heads}, {', '.join(map(str, self.order.grid))}, D)"

    def box(self, block: str, dim: str) -> str:
        self._check_tma()
        return f"1, 1, {', '.join(map(str, self.order.boxes[0]))}, {dim}"

    def view_note(self) -> list[str]:
        grid, box = (" x ".join(map(str, x)) for x in (self.order.grid, self.order.boxes[0]))
        return [f"# {len(self.order.grid) + 3}-D views [batch, heads, {grid}, D]: a tile is a {box} box of the grid"]

    def _check_tma(self):
        if not self.order.tma:
            raise ValueError("this box order reads tiles through pointers: a box of a dilation group, or two boxes "
                             "side by side, is no TMA box")
