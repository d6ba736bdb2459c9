"""Programs: what each program of a sweep owns, and where its sequence lies. One emitter per case.

`Whole`: the sequence is one sequence per batch entry; a program owns a tile of it (the
forward's and dQ's query tiles in the layout's row order, longest first; dK/dV's key tiles).

`Packed` (`documents=` cumulative boundaries, FlashAttention's varlen convention): several
documents are packed into one sequence and the pattern applies inside each, with positions
counted from the document's first token. The layout is the pattern's own at the packed length,
in document-relative tiles; a program owns one (document, tile), read from a table that
`document_tiles()` builds on the device from the boundaries (no host sync), longest rows first.
The program moves its tensors' base pointers to the document's first token and sets
`Q_LEN = KV_LEN =` the document's length, so the rest of the kernel is the one-sequence kernel
of a sequence that long: masked loads at its end, tiles past its end skipped.

Routed patterns (`topk`) choose per document at run time (`runtime/routing.py`): their index
tables hold a line per (document, tile), document after document, already clipped at its end.
The table also gives each program its document's first line (`document_tiles`' fourth column),
and the program moves the index tables' base there, as it moves q, k and v to the document's
first token (and the per-token choice words with them).
"""
from __future__ import annotations

from .iteration import COLUMNS, ROWS
from .template import Arg

# a forward or dQ program: (batch x head, query tile)
HEADS = ["off_hz = tl.program_id(0)", "off_z = off_hz // H", "off_h = off_hz % H"]
KV_HEAD = "off_kh = off_h // GROUP  # grouped-query attention: GROUP query heads share a key/value head"
# a dK/dV program: (batch x key/value head, key tile)
KV_HEADS = ["off_kz = tl.program_id(0)", "off_z = off_kz // (H // GROUP)", "off_kh = off_kz % (H // GROUP)"]

DOCUMENT_TILES = '''


@triton.jit
def tiles_before(entries, n, end, BLOCK: tl.constexpr):
    """How many of the n ascending tile indices at `entries` start before token `end`
    (bisection: 24 steps cover any table)."""
    lo = n * 0
    hi = n
    for _ in tl.static_range(24):
        active = lo < hi
        mid = (lo + hi) // 2
        below = tl.load(entries + mid, mask=active, other=0) * BLOCK < end
        lo = tl.where(active & below, mid + 1, lo)
        hi = tl.where(active & ~below, mid, hi)
    return lo

_DOCUMENT_TILES = {}  # (id(documents), its version, id(layout), side) -> (weakref, table)


def document_tiles(documents, layout, side):
    """int32 [T, 4]: (first token, length, tile, first line) of each program of a sweep over
    packed documents (`side` "rows": query tiles of BLOCK_M, "columns": key tiles of BLOCK_N), one
    per (document, tile), the busiest tiles of `layout` first; programs past the last tile get
    length 0 and stop at once. A document's first line numbers its first tile among all
    (document, tile) pairs, document after document (routed tables have a line per pair). Built
    on the device from the boundaries with no host sync, once per boundaries tensor and layout
    (the layers of a model share one per step), not kept while a CUDA graph is captured."""
    key = (id(documents), documents._version, id(layout), side)
    hit = _DOCUMENT_TILES.get(key)
    if hit is not None and hit[0]() is documents:
        return hit[1]
    if side == "rows":
        block, work = BLOCK_M, (layout.full_kv_num_blocks + layout.kv_num_blocks).sum(0)
    else:
        block, work = BLOCK_N, (layout.full_q_num_blocks + layout.q_num_blocks).sum(0)
    table = _document_tiles(documents, block, work)
    if not (documents.is_cuda and torch.cuda.is_current_stream_capturing()):
        if len(_DOCUMENT_TILES) > 64:
            _DOCUMENT_TILES.clear()
        _DOCUMENT_TILES[key] = (weakref.ref(documents), table)
    return table


def _document_tiles(documents, block, work):
    """document_tiles' table for tiles of `block` tokens, `work` per tile index ([tiles]):
    T = tiles + documents bounds the count of programs."""
    starts, lengths = documents[:-1], documents[1:] - documents[:-1]
    tiles = (lengths + block - 1) // block
    ends = torch.cumsum(tiles, 0)
    program = torch.arange(work.shape[0] + starts.shape[0], device=documents.device)
    doc = torch.searchsorted(ends, program, right=True)
    real = doc < starts.shape[0]
    doc = doc.clamp(max=starts.shape[0] - 1)
    tile = torch.where(real, program - (ends[doc] - tiles[doc]), 0)
    table = torch.stack((starts[doc], torch.where(real, lengths[doc], 0), tile, ends[doc] - tiles[doc]),
                        1).to(torch.int32)
    longest = torch.argsort(torch.where(real, work[tile], -1), descending=True, stable=True)
    return table[longest].contiguous()
'''

DOCUMENT_CHECKS = [
    "if documents is None:",
    '    raise ValueError("this kernel was generated for packed documents: pass documents= (int32 [docs + 1] "',
    '                     "cumulative boundaries, from 0 to the sequence length)")',
    "if (documents.dtype != torch.int32 or documents.dim() != 1 or documents.shape[0] < 2",
    "        or documents.device != q.device or M != N):",
    '    raise ValueError(f"documents must be int32 [docs + 1] on {q.device} over self-attention (M == N), got "',
    '                     f"{documents.dtype} {list(documents.shape)} on {documents.device}, M = {M}, N = {N}")',
]


class Whole:
    packed = False
    imports = ()
    launch_param = ""
    helper = ""
    doc = ""

    def params(self, own: str) -> list[Arg]:
        """Kernel parameters of the program mapping; `own`: "m" (rows) or "n" (columns)."""
        return [Arg("row_order", "layout.row_order"), Arg("stride_roh", "layout.row_order.stride(0)")] \
            if own == "m" else []

    def program(self, own: str, shifts: list[tuple[str, str]]) -> list[str]:
        """The program's first lines: its heads and its own tile (`start_m` or `start_n`)."""
        if own == "m":
            return [*HEADS, "# longest rows first (the layout's row order), so the last wave is made of short programs",
                    "start_m = tl.load(row_order + off_h * stride_roh + tl.program_id(1))", KV_HEAD]
        return [*KV_HEADS, "start_n = tl.program_id(1)"]

    def checks(self) -> list[str]:
        return []

    def place_checks(self) -> list[str]:
        return []

    def prepare(self, own: str) -> list[str]:
        return []

    def programs(self, own: str) -> str:
        """The grid's tile axis, in launch()."""
        return "triton.cdiv(M, BLOCK_M)" if own == "m" else "triton.cdiv(N, BLOCK_N)"

    def even(self, own: str) -> str:
        return "M % BLOCK_M == 0" if own == "m" else "N % BLOCK_N == 0"

    clips = False  # do loops skip tiles at or past the sequence's end (the layout's tiles may pass it)?

    def constexprs(self, groups: list[list[Arg]]) -> list[list[Arg]]:
        """The kernel's constexpr groups, EVEN_M / EVEN_N as this case decides them."""
        return [[Arg(a.name, self.even(a.name[-1].lower()), True) if a.name in ("EVEN_M", "EVEN_N") else a
                 for a in group] for group in groups]


class Packed(Whole):
    packed = True
    imports = ("import weakref",)
    launch_param = ", documents=None"
    helper = DOCUMENT_TILES
    doc = "; packed documents (a program per document tile, positions from each document's first token)"

    def __init__(self, routed):
        self.routed = routed  # the routing emitter (codegen/routed.py)

    @property
    def clips(self) -> bool:
        return not self.routed.selects  # routed tables are written clipped at each document's end

    def params(self, own: str) -> list[Arg]:
        table = "doc_rows" if own == "m" else "doc_cols"
        return [Arg(table, table)]

    def program(self, own: str, shifts: list[tuple[str, str]]) -> list[str]:
        table, tile = ("doc_rows", "start_m") if own == "m" else ("doc_cols", "start_n")
        return [*(HEADS if own == "m" else KV_HEADS),
                f"# packed documents: this program's (document, tile), from {table} (first token, length, tile,",
                "# first line), the busiest first; programs past the last document's tiles stop here",
                f"doc = {table} + 4 * tl.program_id(1)",
                "doc_len = tl.load(doc + 1)",
                "if doc_len == 0:",
                "    return",
                "doc_start = tl.load(doc).to(tl.int64)",
                f"{tile} = tl.load(doc + 2)",
                "# the program sees its document alone, as a sequence of its own: positions count from its",
                "# first token (base pointers moved there), lengths are its length",
                "Q_LEN = doc_len",
                "KV_LEN = doc_len",
                "Q_POS = 0",
                "K_POS = 0",
                "RULE_M = doc_len",
                "RULE_N = doc_len",
                *(f"{name} += doc_start" + ("" if stride == "1" else f" * {stride}")
                  for name, stride in [*shifts, *self.routed.token_pointers]),
                *self._lines(own),
                *([KV_HEAD] if own == "m" else [])]

    def _lines(self, own: str) -> list[str]:
        """Routed: the index tables moved to the document's first line (counts: a line each)."""
        if not self.routed.selects:
            return []
        sweep = ROWS if own == "m" else COLUMNS
        full_n, full_i, part_n, part_i = sweep.tables
        s = sweep.strides
        return ["# routed: this call's tables hold a line per (document, tile), this document's from its first line",
                "doc_line = tl.load(doc + 3)",
                f"{full_n} += doc_line", f"{full_i} += doc_line * {s[2]}",
                f"{part_n} += doc_line", f"{part_i} += doc_line * {s[5]}"]

    def checks(self) -> list[str]:
        return DOCUMENT_CHECKS

    def place_checks(self) -> list[str]:
        return ["if positions is not None:",
                '    raise ValueError("packed documents place their tokens themselves: positions= must be None")']

    def prepare(self, own: str) -> list[str]:
        # routed: the call's layout is new every call; its static one with every block chosen orders the programs
        layout = "layout.every" if self.routed.selects else "layout"
        return [f'doc_rows = document_tiles(documents, {layout}, "rows")' if own == "m" else
                f'doc_cols = document_tiles(documents, {layout}, "columns")']

    def programs(self, own: str) -> str:
        return "doc_rows.shape[0]" if own == "m" else "doc_cols.shape[0]"

    def even(self, own: str) -> str:
        return "False"  # documents end anywhere


def programs(packed: bool, routed) -> Whole:
    """`routed`: the routing emitter (codegen/routed.py)."""
    return Packed(routed) if packed else Whole()


def shifts(tensors, *extra: str) -> list[tuple[str, str]]:
    """(pointer, row stride) of each tensor once (k loaded two ways is one pointer), then `extra`
    pointers to per-row float32 statistics (row stride 1)."""
    found = {t.name: t.row_stride for t in tensors}
    return list(found.items()) + [(name, "1") for name in extra]
