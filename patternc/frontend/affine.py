"""Affine and linear forms of integer terms, for family recognition (`recognize`).

`affine` reads an index-free term as a sum of parts (names, non-linear subterms) with integer
coefficients plus a constant, and `render` writes one back canonically, so that bounds print as
`N - w`, not `-(0 - w)`; `linear` reads a term as a combination of the indices `q`, `k` (or of
their blocks `q // b`) plus an index-free rest.
"""
from __future__ import annotations

from ..ir.expr import Term


def affine(t: Term) -> tuple[dict, int]:
    """An index-free integer term as ({part: coefficient}, constant), linear in its parts (names
    and non-linear subterms such as `h % 16`), so that bounds print as `N - w`, not `-(0 - w)`."""
    if t.is_const:
        return {}, int(t.value)
    if t.op in ("+", "-"):
        (a, x), (b, y) = affine(t.args[0]), affine(t.args[1])
        sign = 1 if t.op == "+" else -1
        out = dict(a)
        for part, c in b.items():
            out[part] = out.get(part, 0) + sign * c
        return {p: c for p, c in out.items() if c}, x + sign * y
    if t.op == "neg":
        a, x = affine(t.args[0])
        return {p: -c for p, c in a.items()}, -x
    if t.op == "*":
        for u, v in (t.args, t.args[::-1]):
            if const(u) is not None:
                a, x = affine(v)
                return {p: u.value * c for p, c in a.items() if u.value * c}, u.value * x
    return {t: 1}, 0


def render(parts: dict, const: int) -> Term:
    """The term of an affine form: positive parts, then negative ones, then the constant."""
    def times(part, c):
        return part if c == 1 else Term("*", (Term.const(c), part))

    pos = sorted(((p, c) for p, c in parts.items() if c > 0), key=lambda x: str(x[0]))
    neg = sorted(((p, -c) for p, c in parts.items() if c < 0), key=lambda x: str(x[0]))
    if pos:
        out = times(*pos[0])
        for p, c in pos[1:]:
            out = Term("+", (out, times(p, c)))
    elif neg and const <= 0:
        p, c = neg.pop(0)
        out = Term("neg", (times(p, c),))
    else:
        out, const = Term.const(const), 0
    for p, c in neg:
        out = Term("-", (out, times(p, c)))
    if const:
        out = Term("+" if const > 0 else "-", (out, Term.const(abs(const))))
    return out


def add(t: Term, c: int) -> Term:
    parts, const = affine(t)
    return render(parts, const + c)


def sub(a: Term, b: Term) -> Term:
    return render(*combine(({}, affine(a)), scaled(({}, affine(b)), -1))[1])


def neg(t: Term) -> Term:
    parts, const = affine(t)
    return render({p: -v for p, v in parts.items()}, -const)


def free(t: Term, names=("q", "k")) -> bool:
    return not (t.free_vars() & set(names))


def const(t: Term, lo=None):
    """The int value of a constant term (>= lo), else None."""
    if t.is_const and not isinstance(t.value, bool) and (lo is None or t.value >= lo):
        return t.value
    return None


def same(a: Term, b: Term) -> bool:
    """Equal as affine forms (`N - M + 0` is `-(M - N)`); anything subtler counts as different."""
    return affine(a) == affine(b)


def linear(t: Term):
    """`t` as ({(index, unit): int coefficient}, rest), where index is q or k, unit None (tokens)
    or a divisor term (`q // unit`), and rest an index-free term. None if not of that form."""
    found = linear_parts(t)
    if found is None:
        return None
    coeffs, rest = found
    return coeffs, render(*rest)


def linear_parts(t: Term):
    if free(t):
        return {}, affine(t)
    if t.op == "var":
        return {(t.args[0], None): 1}, ({}, 0)
    if t.op == "//" and t.args[0].op == "var" and free(t.args[1], ("q", "k", "h")):
        return {(t.args[0].args[0], t.args[1]): 1}, ({}, 0)
    if t.op in ("+", "-"):
        a, b = linear_parts(t.args[0]), linear_parts(t.args[1])
        return None if a is None or b is None else combine(a, scaled(b, 1 if t.op == "+" else -1))
    if t.op == "neg":
        a = linear_parts(t.args[0])
        return None if a is None else scaled(a, -1)
    if t.op == "*":
        for u, v in (t.args, t.args[::-1]):
            if const(u) is not None:
                a = linear_parts(v)
                return None if a is None else scaled(a, u.value)
    return None


def scaled(a, c: int):
    coeffs, (parts, const) = a
    return ({k: c * v for k, v in coeffs.items() if c * v},
            ({p: c * v for p, v in parts.items() if c * v}, c * const))


def combine(a, b):
    (ca, (pa, xa)), (cb, (pb, xb)) = a, b
    coeffs, parts = dict(ca), dict(pa)
    for k, v in cb.items():
        coeffs[k] = coeffs.get(k, 0) + v
    for p, v in pb.items():
        parts[p] = parts.get(p, 0) + v
    return ({k: v for k, v in coeffs.items() if v}, ({p: v for p, v in parts.items() if v}, xa + xb))
