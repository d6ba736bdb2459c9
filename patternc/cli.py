"""The `patternc` command line: `check`, `show`, `analyze`, `layout`, `compile`.

    patternc check examples/llm.pat
    patternc show examples/llm.pat --pattern swa --seq-len 4096
    patternc analyze examples/llm.pat --json
    patternc layout examples/llm.pat --pattern dilated --seq-len 32768 --block 128x64
    patternc compile examples/llm.pat --seq-len 32768 --head-dim 128 --config 128x64/w8/s3 -o kernels

`main(argv) -> int` is a plain function (tests call it). Each subcommand is one `cmd_<name>(args)`
that calls the public API, registered with its argument declarations by `@command`; adding one is
a function and a decorator. Exit status: 0 ok, 1 a pattern error (printed as
`file:line:col: error: ...` with the line and a caret) or another failure (one line; the
traceback with `--debug`), 2 a usage error.

FILE is a `.pat` file, `-` for pattern text on stdin, or a `.py` file whose module-level
`@patternc.jit` functions and `Pattern`s are its patterns (the file is run to find them).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Callable

from . import __version__
from .errors import PatternError, closest
from .ir import Pattern
from .sim import command as sim_command


class UsageError(Exception):
    """A command line that parses but makes no sense (exit status 2)."""


@dataclass(frozen=True)
class Command:
    name: str
    run: Callable[[argparse.Namespace], int]
    arguments: Callable[[argparse.ArgumentParser], None]
    help: str


COMMANDS: dict[str, Command] = {}


def command(name: str, help: str, arguments: Callable[[argparse.ArgumentParser], None] | None = None):
    """Register `cmd_<name>(args) -> int` as a subcommand; `arguments(parser)` declares its options."""

    def register(run):
        COMMANDS[name] = Command(name, run, arguments or (lambda parser: None), help)
        return run

    return register


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="patternc", description="A compiler for sparse attention patterns.")
    parser.add_argument("--version", action="version", version=f"patternc {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: `patternc --debug show ...` must not be reset by the subcommand's default
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for c in COMMANDS.values():
        p = sub.add_parser(c.name, help=c.help, description=c.help, parents=[common])
        c.arguments(p)
        p.set_defaults(run=c.run, parser=p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # usage errors (2), --help and --version (0)
        return e.code if isinstance(e.code, int) else 2
    try:
        return args.run(args)
    except PatternError as e:
        print(e.format(), file=sys.stderr)
        return 1
    except UsageError as e:
        args.parser.print_usage(sys.stderr)
        print(f"{args.parser.prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (| head): stop quietly, as the Python docs advise
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as e:  # noqa: BLE001 - one line for people; --debug for the traceback
        if args.debug:
            raise
        print(f"patternc: error: {type(e).__name__}: {e} (run with --debug for the traceback)", file=sys.stderr)
        return 1


# --------------------------------------------------------------------------- reading patterns


def load_patterns(file: str) -> dict[str, Pattern]:
    """The named patterns of FILE: a .pat file, `-` (stdin) or a .py file of @patternc.jit functions."""
    if file == "-":
        from .grammar import parse_text

        named, bare = parse_text(sys.stdin.read(), "<stdin>")
        return named if bare is None else {"<stdin>": bare}
    if file.endswith(".py"):
        return _python_patterns(file)
    from . import load

    return load(file)


def _python_patterns(file: str) -> dict[str, Pattern]:
    import runpy

    from .frontend import JitPattern

    try:
        scope = runpy.run_path(file, run_name="__patternc__")
    except OSError as e:
        raise PatternError(f"can't read {file}: {e.strerror}") from None
    found = {name: v.pattern if isinstance(v, JitPattern) else v for name, v in scope.items()
             if isinstance(v, (JitPattern, Pattern)) and not name.startswith("_")}
    if not found:
        raise PatternError(f"{file} defines no patterns", None,
                           "decorate predicates with @patternc.jit at module level")
    return found


def pick(patterns: dict[str, Pattern], name: str | None, file: str) -> tuple[str, Pattern]:
    if name is not None:
        if name not in patterns:
            guess = closest(name, patterns)
            raise PatternError(f"{file} has no pattern named '{name}'", None,
                               f"did you mean '{guess}'?" if guess else f"its patterns: {', '.join(patterns)}")
        return name, patterns[name]
    if len(patterns) == 1:
        return next(iter(patterns.items()))
    raise UsageError(f"{file} defines {len(patterns)} patterns ({', '.join(patterns)}); choose one with --pattern")


def _file_argument(parser: argparse.ArgumentParser, many=False):
    parser.add_argument("files" if many else "file", nargs="+" if many else None, metavar="FILE",
                        help="a .pat file, - for stdin, or a .py file of @patternc.jit predicates")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


# --------------------------------------------------------------------------- check


def _check_arguments(p):
    _file_argument(p, many=True)


@command("check", "parse pattern files and check their patterns", _check_arguments)
def cmd_check(args) -> int:
    status = 0
    for file in args.files:
        try:
            patterns = load_patterns(file)
            for p in patterns.values():
                if all(d is not None for _, d in p.params):
                    p.sections()  # substitutes parameters: the errors that need values
        except PatternError as e:
            print(e.format(), file=sys.stderr)
            status = 1
            continue
        print(f"{file}: ok: {_plural(len(patterns), 'pattern')}")
    return status


# --------------------------------------------------------------------------- show


def _show_arguments(p):
    _file_argument(p)
    p.add_argument("--pattern", "-p", metavar="P", help="which pattern of the file (needed if it has several)")
    p.add_argument("--seq-len", "-n", type=_positive, required=True, metavar="N", help="query length M")
    p.add_argument("--kv-len", type=_positive, metavar="N", help="key length (default: the query length)")
    p.add_argument("--heads", type=_positive, metavar="H", help="number of heads (default: the pattern's)")
    p.add_argument("--head", type=int, default=0, metavar="H", help="which head to draw (default 0)")
    p.add_argument("--cell", type=_positive, metavar="C",
                   help="tokens per map character, C x C (default: the smallest power of two giving <= 64 columns)")
    p.add_argument("--png", metavar="OUT", help="also write the map as an image (needs matplotlib)")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


MAX_SHOW_PAIRS = 1 << 31  # brute force over M x N pairs; beyond this, ask for a shorter length


def _problem(args):
    """(name, pattern, M, N, heads) of a show/layout command line, with --head checked."""
    name, pattern = pick(load_patterns(args.file), args.pattern, args.file)
    M, N = args.seq_len, args.kv_len or args.seq_len
    heads = args.heads or pattern.default_heads
    if not 0 <= args.head < heads:
        raise UsageError(f"--head {args.head} is not one of the pattern's {heads} heads (0..{heads - 1})")
    return name, pattern, M, N, heads


@command("show", "draw a pattern's mask as an ASCII map ('#' full cell, '+' partial, '.' empty)", _show_arguments)
def cmd_show(args) -> int:
    name, pattern, M, N, heads = _problem(args)
    if M * N > MAX_SHOW_PAIRS:
        raise UsageError(f"{M} x {N} is too large to draw from the brute-force mask; use a shorter --seq-len")
    cell = args.cell or _default_cell(N)
    counts, areas, visible = cell_counts(pattern, M, N, heads, args.head, cell)
    section = next(s for s in pattern.sections(heads) if s.lo <= args.head <= s.hi)
    lengths = f"M = N = {M}" if M == N else f"M = {M}, N = {N}"
    print(f"{name}: {section.expr}")
    note = " (routed: blocks chosen for random q, k)" if pattern.is_routed else ""
    print(f"{lengths}, head {args.head} of {heads}, cell {cell}x{cell} tokens{note}")
    for line in ascii_map(counts, areas):
        print(line)
    print(f"visible: {visible} of {M * N} pairs ({100 * visible / (M * N):.2f}%)")
    if args.png:
        _write_png(args.png, counts, areas, f"{name}: {section.expr}\n{lengths}, head {args.head}, cell {cell}")
        print(f"wrote {args.png}")
    return 0


def _default_cell(N: int) -> int:
    cell = 1
    while -(-N // cell) > 64:
        cell *= 2
    return cell


def cell_counts(pattern: Pattern, M: int, N: int, heads: int, head: int, cell: int):
    """Visible pairs per cell of `cell` x `cell` tokens: (counts, areas) int64 [rows, cols], and
    the total, from the reference mask evaluated a band of rows at a time."""
    import torch

    from .analysis import mask_rows, routed_data

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


def ascii_map(counts, areas) -> list[str]:
    """'#' where every pair of the cell is visible, '.' where none is, '+' otherwise."""
    chars = []
    for crow, arow in zip(counts.tolist(), areas.tolist()):
        chars.append("".join("." if c == 0 else "#" if c == a else "+" for c, a in zip(crow, arow)))
    return chars


def _write_png(path: str, counts, areas, title: str):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PatternError("--png needs matplotlib", None, "pip install matplotlib") from None
    fraction = (counts.double() / areas.double()).numpy()
    fig, ax = plt.subplots(figsize=(6, 6 * fraction.shape[0] / max(1, fraction.shape[1]) + 0.6))
    ax.imshow(fraction, cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("key cell")
    ax.set_ylabel("query cell")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- analyze


def _analyze_arguments(p):
    _file_argument(p)
    p.add_argument("--pattern", "-p", metavar="P", help="analyze only this pattern (default: all of the file)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--predict", metavar="DEVICE", nargs="?", const="h100",
                   help="also the simulator's predicted speedup over dense as a function of N and the "
                        "break-even length on DEVICE (default h100; 16 heads, head_dim 128, bf16)")


@command("analyze", "visible keys per query, density and cost as functions of N (self-attention)", _analyze_arguments)
def cmd_analyze(args) -> int:
    from .analysis import analyze

    patterns = load_patterns(args.file)
    chosen = [pick(patterns, args.pattern, args.file)] if args.pattern else list(patterns.items())
    results = [(name, analyze(p)) for name, p in chosen]
    predictions = {}
    if args.predict:
        from .sim.formulas import closed_form

        for name, p in chosen:
            predictions[name] = closed_form(p, heads=p.default_heads if isinstance(p.body, tuple) else 16,
                                            device=args.predict)
    if args.json:
        out = [{"pattern": name, "sections": [a.to_dict() for a in sections],
                **({"prediction": predictions[name].to_dict() if predictions[name] else None} if args.predict else {})}
               for name, sections in results]
        print(json.dumps({"file": args.file, "patterns": out}, indent=2))
        return 0
    from tabulate import tabulate

    rows = []
    for name, sections in results:
        for a in sections:
            heads = str(a.heads[0]) if a.heads[0] == a.heads[1] else f"{a.heads[0]}..{a.heads[1]}"
            empty = "no" if not a.empty_rows else \
                "yes" + (f" (N={a.empty_example[0]}, q={a.empty_example[2]})" if a.empty_example else "")
            keys = _short(a.count)
            if a.count is None and a.samples:  # no formula: say what was measured
                n = max(a.samples)
                keys = f"~{a.samples[n]:.5g} at N={n}"
            rows.append([name, heads, keys, _short(a.density_limit), a.cost, empty,
                         a.basis.split(";")[0]])
    print(tabulate(rows, headers=["pattern", "heads", "keys/query", "density ~", "cost", "empty rows", "result"]))
    print("\nkeys/query: mean visible keys per query at length N (M = N); density ~: leading term as N grows")
    if args.predict:
        rows = [[name, "no closed form (grid, routed or not polynomial)"] if f is None else
                [name, _short(f.speedup), f"N >= {f.valid_from}, N % {f.step} == 0",
                 "none up to 2^24" if f.break_even is None else f.break_even, f.config]
                for name, f in predictions.items()]
        print(f"\npredicted speedup over dense on {args.predict} (simulator, 16 heads, head_dim 128, bf16):")
        print(tabulate(rows, headers=["pattern", "speedup(N)", "valid for", "break-even N", "config"]))
    return 0


def _short(expr) -> str:
    """For people: log2(N) instead of log(N)/log(2), ^ for powers."""
    if expr is None:
        return "?"
    import sympy as sp

    from .analysis import N

    expr = sp.expand(expr.subs(sp.log(N), sp.log(2) * sp.Function("log2")(N)))
    return str(expr).replace("**", "^")


# --------------------------------------------------------------------------- layout


def _block(text: str) -> tuple[int, int]:
    """`128x64` -> (128, 64); `64` -> (64, 64)."""
    parts = text.lower().split("x")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected BLOCK_MxBLOCK_N like 128x64, got {text!r}")
    return values


def _lengths_arguments(p):
    p.add_argument("--seq-len", "-n", type=_positive, required=True, metavar="N", help="query length M")
    p.add_argument("--kv-len", type=_positive, metavar="N", help="key length (default: the query length)")
    p.add_argument("--heads", type=_positive, metavar="H", help="number of heads (default: the pattern's)")


def _layout_arguments(p):
    _file_argument(p)
    p.add_argument("--pattern", "-p", metavar="P", help="which pattern of the file (needed if it has several)")
    _lengths_arguments(p)
    p.add_argument("--block", type=_block, default=(128, 64), metavar="MxN",
                   help="tile shape BLOCK_M x BLOCK_N in tokens (default 128x64)")
    p.add_argument("--order", choices=("auto", "natural"), default="auto",
                   help="auto: residue order for dilated/strided patterns; natural: tokens in their own order")
    p.add_argument("--head", type=int, default=0, metavar="H", help="which head's block map to draw (default 0)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables and a map")
    p.add_argument("--png", metavar="OUT", help="also write the block map as an image (needs matplotlib)")


MAP_CELLS = 64  # the ASCII block map's width and height before it is downsampled
EMPTY_ROWS_SHOWN = 8


@command("layout", "the tiles a kernel visits: density, full/partial/empty counts, empty rows and the block map",
         _layout_arguments)
def cmd_layout(args) -> int:
    from .analysis import routed_data

    name, pattern, M, N, heads = _problem(args)
    bm, bn = args.block
    data = routed_data(pattern, M, N, heads) or {}
    layout = pattern.layout(M, N, heads=heads, block_m=bm, block_n=bn, order=args.order, **data)
    empty = _empty_rows(layout, pattern)
    blocks = layout.block_map()
    H, Mt, Nt = layout.shape
    perm = layout.permutation
    if args.json:
        out = {"file": args.file, "pattern": name, "text": str(pattern), "M": M, "N": N, "heads": H,
               "block": [bm, bn], "tiles_per_head": [Mt, Nt], "routed": pattern.is_routed,
               "residue": None if perm is None else {"modulus": perm.modulus, "class_len": perm.class_len},
               "counts": layout.counts, "density": layout.density,
               "ideal_speedup": None if layout.density == 0 else layout.ideal_speedup,
               "partial_share": layout.summary()["partial_share"], "refined_tiles": layout.refined_tiles,
               "empty_rows": None if empty is None else
               [{"head": h, "count": len(rows), "first": rows[:EMPTY_ROWS_SHOWN].tolist()}
                for h, rows in enumerate(empty)]}
        if Mt <= MAP_CELLS and Nt <= MAP_CELLS:  # small: the whole map, one list of rows per head
            out["block_map"] = [_map_rows(blocks[h]) for h in range(H)]
        print(json.dumps(out, indent=2))
        return 0
    _print_layout(name, pattern, layout, empty, blocks[args.head], args.head)
    if args.png:
        _write_block_png(args.png, blocks[args.head], f"{name}: {M} x {N}, {bm}x{bn} tiles, head {args.head}")
        print(f"wrote {args.png}")
    return 0


def _empty_rows(layout, pattern):
    """Per head, the query rows that see no key; None where that is too costly or data-dependent."""
    visited = layout.counts["full"] + layout.counts["partial"]
    if pattern.is_routed or visited * layout.block_m * layout.block_n > MAX_SHOW_PAIRS:
        return None
    return layout.empty_rows


def _print_layout(name, pattern, layout, empty, blocks, head):
    from tabulate import tabulate

    H, Mt, Nt = layout.shape
    c = layout.counts
    perm = layout.permutation
    sections = pattern.sections(H)
    print(f"{name}: {sections[0].expr}" if len(sections) == 1 else
          f"{name}:\n" + "\n".join(f"    {s}" for s in sections))
    lengths = f"M = N = {layout.M}" if layout.M == layout.N else f"M = {layout.M}, N = {layout.N}"
    note = " (routed: blocks chosen for random q, k)" if pattern.is_routed else ""
    print(f"{lengths}, {_plural(H, 'head')}, tiles {layout.block_m}x{layout.block_n} "
          f"({Mt} x {Nt} per head){note}\n")
    visited = c["full"] + c["partial"]
    rows = [
        ["density", f"{layout.density:.4f}  ({visited} of {c['total']} tiles visited)"],
        ["ideal speedup", "inf (no tile visited)" if layout.density == 0 else f"{layout.ideal_speedup:.2f}x"],
        ["full tiles", c["full"]],
        ["partial tiles", f"{c['partial']}  ({100 * c['partial'] / visited if visited else 0:.1f}% of visited)"],
        ["empty tiles", c["empty"]],
        ["refined tiles", f"{layout.refined_tiles}  (undecided by interval arithmetic, split until decided)"],
        ["token order", "natural" if perm is None else
         f"residue classes mod {perm.modulus} ({perm.modulus} classes of {perm.class_len} tokens; "
         f"a tile reads rows {perm.modulus} apart)"],
    ]
    if empty is None:
        rows.append(["empty rows", "not checked" + (" (routed: depends on q, k)" if pattern.is_routed else
                                                   " (too many visited pairs; use a shorter --seq-len)")])
    elif not any(len(e) for e in empty):
        rows.append(["empty rows", "none"])
    else:
        rows.append(["empty rows", f"{sum(len(e) for e in empty)} over all heads (output 0, LSE -inf)"])
    print(tabulate(rows, tablefmt="plain"))
    if empty is not None and any(len(e) for e in empty):
        print()
        groups = _group_heads([tuple(e.tolist()) for e in empty])
        table = [[heads, len(rows), _first(rows)] for heads, rows in groups if rows]
        print(tabulate(table, headers=["heads", "empty rows", "first rows (tokens)"]))
    cell = 1
    while -(-Mt // cell) > MAP_CELLS or -(-Nt // cell) > MAP_CELLS:
        cell *= 2
    order = "" if perm is None else ", tiles in residue order"
    scale = "" if cell == 1 else f"; downsampled: each character is the max of {cell}x{cell} tiles"
    print(f"\nblock map, head {head} ('#' full, '+' partial, '.' empty; rows: query tiles, columns: key tiles"
          f"{order}{scale}):")
    for line in _map_rows(_downsample(blocks, cell)):
        print(line)


def _group_heads(values: list) -> list[tuple[str, object]]:
    """[(heads "lo..hi", value)] for runs of consecutive heads with one value."""
    out, lo = [], 0
    for h in range(1, len(values) + 1):
        if h == len(values) or values[h] != values[lo]:
            out.append((str(lo) if lo == h - 1 else f"{lo}..{h - 1}", values[lo]))
            lo = h
    return out


def _first(rows) -> str:
    shown = ", ".join(map(str, rows[:EMPTY_ROWS_SHOWN]))
    return shown + (", ..." if len(rows) > EMPTY_ROWS_SHOWN else "")


def _downsample(blocks, cell: int):
    """Max over cell x cell tiles (full beats partial beats empty)."""
    if cell == 1:
        return blocks
    import torch

    Mt, Nt = blocks.shape
    padded = torch.nn.functional.pad(blocks.to(torch.float32)[None], (0, -Nt % cell, 0, -Mt % cell))
    return torch.nn.functional.max_pool2d(padded, cell)[0].to(torch.int8)


def _map_rows(blocks) -> list[str]:
    chars = ".+#"  # EMPTY, PARTIAL, FULL
    return ["".join(chars[v] for v in row) for row in blocks.tolist()]


def _write_block_png(path: str, blocks, title: str):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.colors import ListedColormap
    except ImportError:
        raise PatternError("--png needs matplotlib", None, "pip install matplotlib") from None
    Mt, Nt = blocks.shape
    fig, ax = plt.subplots(figsize=(6, 6 * Mt / max(1, Nt) + 0.6))
    ax.imshow(blocks.numpy(), cmap=ListedColormap(["white", "#999999", "black"]), vmin=0, vmax=2,
              interpolation="nearest")
    ax.set_title(title + "\nblack: full, grey: partial, white: skipped", fontsize=9)
    ax.set_xlabel("key tile")
    ax.set_ylabel("query tile")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- compile


def _config(text: str) -> dict:
    from .aot import parse_config

    try:
        return parse_config(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _compile_arguments(p):
    from .aot import DTYPES
    from .runtime.attention import SUPPORTED_HEAD_DIMS

    _file_argument(p)
    p.add_argument("--pattern", "-p", metavar="P", help="compile only this pattern (default: all of the file)")
    _lengths_arguments(p)
    p.add_argument("--head-dim", type=int, default=128, choices=SUPPORTED_HEAD_DIMS, metavar="D",
                   help=f"head dimension, one of {', '.join(map(str, SUPPORTED_HEAD_DIMS))} (default 128)")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="bf16", help="input dtype (default bf16)")
    p.add_argument("--config", type=_config, metavar="MxN/wW/sS",
                   help="tile shape, warps and stages, e.g. 128x64/w8/s3 (default: the GPU default for D, dtype)")
    p.add_argument("--memory", choices=("pointers", "tma"), default="pointers",
                   help="pointers (any GPU, the interpreter) or tma (Hopper tensor descriptors)")
    p.add_argument("--order", choices=("auto", "natural"), default="auto",
                   help="auto: residue order for dilated/strided patterns; natural: tokens in their own order")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="directory to write <pattern>.py and .md into")


@command("compile", "write standalone modules (torch + triton only) running each pattern for one problem shape",
         _compile_arguments)
def cmd_compile(args) -> int:
    from .aot import build_module, config_text

    patterns = load_patterns(args.file)
    chosen = [pick(patterns, args.pattern, args.file)] if args.pattern else list(patterns.items())
    config = dict(args.config or {}, memory=args.memory, order=args.order)
    status, written = 0, 0
    for name, pattern in chosen:
        if pattern.is_routed and len(chosen) > 1:
            print(f"skipped {name}: routed patterns (topk) run through patternc.attention, not as standalone "
                  "modules", file=sys.stderr)
            continue
        try:
            built = build_module(pattern, args.seq_len, args.kv_len, args.heads, args.head_dim, args.dtype,
                                 config, name)
            path = built.write(args.output)
        except PatternError as e:
            if len(chosen) == 1:
                raise
            print(e.format(), file=sys.stderr)  # report it and go on with the file's other patterns
            status = 1
            continue
        written += 1
        layout = built.layout
        speedup = "inf" if layout.density == 0 else f"{layout.ideal_speedup:.2f}x"
        print(f"wrote {path} ({built.name}.md): density {layout.density:.4f}, ideal speedup {speedup}, "
              f"{config_text(built.config)} {args.memory}")
    if not written and status == 0:
        print(f"patternc: error: {args.file} has no pattern that can be compiled yet", file=sys.stderr)
        return 1
    return status


@command("simulate", "predict a pattern's kernel time and speedup over dense and FlexAttention "
         "(--sweep ranks values and tile configs)", sim_command.add_arguments)
def cmd_simulate(args) -> int:
    return sim_command.run(args)  # the model loads only when the command runs


@command("calibrate", "measure a simulator device profile on this GPU (microbenchmarks, under a minute)",
         sim_command.add_calibrate_arguments)
def cmd_calibrate(args) -> int:
    return sim_command.run_calibrate(args)
