"""Memory: how a kernel addresses, loads and stores its tiles. One emitter per path.

`Pointers` (any GPU, and Triton's CPU interpreter): pointer arithmetic, masked loads where a
tile may pass the end. `Tma` (Hopper+ tensor descriptors): bulk asynchronous copies, rows
past the end zero-filled on load and dropped on store by the hardware.

Each step is a separate call, for any `Tensor` on any `Tile`: pointers to a program's own tile
(`tile_pointers`), base pointers of the tiles a loop visits (`bases`, then `shift` per tile),
loads with their masks (`load`) and stores (`store`); a kernel family strings them together in
the order it needs.
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
    helper = ""

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
    doc = "TMA tensor descriptors (4-D: [batch, heads, length, head_dim], the tensors' own strides)"
    imports = ("from triton.tools.tensor_descriptor import TensorDescriptor",)
    helper = '''


def tma_ready(x):
    """Whether a TMA descriptor addresses x as it is, strides and all (q, k, v sliced from one
    projection, for instance): a unit stride along head_dim, every other stride and the base
    16-byte aligned. Others are copied to contiguous ones first."""
    size = x.element_size()
    return x.stride(-1) == 1 and x.data_ptr() % 16 == 0 and all(s * size % 16 == 0 for s in x.stride()[:-1])
'''
    # a descriptor's first coordinates, (batch, head), per head index
    ROW = MappingProxyType({"off_h": "off_z, off_h", "off_kh": "off_z, off_kh"})

    def params(self, tensors: list[Tensor]) -> list[list[Arg]]:
        return [[Arg(f"desc_{t.short}", f"desc_{t.short}") for t in tensors]]

    def contiguous(self, tensors: list[Tensor]) -> list[str]:
        names = ", ".join(t.var for t in tensors)
        return [f"{names} = (x if tma_ready(x) else x.contiguous() for x in ({names}))"]

    def descriptors(self, tensors: list[Tensor], order) -> list[str]:
        """One descriptor per tensor, made together for the tensors of one side and head count."""
        groups: dict[tuple, list[Tensor]] = {}
        for t in tensors:
            groups.setdefault((t.side, t.head), []).append(t)
        lines = order.view_note()
        for (side, head), group in groups.items():
            if len(group) == 1:  # a tensor alone: no generator to unpack
                t = group[0]
                heads = "H" if head == "off_h" else f"{t.var}.shape[1]"
                lines.append(f"desc_{t.short} = TensorDescriptor.from_tensor({order.view(t.var, heads, side.size)}, "
                             f"[{order.box(side.block, 'D')}])")
                continue
            heads = "H" if head == "off_h" else "x.shape[1]"
            lead = f"{', '.join(f'desc_{t.short}' for t in group)} = ("
            make = f"{lead}TensorDescriptor.from_tensor({order.view('x', heads, side.size)}, [{order.box(side.block, 'D')}])"
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

    def shift(self, tensors: list[Tensor], tile: Tile, order) -> list[str]:
        return []

    def step_params(self, tensors: list[Tensor]) -> list[str]:
        """The descriptors, the batch index and, for key/value tensors, their head (every step
        helper takes off_h already)."""
        kv_head = ["off_kh"] if any(t.head == "off_kh" for t in tensors) else []
        return [f"desc_{t.short}" for t in tensors] + ["off_z"] + kv_head

    def load(self, tensors: list[Tensor], tile: Tile, order) -> list[str]:
        note = [] if tile.own else [f"# the descriptor zero-fills rows past {tile.side.length}"]
        return note + [f"{t.tile} = desc_{t.short}.load([{self.ROW[t.head]}, {order.coords(tile)}])"
                       f".reshape({tile.side.block}, HEAD_DIM){'.T' if t.transposed else ''}" for t in tensors]

    def store(self, t: Tensor, tile: Tile, order, value: str) -> list[str]:
        shape = order.box(tile.side.block, "HEAD_DIM")
        store = (f"desc_{t.short}.store([{self.ROW[t.head]}, {order.coords(tile)}], "
                 f"{value}.to(desc_{t.short}.dtype).reshape({shape}))")
        return [f"# the descriptor drops rows past {tile.side.length}", store]
