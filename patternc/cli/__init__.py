"""The `patternc` command line: `check`, `show`, `analyze`, `layout`, `compile`, `simulate`, `calibrate`, `bench`.

    patternc check examples/llm.pat
    patternc show examples/llm.pat --pattern swa --seq-len 4096
    patternc analyze examples/llm.pat --json
    patternc layout examples/llm.pat --pattern dilated --seq-len 32768 --block 128x64
    patternc compile examples/llm.pat --seq-len 32768 --head-dim 128 --config 128x64/w8/s3 -o kernels
    patternc simulate examples/llm.pat --pattern swa --seq-len 32768 --heads 16
    patternc calibrate
    patternc bench examples/llm.pat --pattern swa --seq-len 8192 --backward

`main(argv) -> int` is a plain function (tests call it). Each subcommand is one module holding
one `cmd_<name>(args)` that calls the public API, registered with its argument declarations by
`@command` (`common.py`, with the argument groups the commands share); adding one is a module,
a function and a decorator. Exit status: 0 ok, 1 a pattern error (printed as
`file:line:col: error: ...` with the line and a caret) or another failure (one line; the
traceback with `--debug`), 2 a usage error.

FILE is a `.pat` file, `-` for pattern text on stdin, or a `.py` file whose module-level
`@patternc.jit` functions and `Pattern`s are its patterns (the file is run to find them).
"""
from __future__ import annotations

import argparse
import sys

from .. import __version__
from ..errors import PatternError
from .common import COMMANDS, UsageError

# isort: off
# each module registers its command; this order is the order of `patternc --help`
from . import check, show, analyze, layout, compile, simulate, calibrate, bench  # noqa: F401
# isort: on

__all__ = ["COMMANDS", "build_parser", "main"]


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
