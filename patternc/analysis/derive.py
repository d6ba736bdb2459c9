"""The derivation: a section's expression, expanded by inclusion-exclusion into signed
conjunctions of atoms (each primitive states its own through `Primitive.count_atoms`), summed
over the rows in closed form (`rows.py`); or a primitive's closed form where it has one only
alone (`count_alone`, `count_under_causal`). Conjunctions with keys drawn at random
(`atoms.sample`) are counted in expectation: the rest's row sum times each draw's probability."""
from __future__ import annotations

import math
from fractions import Fraction

import sympy as sp

from ..ir.expr import Term, evaluate
from ..ir.nodes import Difference, Intersect, Node, Union
from ..ir.pattern import substitute
from ..primitives import Primitive
from . import atoms
from .atoms import Lin, NoClosedForm
from .result import Derived, N
from .rows import sum_rows


def derive(expr: Node, heads: list[int]) -> Derived:
    """The row sum S(N) of `expr`, averaged over `heads`, as an exact polynomial in N (with random
    draws: the expected mean count, a rational function of N)."""
    results = [_derive_head(expr, h) for h in heads]
    P = math.lcm(*(r.period for r in results))
    n0 = max(r.n0 for r in results)
    if results[0].expected:
        count = sp.expand(sp.Add(*(r.count for r in results)) / len(results))
        return Derived("expr", count=count, period=P, n0=n0, cost=results[0].cost, expected=True,
                       reach=results[0].reach)
    # same polynomial in N whatever the period it was derived with
    coeffs = tuple(sum((r.coeffs[i] for r in results), Fraction(0)) / len(results) for i in range(3))
    witnesses = sorted((not r.empty_always, r.empty) for r in results if r.empty is not None)
    found = Derived("poly", coeffs, period=P, n0=n0)
    if witnesses:
        found.empty_always, found.empty = not witnesses[0][0], witnesses[0][1]
    return found


def closed_form(expr: Node, head: int) -> Derived | None:
    """Closed forms of primitives that have one alone but not inside compositions: `x` alone, or
    `c & x` where `c` bounds causally (`causal & topk`)."""
    if isinstance(expr, Intersect):
        for bound, x in ((expr.a, expr.b), (expr.b, expr.a)):
            if isinstance(bound, Primitive) and isinstance(x, Primitive) and bound.bounds_causally():
                found = _ask(x.count_under_causal, x, head)
                if found is not None:
                    return found
        return None
    return _ask(expr.count_alone, expr, head) if isinstance(expr, Primitive) else None


def _ask(hook, node: Primitive, head: int) -> Derived | None:
    """`node.hook(p, atoms)` on the node's constant parameters (None where they aren't)."""
    try:
        p = _constant_params(node, head)
    except NoClosedForm:
        return None
    return hook(p, atoms)


def _derive_head(expr: Node, head: int) -> Derived:
    ie = _ie(expr, head)
    if sum(len(c) for c in ie) > 4 * atoms.MAX_TERMS:
        raise NoClosedForm("too many terms")
    if any(a[0] == "sample" for conj in ie for a in conj):
        return _expected(ie, head, _min_length(expr, head))
    return sum_rows(ie, head, _min_length(expr, head))


def _expected(ie: dict, head: int, min_length: int) -> Derived:
    """The expected row sum of conjunctions with random draws (`atoms.sample`): a conjunction's
    other atoms summed over the rows, times keys / N per family it draws from (a family's smallest
    draw where it draws twice)."""
    groups: dict = {}  # the draws' sizes -> the conjunctions without them
    period, n0, most = 1, min_length, {}
    for conj, coeff in ie.items():
        draws: dict = {}
        for a in conj:
            if a[0] == "sample":
                _, family, keys, step = a
                draws[family] = min(keys, draws.get(family, keys))
                most[family] = max(keys, most.get(family, keys))
                period, n0 = math.lcm(period, step), max(n0, keys)
        rest = frozenset(a for a in conj if a[0] != "sample")
        group = groups.setdefault(tuple(sorted(draws.values())), {})
        group[rest] = group.get(rest, 0) + coeff
    S = sp.Integer(0)
    for sizes, group in groups.items():
        group = {conj: c for conj, c in group.items() if c}
        if not group:
            continue
        found = sum_rows(group, head, n0)
        period, n0 = math.lcm(period, found.period), max(n0, found.n0)
        poly = sum(sp.Rational(c.numerator, c.denominator) * N**i for i, c in enumerate(found.coeffs))
        S += poly * math.prod(sizes) / N ** len(sizes)
    quadratic, linear = sp.limit(S / N**2, N, sp.oo), sp.limit(S / N, N, sp.oo)
    cost = "O(N^2)" if quadratic != 0 else "O(1)" if linear == 0 else "O(N)" if linear <= 1 else "O(N*w)"
    return Derived("expr", count=sp.expand(S / N), period=period, n0=n0, cost=cost, expected=True,
                   reach=2 * sum(most.values()))


def _min_length(expr: Node, head: int) -> int:
    """The N from which every primitive's parameters are valid: neighborhood(K) needs N >= K,
    window(N - 8, 0) needs N >= 8, sink(N - 3) N >= 4."""
    need = 1
    for node in expr.walk():
        if not isinstance(node, Primitive):
            continue
        p = _constant_params(node, head, tuple(node.linear_params))
        need = max(need, node.min_length(p))
        for f, least in node.linear_params.items():
            v = getattr(p, f)
            if isinstance(v, Lin) and v.g < 0:
                raise NoClosedForm(f"{node.name}: {f} shrinks as N grows")
            if isinstance(v, Lin) and v.g > 0:
                need = max(need, -(-(least - v.c) // v.g))
    return need


def _ie(node: Node, head: int) -> dict:
    """The indicator of `node` as a signed sum of conjunctions of atoms."""
    if isinstance(node, Union):
        a, b = _ie(node.a, head), _ie(node.b, head)
        return atoms.add((a, 1), (b, 1), (atoms.mul(a, b), -1))
    if isinstance(node, Intersect):
        return atoms.mul(_ie(node.a, head), _ie(node.b, head))
    if isinstance(node, Difference):
        a, b = _ie(node.a, head), _ie(node.b, head)
        return atoms.add((a, 1), (atoms.mul(a, b), -1))
    if not isinstance(node, Primitive):
        raise NoClosedForm(f"no closed form for {node}")
    p = _constant_params(node, head, tuple(node.linear_params))
    found = node.count_atoms(p, getattr(p, "block", None) or 1, atoms)
    if found is None:
        raise NoClosedForm(f"no closed form for {node.name}")
    return found


def _constant_params(node, head: int, linear=()):
    """The node's parameters as ints on `head` (M = N); the fields named in `linear` may also be
    `Lin` (g*N + c, e.g. window(M - 1, 0)); NoClosedForm for anything else."""
    node = substitute(node, {"h": Term.const(head), "M": Term.var("N")})
    p = node.constant_params()
    for f in node.params_spec():
        v = getattr(node, f.name)
        if isinstance(v, Term) and not v.is_const and f.name in linear:
            setattr(p, f.name, _linear_in_n(v))
        elif v is not None and _has_none(getattr(p, f.name)):
            raise NoClosedForm(f"parameter {f.name} of {node.name} is not a constant")
    return p


def _linear_in_n(t: Term) -> Lin:
    if not t.free_vars() <= {"N"}:
        raise NoClosedForm(f"{t} depends on more than N")
    try:
        c = evaluate(t, {"N": 0})
        g = evaluate(t, {"N": 1}) - c
        if all(evaluate(t, {"N": n}) == g * n + c for n in (2, 3, 7, 64, 1000, 12345)):
            return Lin(g, c)
    except (ZeroDivisionError, TypeError):
        pass
    raise NoClosedForm(f"{t} is not linear in N")


def _has_none(v) -> bool:
    return v is None or isinstance(v, tuple) and any(_has_none(x) for x in v)
