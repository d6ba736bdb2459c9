"""Memory: how a kernel addresses, loads and stores its tiles. One emitter per path.

`Pointers` (any GPU, and Triton's CPU interpreter): pointer arithmetic, masked loads where a
tile may pass the end. `Tma` (Hopper+ tensor descriptors): bulk asynchronous copies, rows
past the end zero-filled on load and dropped on store by the hardware.

Each step is a separate call, for any `Tensor` on any `Tile`: pointers to a program's own tile
(`tile_pointers`), base pointers of the tiles a loop visits (`bases`, then `shift` per tile),
the per-program descriptor rows (`rows`), loads with their masks (`load`) and stores
(`store`); a kernel family strings them together in the order it needs.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

from .order import KEYS, QUERIES, Side, Tile
from .template import WIDTH, Arg


@dataclass(frozen=True)
class Tensor:
    """A `[batch, heads, length, HEAD_DIM]` operand of a kernel."""

    name: str  # its pointer parameter (Q)
    var: str  # its tile in the kernel, its tensor in launch() (q)
    short: str  # the stem of its names: q_ptrs, k_base, stride_qz, desc_q
    side: Side  # the tokens that index its rows
    head: str  # its head index in the kernel: off_h, or off_kh for key/value heads
    transposed: bool = False  # loaded as [HEAD_DIM, BLOCK] (k, for q @ k)
    tile_var: str = ""  # its tile's name in the kernel when not `var` (qT: q loaded transposed)

    @property
    def tile(self) -> str:
        return self.tile_var or self.var

    def stride(self, axis: str) -> str:
        return f"stride_{self.short}{axis}"

    @property
    def row_stride(self) -> str:
        return self.stride(self.side.letter)


Q = Tensor("Q", "q", "q", QUERIES, "off_h")
K = Tensor("K", "k", "k", KEYS, "off_kh", transposed=True)
V = Tensor("V", "v", "v", KEYS, "off_kh")
OUT = Tensor("Out", "out", "o", QUERIES, "off_h")


def _mask(t: Tensor, tile: Tile) -> str:
    return f"{tile.tokens}{'[None, :]' if t.transposed else '[:, None]'} < {tile.side.length}"


class Pointers:
    doc = "pointers"
    imports = ()

    def params(self, tensors: list[Tensor]) -> list[list[Arg]]:
        """The kernel parameters: the pointers on one line, then three tensors' strides a line."""
        strides = [Arg(t.stride(axis), f"{t.var}.stride({i})") for t in tensors
                   for i, axis in enumerate(("z", "h", t.side.letter))]
        return [[Arg(t.name, t.var) for t in tensors]] + [strides[i:i + 9] for i in range(0, len(strides), 9)]

    def contiguous(self, tensors: list[Tensor]) -> list[str]:
        names = ", ".join(t.var for t in tensors)
        return [f"{names} = (x if x.stride(-1) == 1 else x.contiguous() for x in ({names}))"]

    def descriptors(self, tensors: list[Tensor], order) -> list[str]:
        return []

    def dims(self) -> list[str]:
        return ["offs_d = tl.arange(0, HEAD_DIM)"]

    def _address(self, t: Tensor, target: str, rows: str, stride: str) -> list[str]:
        head = (f"{target} = {t.name} + off_z.to(tl.int64) * {t.stride('z')} "
                f"+ {t.head}.to(tl.int64) * {t.stride('h')}")
        if t.transposed:
            return [f"{head} + offs_d[:, None] \\", f"    + {rows}[None, :] * {stride}"]
        return [f"{head} \\", f"    + {rows}[:, None] * {stride} + offs_d[None, :]"]

    def tile_pointers(self, t: Tensor, tile: Tile) -> list[str]:
        return self._address(t, f"{t.short}_ptrs", tile.tokens, t.row_stride)

    def bases(self, tensors: list[Tensor], tile: Tile, order) -> list[str]:
        return [line for t in tensors
                for line in self._address(t, f"{t.short}_base", order.rows(tile), order.row_stride(t.row_stride))]

    def rows(self, tensors: list[Tensor]) -> list[str]:
        return []

    def shift(self, tensors: list[Tensor], tile: Tile, order) -> list[str]:
        """Pointers to the tile a loop is at, from the bases."""
        row0, lines = order.row0(tile), []
        if not row0.isidentifier():  # computed once for every tensor
            lines.append(f"{tile.side.prefix}_row0 = {row0}  # the tile's first {tile.side.noun} token")
            row0 = f"{tile.side.prefix}_row0"
        return lines + [f"{t.short}_ptrs = {t.short}_base + {row0} * {t.row_stride}" for t in tensors]

    def step_params(self, tensors: list[Tensor]) -> list[str]:
        """What a helper that loads these tensors' tiles needs from the kernel."""
        return [f"{t.short}_base" for t in tensors] + [t.row_stride for t in tensors]

    def load(self, tensors: list[Tensor], tile: Tile, order) -> list[str]:
        return ([f"if {tile.side.even}:"] + [f"    {t.tile} = tl.load({t.short}_ptrs)" for t in tensors] + ["else:"]
                + [f"    {t.tile} = tl.load({t.short}_ptrs, mask={_mask(t, tile)}, other=0.0)" for t in tensors])

    def store(self, t: Tensor, tile: Tile, order, value: str) -> list[str]:
        data = f"{value}.to({t.name}.dtype.element_ty)"
        return [f"if {tile.side.even}:", f"    tl.store({t.short}_ptrs, {data})", "else:",
                f"    tl.store({t.short}_ptrs, {data}, mask={_mask(t, tile)})"]


class Tma:
    doc = "TMA tensor descriptors (3-D: [batch x heads, length, head_dim])"
    imports = ("from triton.tools.tensor_descriptor import TensorDescriptor",)
    # a descriptor's first coordinate, the (batch, head) row, per head index
    ROW = MappingProxyType({"off_h": "off_hz", "off_kh": "kv_row"})

    def params(self, tensors: list[Tensor]) -> list[list[Arg]]:
        return [[Arg(f"desc_{t.short}", f"desc_{t.short}") for t in tensors]]

    def contiguous(self, tensors: list[Tensor]) -> list[str]:
        names = ", ".join(t.var for t in tensors)
        return [f"{names} = (x.contiguous() for x in ({names}))"]

    def descriptors(self, tensors: list[Tensor], order) -> list[str]:
        """One descriptor per tensor, made together for the tensors of one side and head count."""
        groups: dict[tuple, list[Tensor]] = {}
        for t in tensors:
            groups.setdefault((t.side, t.head), []).append(t)
        lines = order.view_note()
        for (side, head), group in groups.items():
            if len(group) == 1:  # a tensor alone: no generator to unpack
                t = group[0]
                rows = "B * H" if head == "off_h" else f"B * {t.var}.shape[1]"
                lines.append(f"desc_{t.short} = TensorDescriptor.from_tensor({t.var}.view("
                             f"{order.view(rows, side.size)}), [{order.box(side.block, 'D')}])")
                continue
            rows = "B * H" if head == "off_h" else "B * x.shape[1]"
            lead = f"{', '.join(f'desc_{t.short}' for t in group)} = ("
            make = (f"{lead}TensorDescriptor.from_tensor(x.view({order.view(rows, side.size)}), "
                    f"[{order.box(side.block, 'D')}])")
            loop = f"for x in ({', '.join(t.var for t in group)}))"
            if 4 + len(make) + 1 + len(loop) <= WIDTH:
                lines.append(f"{make} {loop}")
            else:
                lines += [make, " " * len(lead) + loop]
        return lines

    def dims(self) -> list[str]:
        return []

    def tile_pointers(self, t: Tensor, tile: Tile) -> list[str]:
        return []

    def bases(self, tensors: list[Tensor], tile: Tile, order) -> list[str]:
        return []

    def rows(self, tensors: list[Tensor]) -> list[str]:
        return ["kv_row = off_z * (H // GROUP) + off_kh"] if any(t.head == "off_kh" for t in tensors) else []

    def shift(self, tensors: list[Tensor], tile: Tile, order) -> list[str]:
        return []

    def step_params(self, tensors: list[Tensor]) -> list[str]:
        return [f"desc_{t.short}" for t in tensors] + list(dict.fromkeys(self.ROW[t.head] for t in tensors))

    def load(self, tensors: list[Tensor], tile: Tile, order) -> list[str]:
        note = [] if tile.own else [f"# the descriptor zero-fills rows past {tile.side.length}"]
        return note + [f"{t.tile} = desc_{t.short}.load([{self.ROW[t.head]}, {order.coords(tile)}])"
                       f".reshape({tile.side.block}, HEAD_DIM){'.T' if t.transposed else ''}" for t in tensors]

    def store(self, t: Tensor, tile: Tile, order, value: str) -> list[str]:
        shape = order.box(tile.side.block, "HEAD_DIM")
        store = (f"desc_{t.short}.store([{self.ROW[t.head]}, {order.coords(tile)}], "
                 f"{value}.to(desc_{t.short}.dtype).reshape({shape}))")
        return [f"# the descriptor drops rows past {tile.side.length}", store]
