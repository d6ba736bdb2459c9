"""`patternc check FILE...`: parse pattern files and check their patterns."""
from __future__ import annotations

import sys

from ..errors import PatternError
from .common import command, file_argument, load_patterns, plural


def _arguments(p):
    file_argument(p, many=True)


@command("check", "parse pattern files and check their patterns", _arguments)
def cmd_check(args) -> int:
    status = 0
    for file in args.files:
        try:
            patterns = load_patterns(file)
            for p in patterns.values():
                if all(d is not None for _, d in p.params):
                    p.sections()  # substitutes parameters: the errors that need values
                    if p.fixed_length is not None:  # a grid fixes the length: check every parameter at it
                        p.check(p.fixed_length)
        except PatternError as e:
            print(e.format(), file=sys.stderr)  # report it and go on with the other files
            status = 1
            continue
        print(f"{file}: ok: {plural(len(patterns), 'pattern')}")
    return status
