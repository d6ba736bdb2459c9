"""How much a pattern costs, before anything runs: visible keys per query and density as
functions of the length N (self-attention, M = N), the asymptotic cost class, and whether a
query can see no key at all (an empty row, which the kernel must define).

    >>> [a] = analyze(patternc.compile("causal & window(1024)"))
    >>> a.count, a.density_limit, a.cost, a.exact
    (1024 - 523776/N, 1024/N, 'O(N*w)', True)
    >>> a.basis
    'exact for N >= 1024; checked against the mask at N = 1024, 2048'

Exact results come from an analytic derivation: the expression is expanded by
inclusion-exclusion into signed intersections of *atoms* (a key interval `lo(q) <= k <= hi(q)`,
a query interval, a key residue `k // b % m == ...`), the query axis is split by residue
`q = P*Q + r` and into segments on which every max/min is one linear piece, and each segment
is summed in closed form. That gives the total count S(N) as an exact polynomial for N >= N0
(and N a multiple of the period P), cross-checked against the brute-force mask. Parameters may
grow linearly with N (`window(N - M + 1023, M - 1)`, what `@jit` makes of `q - k < 1024`); a
few primitives have closed forms only alone (`pow2`, `random`, `topk`, `causal & topk`,
`neighborhood`).
Everything else (pow2 inside a composition, `predicate`, parameters non-linear in N,
multi-dimensional grids) is measured from the mask at several lengths and fitted, and says
"numeric". Nothing here is approximate without saying so.

Primitives state their own atoms and closed forms (`Primitive.count_atoms`, `count_alone`,
`count_under_causal`, `linear_params`, `min_length`) in the vocabulary of `atoms.py`; a
primitive without them is measured. The modules: `result` (`SectionAnalysis`), `derive`
(inclusion-exclusion), `rows` (summing over rows), `reference` (the mask by rows), `numeric`
(the fit), `empty` (empty rows).
"""
from __future__ import annotations

from ..ir.nodes import Node
from ..ir.pattern import Pattern
from ..primitives import Primitive
from .atoms import NoClosedForm
from .derive import closed_form, derive
from .empty import find_empty_rows
from .numeric import numeric_result
from .reference import mask_rows, routed_data, row_counts
from .result import N, SectionAnalysis, exact_result

__all__ = ["N", "NoClosedForm", "SectionAnalysis", "analyze", "derive", "mask_rows", "routed_data", "row_counts"]


def analyze(pattern: Pattern, heads: int | None = None) -> list[SectionAnalysis]:
    """One `SectionAnalysis` per head section of `pattern` (self-attention, M = N)."""
    out = []
    for section in pattern.sections(heads):
        out.append(_analyze_section(pattern, section))
    return out


def _analyze_section(pattern: Pattern, section) -> SectionAnalysis:
    expr = section.expr
    heads = list(range(section.lo, section.hi + 1))
    # heads that can differ; the others repeat them (head-independent sections: just one)
    distinct = heads if _depends_on_head(expr) else heads[:1]
    found = None
    try:
        found = closed_form(expr, distinct[0]) or (None if pattern.grid is not None else derive(expr, distinct))
    except NoClosedForm:
        found = None
    result = exact_result(pattern, section, distinct, found) if found is not None else None
    if result is None:
        note = "; the derived closed form disagreed with the mask" if found is not None else ""
        found = None
        result = numeric_result(pattern, section, distinct)
        result.basis += note
    find_empty_rows(pattern, section, distinct, result, found)
    return result


def _depends_on_head(expr: Node) -> bool:
    return any(n.depends_on_head() for n in expr.walk() if isinstance(n, Primitive))
