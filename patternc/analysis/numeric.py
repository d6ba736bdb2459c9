"""Measured results: where no closed form is found, mean keys per query from the mask at several
lengths, fitted exactly by a polynomial (or N log N) row sum when one hits every point, else a
cost class read from the growth."""
from __future__ import annotations

import math

import sympy as sp

from ..ir.expr import Term
from ..ir.nodes import Node
from .reference import CHECK_LIMIT, mean_count
from .result import N, SectionAnalysis


def constants(expr: Node) -> list[int]:
    """The integer constants of the parameters in `expr` (their size says which lengths are telling)."""
    out = []
    for n in expr.walk():
        for f in getattr(n, "params_spec", lambda: [])():
            v = getattr(n, f.name)
            for t in v if isinstance(v, tuple) else (v,):
                if isinstance(t, Term):
                    out += [abs(int(x.value)) for x in _subterms(t) if x.is_const and not isinstance(x.value, bool)]
    return out


def _subterms(t: Term):
    yield t
    if t.op not in ("const", "var"):
        for a in t.args:
            if isinstance(a, Term):
                yield from _subterms(a)


def numeric_result(pattern, section, heads) -> SectionAnalysis:
    """A section's result measured from the mask (and fitted where a formula hits every point)."""
    expr = section.expr
    notes = [" with random q, k"] if pattern.is_routed else []
    if len(heads) > 4:  # head-dependent patterns: measure four heads spread over the section
        heads = [heads[i * (len(heads) - 1) // 3] for i in range(4)]
        notes.append(f" on heads {', '.join(map(str, heads))}")
    if pattern.grid is not None:
        n = math.prod(pattern.grid_shape(1, 1))
        value = mean_count(pattern, section, heads, n) if n <= 4 * CHECK_LIMIT else None
        count = None if value is None else sp.Rational(value.numerator, value.denominator)
        basis = f"numeric: measured from the mask at the grid's N = {n}" if value is not None else \
            f"unknown: the grid's N = {n} is too large for the brute-force mask"
        return SectionAnalysis((section.lo, section.hi), str(expr), count,
                               None if count is None else count / n, None, "n/a (fixed grid)", None, False,
                               basis + "".join(notes), False, "", samples={} if value is None else {n: float(value)})
    big = max(constants(expr) + [1])
    start = max(64, 1 << (big - 1).bit_length())
    lengths = [start << i for i in range(5) if start << i <= CHECK_LIMIT]
    if len(lengths) < 4:
        lengths = [CHECK_LIMIT >> i for i in range(4, -1, -1)]
        notes.append(f"; the pattern's constants (up to {big}) are not small against these lengths")
    samples = {}
    for n in lengths:
        v = mean_count(pattern, section, heads, n)
        if v is not None:
            samples[n] = v
    count, cost, limit, keys, how = _fit(samples)
    basis = f"numeric: {how} the mask at N = {', '.join(map(str, samples))}{''.join(notes)}"
    density = None if count is None else sp.expand(count / N)
    return SectionAnalysis((section.lo, section.hi), str(expr), count, density, limit, cost, keys, False, basis,
                           False, "", samples={n: float(v) for n, v in samples.items()})


def _fit(samples: dict):
    """(count formula or None, cost, density limit, keys limit, how) from measured mean counts.

    Tries row sums S(N) = c0 + c1 N + c2 N^2, then with N log2 N (and log2 N) terms: solved
    exactly through the first points and kept only if it also hits every other point."""
    ns = sorted(samples)
    S = {n: sp.Rational(samples[n].numerator, samples[n].denominator) * n for n in ns}
    log2 = sp.log(N, 2)
    bases = [((1, N, N**2), "quadratic"), ((1, N, N * log2), "NlogN"), ((1, log2, N, N * log2), "NlogN")]
    powers_of_two = all(n & (n - 1) == 0 for n in ns)
    for basis, kind in bases:
        if len(ns) <= len(basis) or kind == "NlogN" and not powers_of_two:
            continue
        at = [[sp.Integer(n) if b is N else sp.Integer(n * n) if b == N**2 else
               sp.Integer(n * (n.bit_length() - 1)) if b == N * log2 else
               sp.Integer(n.bit_length() - 1) if b == log2 else sp.Integer(1) for b in basis] for n in ns]
        k = len(basis)
        try:
            sol = sp.Matrix(at[:k]).LUsolve(sp.Matrix([S[n] for n in ns[:k]]))
        except (ValueError, ZeroDivisionError):
            continue
        if any(sum(c * a for c, a in zip(sol, row)) != S[n] for row, n in zip(at[k:], ns[k:])):
            continue
        coeff = dict(zip(basis, sol))
        count = sp.expand(sum(c * b for b, c in coeff.items()) / N)
        how = f"fitted exactly to (and verified at {', '.join(map(str, ns[k:]))})"
        if kind == "NlogN" and coeff[N * log2] != 0:
            return count, "O(N log N)", coeff[N * log2] * log2 / N, None, how
        if coeff.get(N**2, 0) != 0:
            return count, "O(N^2)", coeff[N**2], None, how
        keys = coeff[N]
        return count, ("O(N)" if keys <= 1 else "O(N*w)"), keys / N, keys, how
    how = "measured from"
    if len(ns) < 3:
        return None, "unknown", None, None, how
    c = [float(samples[n]) for n in ns]
    if c[-1] <= 0:
        return None, "O(1)", None, None, how
    slope = math.log(c[-1] / c[-2]) / math.log(ns[-1] / ns[-2])
    steps = [b - a for a, b in zip(c[-3:], c[-2:])]  # growth per doubling of N
    if slope > 0.9:
        cost = "O(N^2)"
    elif steps[0] > 0.5 and abs(steps[1] - steps[0]) <= 0.25 * steps[0]:
        cost = "~O(N log N)"
    elif slope < 0.1:
        cost = "O(N*w)"
    else:
        cost = f"~O(N^{1 + slope:.2f})"
    return None, cost, None, None, how
