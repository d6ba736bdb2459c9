"""Pictures of a pattern's mask and of a Layout's block map, as text and as images.

    counts, areas, visible = cell_counts(pattern, 4096, 4096, heads=1, head=0, cell=64)
    print("\n".join(mask_text(counts, areas)))           # '#' full cell, '+' partial, '.' empty
    blocks = layout.block_map()[0]                        # int8 [Mt, Nt] of EMPTY, PARTIAL, FULL
    print("\n".join(block_text(downsample(blocks, map_cell(max(blocks.shape))))))
    block_png("map.png", blocks, "swa")                   # needs matplotlib

The mask is counted from the reference mask a band of rows at a time (no M x N tensor); the
block map is the layout's own, down-sampled by taking the max over cells.
"""
from __future__ import annotations

from ..analysis import mask_rows, routed_data
from ..ir import Pattern

MAP_CELLS = 64  # a map's width and height in characters, at most


def map_cell(n: int, cells: int = MAP_CELLS) -> int:
    """The smallest power of two c with ceil(n / c) <= cells: how many units one character covers."""
    cell = 1
    while -(-n // cell) > cells:
        cell *= 2
    return cell


def cell_counts(pattern: Pattern, M: int, N: int, heads: int, head: int, cell: int):
    """Visible pairs per cell of `cell` x `cell` tokens: (counts, areas) int64 [rows, cols], and
    the total, from the reference mask evaluated a band of rows at a time."""
    import torch

    rows, cols = -(-M // cell), -(-N // cell)
    counts = torch.zeros(rows, cols, dtype=torch.int64)
    data = routed_data(pattern, M, N, heads)
    data = {} if data is None else data
    band = cell * max(1, (1 << 22) // (cell * N))
    for q0 in range(0, M, band):
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


def mask_png(path: str, counts, areas, title: str) -> None:
    """The visible share of each cell in grey levels (black: all pairs visible)."""
    fraction = (counts.double() / areas.double()).numpy()
    _save(path, fraction, title, "cell", cmap="Greys", vmin=0, vmax=1)


def block_png(path: str, blocks, title: str) -> None:
    """The block map: black full tiles, grey partial ones, white skipped ones."""
    from matplotlib.colors import ListedColormap

    _save(path, blocks.numpy(), title + "\nblack: full, grey: partial, white: skipped", "tile",
          cmap=ListedColormap(["white", "#999999", "black"]), vmin=0, vmax=2)


def _save(path: str, image, title: str, unit: str, **style) -> None:
    # a bare Figure, not pyplot: no GUI backend and no global state for the caller
    from matplotlib.figure import Figure

    rows, cols = image.shape
    fig = Figure(figsize=(6, 6 * rows / max(1, cols) + 0.6))
    ax = fig.subplots()
    ax.imshow(image, interpolation="nearest", **style)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(f"key {unit}")
    ax.set_ylabel(f"query {unit}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
