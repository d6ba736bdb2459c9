"""Token order: which tokens a tile of the layout holds. The emitter is an `Order`.

Natural order (`Order()`): a tile is BLOCK consecutive tokens. Residue order
(`Order(modulus=R)`, `Layout.permutation`): tokens are grouped by residue class modulo R, and a
tile holds BLOCK tokens of one class, R apart, which the kernel reads with a row stride of R
(no copy is made). Every method works on a `Tile` of either side of the score matrix, so
forward and backward kernels share them.
"""
from __future__ import annotations

from dataclasses import dataclass

from .template import Arg


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
