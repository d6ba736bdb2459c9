"""Empty rows: whether some query sees no key (the kernel must define its output), from the
derivation's witness where it has one, else by searching the mask at small and telling lengths."""
from __future__ import annotations

import math

from .numeric import constants
from .reference import CHECK_LIMIT, counts_at
from .result import Derived, SectionAnalysis

SMALL_LENGTHS = (1, 2, 3, 4, 5, 7, 8, 9, 12, 16, 17, 31, 32, 33, 64, 65, 100, 128, 129)


def find_empty_rows(pattern, section, heads, result: SectionAnalysis, found: Derived | None):
    """Fill `result.empty_rows`, `empty_basis` and `empty_example`."""
    exact = result.exact and found is not None
    if exact and found.empty is not None:
        result.empty_rows = True
        result.empty_example = found.empty
        result.empty_basis = "exact: some query sees no key, at every large N" if found.empty_always else \
            f"exact: e.g. at N = {found.empty[0]}"
        return
    if exact and found.kind == "expr":  # a primitive alone (count_alone, count_under_causal)
        result.empty_basis = "exact: every query sees its own block or window"
        return
    if pattern.grid is not None:
        lengths = [n for n in [math.prod(pattern.grid_shape(1, 1))] if n <= CHECK_LIMIT]
    else:
        consts = [c for c in constants(section.expr) if 0 < c <= 1024]
        lengths = sorted(set(SMALL_LENGTHS) | {x for c in consts for x in (c - 1, c, c + 1, 2 * c + 1) if x >= 1})
        lengths = [n for n in lengths if n <= 2048][:40]
    checked = []
    for n in lengths:
        counts = counts_at(pattern, section, heads, n)
        if counts is None:
            continue
        checked.append(n)
        zero = (counts == 0).nonzero()
        if len(zero):
            i, q = (int(x) for x in zero[0])
            result.empty_rows = True
            result.empty_example = (n, heads[i], q)
            result.empty_basis = f"found in the mask at N = {n}"
            return
    shown = _ranges(checked) if checked else "none"
    if exact:
        result.empty_basis = f"exact for N >= {found.n0}" + \
            (f" (multiples of {found.period})" if found.period > 1 else "") + f"; mask checked at N = {shown}"
    else:
        result.empty_basis = f"mask checked at N = {shown}"


def _ranges(ns: list[int]) -> str:
    if len(ns) <= 6:
        return ", ".join(map(str, ns))
    return f"{', '.join(map(str, ns[:4]))}, ... {ns[-1]} ({len(ns)} lengths)"
