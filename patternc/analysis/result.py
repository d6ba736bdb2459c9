"""What the analysis finds: `SectionAnalysis` (one per head section, what `analyze` returns) and
`Derived` (a derivation's row sum), and how a derived closed form becomes a checked result."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import sympy as sp

from .reference import CHECK_LIMIT, mean_count

N = sp.Symbol("N", positive=True, integer=True)


@dataclass
class SectionAnalysis:
    """The analysis of one per-head section (one entry per section of the pattern).

    `count`: mean visible keys per query, a sympy expression in `N` (None if no formula was
    found); `density`: count / N; `density_limit`: the leading term of the density as N grows;
    `cost`: the asymptotic class of the work, `O(N)`, `O(N*w)` (w = `keys_limit` keys per
    query), `O(N log N)`, `O(N^2)` or a measured exponent; `exact`: derived, not fitted;
    `basis`: where and how the result holds; `samples`: mean keys per query measured from the
    mask, by N; `empty_rows`: whether some query sees no key (`empty_example`: (N, head, query)).
    """

    heads: tuple[int, int]
    expr: str
    count: sp.Expr | None
    density: sp.Expr | None
    density_limit: sp.Expr | None
    cost: str
    keys_limit: sp.Expr | None
    exact: bool
    basis: str
    empty_rows: bool
    empty_basis: str
    empty_example: tuple[int, int, int] | None = None
    samples: dict[int, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready: sympy expressions as strings."""

        def s(x):
            return None if x is None else str(x)

        return {
            "heads": list(self.heads), "expr": self.expr, "keys_per_query": s(self.count),
            "density": s(self.density), "density_limit": s(self.density_limit), "cost": self.cost,
            "keys_limit": s(self.keys_limit), "exact": self.exact, "basis": self.basis,
            "empty_rows": self.empty_rows, "empty_basis": self.empty_basis,
            "empty_example": None if self.empty_example is None else dict(zip(("N", "head", "query"),
                                                                              self.empty_example)),
            "samples": {str(n): v for n, v in self.samples.items()},
        }


@dataclass
class Derived:
    """S(N) = sum over rows of visible keys, averaged over heads."""

    kind: str  # "poly": S = sum coeffs[i] * N^i ; "expr": count given directly
    coeffs: tuple = ()
    count: sp.Expr | None = None
    period: int = 1
    n0: int = 1  # valid for N >= n0 (and N a multiple of period)
    cost: str | None = None
    empty: tuple | None = None  # (N, head, query) of an empty row
    empty_always: bool = False  # ... and there is one at every large N
    note: str = ""
    # `count` is a mean over random draws (`atoms.sample`), not this draw's: a draw's count differs
    # from it by at most `reach` (what two draws can change in a row: twice the keys they draw)
    expected: bool = False
    reach: int = 0


def exact_result(pattern, section, heads, found: Derived) -> SectionAnalysis | None:
    """The result of a derived closed form, checked against the mask (None if they disagree)."""
    if found.kind == "poly":
        c0, c1, c2 = (sp.Rational(c.numerator, c.denominator) for c in found.coeffs)
        S = c2 * N**2 + c1 * N + c0
        count = sp.expand(S / N)
        density = sp.expand(S / N**2)
        if c2 != 0:
            limit, cost, keys = c2, "O(N^2)", None
        elif c1 != 0:
            limit, keys = c1 / N, c1
            cost = "O(N)" if c1 <= 1 else "O(N*w)"
        else:
            limit, cost, keys = (c0 / N**2 if c0 else sp.Integer(0)), "O(1)", sp.Integer(0)
    else:
        count = found.count
        density = sp.expand(count / N)
        keys = sp.limit(count, N, sp.oo)
        if keys.is_finite:
            limit = keys / N
        elif found.cost == "O(N^2)":
            limit, keys = sp.limit(density, N, sp.oo), None
        else:
            limit = sp.limit(count / sp.log(N, 2), N, sp.oo) * sp.log(N, 2) / N
            keys = None
        cost = found.cost
    if pattern.grid is not None:
        where = "this grid"
        n_grid = math.prod(pattern.grid_shape(1, 1))
        lengths = [n_grid] if n_grid <= CHECK_LIMIT else []
    else:
        where = f"N >= {found.n0}" + (f", N a multiple of {found.period}" if found.period > 1 else "")
        lengths = _valid_lengths(found, CHECK_LIMIT)
    basis = f"{'expected over the random draws' if found.expected else 'exact'} for {where}" + \
        (f" ({found.note})" if found.note and not found.expected else "")
    # cross-check against the brute-force mask where that is cheap (a draw: within the draws' reach)
    checks = {}
    for n in lengths:
        measured = mean_count(pattern, section, heads, n)
        if measured is None:
            continue
        checks[n] = float(measured)
        off = count.subs(N, n) - sp.Rational(measured.numerator, measured.denominator)
        if abs(off) > found.reach if found.expected else sp.simplify(off) != 0:
            return None  # the derivation disagrees with the reference: don't trust it
    if found.expected and checks:
        basis += f"; this draw has {', '.join(f'{v:.5g}' for v in checks.values())} at N = {', '.join(map(str, checks))}"
    else:
        basis += f"; checked against the mask at N = {', '.join(map(str, checks))}" if checks else \
            "; not checked against the mask (N too large for it)"
    return SectionAnalysis((section.lo, section.hi), str(section.expr), count, density, limit, cost, keys,
                           not found.expected, basis, False, "", samples=checks)


def _valid_lengths(found: Derived, limit: int) -> list[int]:
    """Two lengths where the closed form holds, for the cross-check: N0 and about 2 N0."""
    P = found.period
    first = max(-(-found.n0 // P) * P, P)
    second = first + P * max(1, first // P)
    return [n for n in (first, second) if n <= limit]
