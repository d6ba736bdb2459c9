"""What the subcommands share: the `@command` registry, reading FILE into patterns, and the
argument groups (one spelling, type and default per option across commands)."""
from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import PatternError, closest
from ..ir import Pattern
from ..runtime.attention import DTYPES, SUPPORTED_HEAD_DIMS


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


MAX_SHOW_PAIRS = 1 << 31  # brute force over M x N pairs; beyond this, ask for a shorter length
# the tile shape `Pattern.layout()` uses unless told otherwise: the command line's default too
DEFAULT_BLOCK = tuple(inspect.signature(Pattern.layout).parameters[n].default for n in ("block_m", "block_n"))
TABLE_WIDTH = 100  # tables fit this many columns (or a narrower terminal) unless --wide
MIN_WRAP = 12  # a wrapped column keeps at least this many characters


# --------------------------------------------------------------------------- reading patterns


def load_patterns(file: str) -> dict[str, Pattern]:
    """The named patterns of FILE: a .pat file, `-` (stdin) or a .py file of @patternc.jit functions."""
    if file == "-":
        from ..grammar import parse_text

        named, bare = parse_text(sys.stdin.read(), "<stdin>")
        return named if bare is None else {"<stdin>": bare}
    if file.endswith(".py"):
        return _python_patterns(file)
    from .. import load

    return load(file)


def _python_patterns(file: str) -> dict[str, Pattern]:
    import runpy

    from ..frontend import JitPattern

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


def chosen(args) -> list[tuple[str, Pattern]]:
    """The (name, pattern) pairs of FILE that --pattern selects: one, or all of them."""
    patterns = load_patterns(args.file)
    return [pick(patterns, args.pattern, args.file)] if args.pattern else list(patterns.items())


def lengths(args, name: str, pattern: Pattern) -> tuple[int, int]:
    """(M, N) of a command line: --seq-len, or the length the pattern's grid fixes (`grid(128, 128)`
    is 16384 tokens, so -n can be left out); --kv-len, or M."""
    fixed = pattern.fixed_length
    M = args.seq_len
    if M is None:
        if fixed is None:
            raise UsageError(f"--seq-len (-n) is required: pattern '{name}' declares no grid that fixes its length")
        M = fixed
    elif fixed is not None and M != fixed:
        grid = ", ".join(map(str, pattern.grid))
        raise PatternError(f"pattern '{name}' lives on grid({grid}): its length is {fixed} tokens, "
                           f"not --seq-len {M}", pattern.span, "leave out --seq-len (-n): the grid fixes it")
    return M, args.kv_len or M


def problem(args):
    """(name, pattern, M, N, heads) of a show/layout command line, with --head checked."""
    name, pattern = pick(load_patterns(args.file), args.pattern, args.file)
    M, N = lengths(args, name, pattern)
    heads = args.heads or pattern.default_heads
    if not 0 <= args.head < heads:
        raise UsageError(f"--head {args.head} is not one of the pattern's {heads} heads (0..{heads - 1})")
    return name, pattern, M, N, heads


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def lengths_text(M: int, N: int) -> str:
    return f"M = N = {M}" if M == N else f"M = {M}, N = {N}"


def progress(iterable, desc: str, total: int | None = None, unit: str = "it"):
    """`iterable` with a progress bar (tqdm) on stderr when stderr is a terminal; else itself."""
    if not sys.stderr.isatty():
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=False, file=sys.stderr, dynamic_ncols=True)


def progress_lines(total: int, desc: str, quiet: bool = False):
    """`say(text)` for a loop that prints one line per step: the line on stdout (none if `quiet`),
    above a progress bar on stderr when stderr is a terminal; `say.close()` ends the bar."""
    bar = progress(None, desc, total=total)
    if bar is None:
        say = (lambda text: None) if quiet else (lambda text: print(text, flush=True))
        say.close = lambda: None
        return say

    def say(text: str) -> None:
        if not quiet:
            bar.write(text, file=sys.stdout)
        bar.update()

    say.close = bar.close
    return say


def table_width() -> int:
    """TABLE_WIDTH, or the terminal's width where stdout is a narrower one."""
    if sys.stdout.isatty():
        import shutil

        return max(40, min(TABLE_WIDTH, shutil.get_terminal_size().columns))
    return TABLE_WIDTH


def fit_table(rows, headers=(), wrap=(), wide=False, width: int | None = None, **options) -> str:
    """`tabulate(rows, headers)`, with the columns `wrap` (indices) wrapped, the widest first,
    until the table fits `width` columns (default `table_width()`): at spaces while that does,
    then through words too, down to MIN_WRAP characters; `wide`: as it comes."""
    from tabulate import tabulate

    text = tabulate(rows, headers=headers, **options)
    ncols = max(map(len, rows), default=0)
    wrap = [i for i in wrap if i < ncols]
    if wide or not wrap:
        return text
    width = width or table_width()
    cells = {i: [str(r[i]) for r in rows if i < len(r)] for i in wrap}
    limits = {i: max(len(line) for c in cells[i] for line in c.splitlines() or [""]) for i in wrap}
    words = {i: max(MIN_WRAP, max(len(w) for c in cells[i] for w in c.split() or [""])) for i in wrap}
    for floors in (words, dict.fromkeys(wrap, MIN_WRAP)):
        for _ in range(4):  # wrapping at spaces can leave a line a little wider than asked: try again
            over = max(map(len, text.splitlines())) - width
            if over <= 0 or all(w <= floors[i] for i, w in limits.items()):
                break
            level = max(limits.values())
            while level > MIN_WRAP and sum(w - min(w, max(level, floors[i])) for i, w in limits.items()) < over:
                level -= 1
            limits = {i: min(w, max(level, floors[i])) for i, w in limits.items()}
            text = tabulate(rows, headers=headers, maxcolwidths=[limits.get(i) for i in range(ncols)], **options)
    return text


def write_png(draw, path: str, *args) -> None:
    """Run a `patternc.layout.render` image writer; matplotlib is optional, so say how to get it."""
    try:
        draw(path, *args)
    except ModuleNotFoundError as e:
        if e.name != "matplotlib":
            raise
        raise PatternError("--png needs matplotlib", None, "pip install 'patternc[plot]' (or matplotlib)") from None
    print(f"wrote {path}")


# --------------------------------------------------------------------------- argument types


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def block(text: str) -> tuple[int, int]:
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


# --------------------------------------------------------------------------- argument groups


def file_argument(p, many=False):
    p.add_argument("files" if many else "file", nargs="+" if many else None, metavar="FILE",
                   help="a .pat file, - for stdin, or a .py file of @patternc.jit predicates")


def pattern_argument(p, help="which pattern of the file (needed if it has several)"):
    p.add_argument("--pattern", "-p", metavar="P", help=help)


def seq_len_argument(p, help="query length M (default: the length the pattern's grid fixes)"):
    p.add_argument("--seq-len", "-n", type=positive, metavar="N", help=help)


def heads_argument(p, help="number of heads (default: the pattern's)", default=None):
    p.add_argument("--heads", type=positive, default=default, metavar="H", help=help)


def lengths_arguments(p, seq_len_help="query length M (needed unless the pattern's grid fixes it)",
                      heads_help="number of heads (default: the pattern's)"):
    """--seq-len, --kv-len and --heads: the problem shape (resolve --seq-len with `lengths`)."""
    seq_len_argument(p, seq_len_help)
    p.add_argument("--kv-len", type=positive, metavar="N", help="key length (default: the query length)")
    heads_argument(p, heads_help)


def head_argument(p, help):
    p.add_argument("--head", type=int, default=0, metavar="H", help=help)


def head_dim_argument(p, help="head dimension (default 128)"):
    p.add_argument("--head-dim", type=int, default=128, choices=SUPPORTED_HEAD_DIMS, metavar="D", help=help)


# simulate and calibrate also take torch's names (bfloat16, ...); compile only the short ones
DTYPE_NAMES = (*DTYPES, *DTYPES.values())


def dtype_argument(p, choices=DTYPE_NAMES, help="input dtype (default bf16)"):
    p.add_argument("--dtype", choices=choices, default="bf16", help=help)


def block_argument(p):
    p.add_argument("--block", type=block, default=DEFAULT_BLOCK, metavar="MxN",
                   help="tile shape BLOCK_M x BLOCK_N in tokens (default {}x{}, as Pattern.layout)".format(*DEFAULT_BLOCK))


def order_argument(p):
    p.add_argument("--order", choices=("auto", "natural", "box"), default="auto",
                   help="auto: residue order for dilated/strided patterns, box order for neighborhoods on 2-D/3-D "
                        "grids where it visits fewer tiles; natural: tokens in their own order; box: box order")


def device_argument(p, default="h100", help="device profile: a shipped name (h100, h200), one `patternc calibrate` "
                                             "wrote, or a JSON path (default h100)"):
    p.add_argument("--device", default=default, metavar="NAME|PATH", help=help)


def json_argument(p, help="print JSON instead of a table"):
    p.add_argument("--json", action="store_true", help=help)


def wide_argument(p):
    p.add_argument("--wide", action="store_true",
                   help=f"every column, unwrapped (default: tables fit {TABLE_WIDTH} columns)")


def png_argument(p, help):
    p.add_argument("--png", metavar="OUT", help=help)
