"""What the subcommands share: the `@command` registry, reading FILE into patterns, and the
argument groups (one spelling, type and default per option across commands)."""
from __future__ import annotations

import argparse
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


def problem(args):
    """(name, pattern, M, N, heads) of a show/layout command line, with --head checked."""
    name, pattern = pick(load_patterns(args.file), args.pattern, args.file)
    M, N = args.seq_len, args.kv_len or args.seq_len
    heads = args.heads or pattern.default_heads
    if not 0 <= args.head < heads:
        raise UsageError(f"--head {args.head} is not one of the pattern's {heads} heads (0..{heads - 1})")
    return name, pattern, M, N, heads


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def lengths_text(M: int, N: int) -> str:
    return f"M = N = {M}" if M == N else f"M = {M}, N = {N}"


def write_png(draw, path: str, *args) -> None:
    """Run a `patternc.layout.render` image writer; matplotlib is optional, so say how to get it."""
    try:
        draw(path, *args)
    except ModuleNotFoundError as e:
        if e.name != "matplotlib":
            raise
        raise PatternError("--png needs matplotlib", None, "pip install matplotlib") from None
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


def seq_len_argument(p, help="query length M", required=True):
    p.add_argument("--seq-len", "-n", type=positive, required=required, metavar="N", help=help)


def heads_argument(p, help="number of heads (default: the pattern's)", default=None):
    p.add_argument("--heads", type=positive, default=default, metavar="H", help=help)


def lengths_arguments(p, seq_len_help="query length M", required=True):
    """--seq-len, --kv-len and --heads: the problem shape."""
    seq_len_argument(p, seq_len_help, required)
    p.add_argument("--kv-len", type=positive, metavar="N", help="key length (default: the query length)")
    heads_argument(p)


def head_argument(p, help):
    p.add_argument("--head", type=int, default=0, metavar="H", help=help)


def head_dim_argument(p, help="head dimension (default 128)"):
    p.add_argument("--head-dim", type=int, default=128, choices=SUPPORTED_HEAD_DIMS, metavar="D", help=help)


# simulate and calibrate also take torch's names (bfloat16, ...); compile only the short ones
DTYPE_NAMES = (*DTYPES, *DTYPES.values())


def dtype_argument(p, choices=DTYPE_NAMES, help="input dtype (default bf16)"):
    p.add_argument("--dtype", choices=choices, default="bf16", help=help)


def block_argument(p):
    p.add_argument("--block", type=block, default=(128, 64), metavar="MxN",
                   help="tile shape BLOCK_M x BLOCK_N in tokens (default 128x64)")


def order_argument(p):
    p.add_argument("--order", choices=("auto", "natural"), default="auto",
                   help="auto: residue order for dilated/strided patterns; natural: tokens in their own order")


def device_argument(p):
    p.add_argument("--device", default="h100", metavar="NAME|PATH",
                   help="device profile: a shipped name (h100), one `patternc calibrate` wrote, or a JSON path")


def json_argument(p, help="print JSON instead of a table"):
    p.add_argument("--json", action="store_true", help=help)


def png_argument(p, help):
    p.add_argument("--png", metavar="OUT", help=help)
