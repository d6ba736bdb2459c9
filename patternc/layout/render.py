"""Pictures of a pattern's mask and of a Layout's block map, as text and as images.

    counts, areas, visible = cell_counts(pattern, 4096, 4096, heads=1, head=0, cell=64)
    print("\n".join(mask_text(counts, areas)))           # '#' full cell, '+' partial, '.' empty
    mask_png("mask.png", counts, areas, 64, 4096, 4096, "swa")   # needs matplotlib
    blocks = layout.block_map()[0]                        # int8 [Mt, Nt] of EMPTY, PARTIAL, FULL
    print("\n".join(block_text(downsample(blocks, map_cell(max(blocks.shape))))))
    block_png("map.png", blocks, layout, "swa")

The mask is counted from the reference mask a band of rows at a time (no M x N tensor); the
block map is the layout's own, down-sampled by taking the max over cells. Images give every
state its own colour (sparse patterns stay visible at any length), a legend, and axes in tokens.
"""
from __future__ import annotations

from ..analysis import mask_rows, routed_data
from ..ir import Pattern

MAP_CELLS = 64  # a map's width and height in characters, at most
PNG_CELLS = 512  # an image's width and height in cells, at most
# one colour per state, the same in both pictures: nothing visible / some pairs / every pair
COLOURS = ("white", "#9ecae1", "#08519c")


def map_cell(n: int, cells: int = MAP_CELLS) -> int:
    """The smallest power of two c with ceil(n / c) <= cells: how many units one character covers."""
    cell = 1
    while -(-n // cell) > cells:
        cell *= 2
    return cell


def cell_counts(pattern: Pattern, M: int, N: int, heads: int, head: int, cell: int, progress=None):
    """Visible pairs per cell of `cell` x `cell` tokens: (counts, areas) int64 [rows, cols], and
    the total, from the reference mask evaluated a band of rows at a time (`progress`: wraps the
    bands' iterable, e.g. in a progress bar)."""
    import torch

    rows, cols = -(-M // cell), -(-N // cell)
    counts = torch.zeros(rows, cols, dtype=torch.int64)
    data = routed_data(pattern, M, N, heads)
    data = {} if data is None else data
    band = cell * max(1, (1 << 22) // (cell * N))
    bands = range(0, M, band)
    for q0 in bands if progress is None else progress(bands):
        q1 = min(M, q0 + band)
        m = mask_rows(pattern, N, range(q0, q1), [head], M=M, data=data)[0]
        pad_r, pad_c = -(q1 - q0) % cell, -N % cell
        m = torch.nn.functional.pad(m.to(torch.int64), (0, pad_c, 0, pad_r))
        counts[q0 // cell: q0 // cell + m.shape[0] // cell] = m.view(-1, cell, cols, cell).sum((1, 3))
    height = torch.full((rows,), cell, dtype=torch.int64)
    height[-1] = M - (rows - 1) * cell
    width = torch.full((cols,), cell, dtype=torch.int64)
    width[-1] = N - (cols - 1) * cell
    return counts, height[:, None] * width[None, :], int(counts.sum())


def pool_cells(x, factor: int):
    """Sums over `factor` x `factor` cells (counts and areas of a finer grid -> a coarser one)."""
    if factor == 1:
        return x
    import torch

    rows, cols = x.shape
    x = torch.nn.functional.pad(x, (0, -cols % factor, 0, -rows % factor))
    return x.view(x.shape[0] // factor, factor, x.shape[1] // factor, factor).sum((1, 3))


def mask_text(counts, areas) -> list[str]:
    """'#' where every pair of the cell is visible, '.' where none is, '+' otherwise."""
    chars = []
    for crow, arow in zip(counts.tolist(), areas.tolist()):
        chars.append("".join("." if c == 0 else "#" if c == a else "+" for c, a in zip(crow, arow)))
    return chars


def downsample(blocks, cell: int):
    """Max over cell x cell tiles (full beats partial beats empty)."""
    if cell == 1:
        return blocks
    import torch

    Mt, Nt = blocks.shape
    padded = torch.nn.functional.pad(blocks.to(torch.float32)[None], (0, -Nt % cell, 0, -Mt % cell))
    return torch.nn.functional.max_pool2d(padded, cell)[0].to(torch.int8)


def block_text(blocks) -> list[str]:
    """One line per query tile: '#' full, '+' partial, '.' empty."""
    chars = ".+#"  # EMPTY, PARTIAL, FULL
    return ["".join(chars[v] for v in row) for row in blocks.tolist()]


def mask_png(path: str, counts, areas, cell: int, M: int, N: int, title: str) -> None:
    """The mask of M x N tokens, a colour per cell of `cell` x `cell` tokens: every pair visible,
    some, none; axes in tokens."""
    import torch

    state = torch.where(counts == 0, 0, torch.where(counts == areas, 2, 1))
    labels = (("not visible", "", "visible") if cell == 1 else
              ("no pair visible", "some pairs visible", "every pair visible"))
    _save(path, state.numpy(), (cell, cell), (M, N), title, labels, "")


def block_png(path: str, blocks, layout, title: str) -> None:
    """A layout's block map: full tiles (no mask), partial tiles (masked), skipped; axes in tokens."""
    order = "" if layout.permutation is None else f", {layout.permutation.name}"
    _save(path, blocks.numpy(), (layout.block_m, layout.block_n), (layout.M, layout.N), title,
          ("skipped tile", "partial tile (masked)", "full tile (no mask)"), order)


def _save(path: str, states, cell: tuple[int, int], lengths: tuple[int, int], title: str, labels, order: str):
    # a bare Figure, not pyplot: no GUI backend and no global state for the caller
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    (cm, cn), (M, N) = cell, lengths
    rows, cols = states.shape
    height = min(12.0, max(2.5, 7.0 * M / N))
    fig = Figure(figsize=(7.0, height + 0.8))
    ax = fig.subplots()
    ax.imshow(states, cmap=ListedColormap(COLOURS), vmin=0, vmax=2, interpolation="nearest", aspect="auto",
              extent=(0, cols * cn, rows * cm, 0))
    ax.set_xlim(0, N)
    ax.set_ylim(M, 0)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(f"key position (tokens{order})")
    ax.set_ylabel(f"query row (tokens{order})")
    ax.tick_params(labelsize=8)
    handles = [Patch(facecolor=c, edgecolor="#555555", label=label) for c, label in zip(COLOURS, labels) if label]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, fontsize=8)
    fig.savefig(path, dpi=120, bbox_inches="tight")
