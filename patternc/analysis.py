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
grow linearly with N (`window(M - 1, 0)`, what `@jit` makes of `q >= k`); a few primitives
have closed forms only alone (`pow2`, `random`, `topk`, `causal & topk`, `neighborhood`).
Everything else (pow2 inside a composition, `predicate`, parameters non-linear in N,
multi-dimensional grids) is measured from the mask at several lengths and fitted, and says
"numeric". Nothing here is approximate without saying so.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

import sympy as sp

from .errors import PatternError
from .ir.expr import Term
from .ir.nodes import Difference, Intersect, Node, Union
from .ir.pattern import Pattern, substitute, under_causal

N = sp.Symbol("N", positive=True, integer=True)
MAX_PERIOD = 4096  # residue classes of q the derivation walks; beyond this, measure instead
MAX_TERMS = 512  # inclusion-exclusion terms
CHECK_LIMIT = 4096  # largest N the brute-force cross-check and the numeric fit evaluate
SMALL_LENGTHS = (1, 2, 3, 4, 5, 7, 8, 9, 12, 16, 17, 31, 32, 33, 64, 65, 100, 128, 129)


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


def analyze(pattern: Pattern, heads: int | None = None) -> list[SectionAnalysis]:
    """One `SectionAnalysis` per head section of `pattern` (self-attention, M = N)."""
    out = []
    for section in pattern.sections(heads):
        out.append(_analyze_section(pattern, section))
    return out


# --------------------------------------------------------------------------- one section


def _analyze_section(pattern: Pattern, section) -> SectionAnalysis:
    expr = section.expr
    heads = list(range(section.lo, section.hi + 1))
    # heads that can differ; the others repeat them (head-independent sections: just one)
    distinct = heads if _depends_on_head(expr) else heads[:1]
    found = None
    try:
        found = _lone(expr, distinct[0]) or (None if pattern.grid is not None else _derive(expr, distinct))
    except _NoClosedForm:
        found = None
    result = _exact_result(pattern, section, distinct, found) if found is not None else None
    if result is None:
        note = "; the derived closed form disagreed with the mask" if found is not None else ""
        found = None
        result = _numeric_result(pattern, section, distinct)
        result.basis += note
    _find_empty_rows(pattern, section, distinct, result, found)
    return result


def _depends_on_head(expr: Node) -> bool:
    from .primitives import Primitive

    for n in expr.walk():
        if isinstance(n, Primitive):
            if getattr(n, "per_head_tables", False) or n.name in ("random", "topk"):
                return True
            for f in n.params_spec():
                if "h" in _free_vars(getattr(n, f.name)):
                    return True
    return False


def _free_vars(v) -> set:
    if isinstance(v, Term):
        return v.free_vars()
    if isinstance(v, tuple):
        return set().union(set(), *(_free_vars(x) for x in v))
    return set()


@dataclass
class _Derived:
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


def _exact_result(pattern, section, heads, found: _Derived) -> SectionAnalysis | None:
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
        lengths = _valid_lengths(found)
    basis = f"exact for {where}" + (f" ({found.note})" if found.note else "")
    # cross-check against the brute-force mask where that is cheap
    checks = {}
    for n in lengths:
        measured = _mean_count(pattern, section, heads, n)
        if measured is None:
            continue
        checks[n] = float(measured)
        if sp.simplify(count.subs(N, n) - sp.Rational(measured.numerator, measured.denominator)) != 0:
            return None  # the derivation disagrees with the reference: don't trust it
    basis += f"; checked against the mask at N = {', '.join(map(str, checks))}" if checks else \
        "; not checked against the mask (N too large for it)"
    return SectionAnalysis((section.lo, section.hi), str(section.expr), count, density, limit, cost, keys, True,
                           basis, False, "", samples=checks)


def _valid_lengths(found: _Derived) -> list[int]:
    """Two lengths where the closed form holds, for the cross-check: N0 and about 2 N0."""
    P = found.period
    first = max(-(-found.n0 // P) * P, P)
    second = first + P * max(1, first // P)
    return [n for n in (first, second) if n <= CHECK_LIMIT]


# --------------------------------------------------------------------------- the derivation


class _NoClosedForm(Exception):
    pass


@dataclass(frozen=True)
class End:
    """An index bound `a * (q // d) + g * N + c` (a key or query index, inclusive)."""

    a: int = 0
    d: int = 1
    g: int = 0
    c: int = 0


def _key(lo: End | None, hi: End | None):
    return ("key", lo, hi)


def _row(lo: End | None, hi: End | None):
    return ("row", lo, hi)


def _residue(bk: int, m: int, qdiv: int | None, c: int):
    """`(k // bk) % m == ((q // qdiv) + c) % m`, or `== c` when qdiv is None."""
    return ("res", bk, m, qdiv, c)


FULL = frozenset()


def _derive(expr: Node, heads: list[int]) -> _Derived:
    results = [_derive_head(expr, h) for h in heads]
    P = math.lcm(*(r.period for r in results))
    n0 = max(r.n0 for r in results)
    # same polynomial in N whatever the period it was derived with
    coeffs = tuple(sum((r.coeffs[i] for r in results), Fraction(0)) / len(results) for i in range(3))
    witnesses = sorted((not r.empty_always, r.empty) for r in results if r.empty is not None)
    found = _Derived("poly", coeffs, period=P, n0=n0)
    if witnesses:
        found.empty_always, found.empty = not witnesses[0][0], witnesses[0][1]
    return found


def _derive_head(expr: Node, head: int) -> _Derived:
    ie = _ie(expr, head)
    if sum(len(c) for c in ie) > 4 * MAX_TERMS:
        raise _NoClosedForm("too many terms")
    return _sum_rows(ie, head, _min_length(expr, head))


def _min_length(expr: Node, head: int) -> int:
    """The N from which every primitive's parameters are valid: neighborhood(K) needs N >= K,
    window(N - 8, 0) needs N >= 8, sink(N - 3) N >= 4."""
    need = 1
    for node in expr.walk():
        name = getattr(node, "name", None)
        if name == "neighborhood":
            p = _constant_params(node, head)
            need = max(need, math.prod(p.size) if isinstance(p.size, tuple) else p.size)
        elif name in _LINEAR:
            p = _constant_params(node, head, _LINEAR[name])
            least = 1 if name == "sink" else 0
            for f in _LINEAR[name]:
                v = getattr(p, f)
                if isinstance(v, Lin) and v.g < 0:
                    raise _NoClosedForm(f"{name}: {f} shrinks as N grows")
                if isinstance(v, Lin) and v.g > 0:
                    need = max(need, -(-(least - v.c) // v.g))
    return need


def _ie_add(*dicts) -> dict:
    out: dict = {}
    for d, sign in dicts:
        for conj, c in d.items():
            out[conj] = out.get(conj, 0) + sign * c
    return {k: v for k, v in out.items() if v}


def _ie_mul(a: dict, b: dict) -> dict:
    out: dict = {}
    for ca, x in a.items():
        for cb, y in b.items():
            conj = ca | cb
            out[conj] = out.get(conj, 0) + x * y
    if len(out) > MAX_TERMS:
        raise _NoClosedForm("too many inclusion-exclusion terms")
    return {k: v for k, v in out.items() if v}


def _ie(node: Node, head: int) -> dict:
    """The indicator of `node` as a signed sum of conjunctions of atoms."""
    if isinstance(node, Union):
        a, b = _ie(node.a, head), _ie(node.b, head)
        return _ie_add((a, 1), (b, 1), (_ie_mul(a, b), -1))
    if isinstance(node, Intersect):
        return _ie_mul(_ie(node.a, head), _ie(node.b, head))
    if isinstance(node, Difference):
        a, b = _ie(node.a, head), _ie(node.b, head)
        return _ie_add((a, 1), (_ie_mul(a, b), -1))
    rule = _ATOMS.get(getattr(node, "name", None))
    if rule is None:
        raise _NoClosedForm(f"no closed form for {getattr(node, 'name', node)}")
    p = _constant_params(node, head, _LINEAR.get(node.name, ()))
    return rule(p, p.block or 1) if "block" in vars(p) else rule(p, 1)


def _constant_params(node, head: int, linear=()):
    """The node's parameters as ints on `head` (M = N); the fields named in `linear` may also be
    `Lin` (g*N + c, e.g. window(M - 1, 0)); _NoClosedForm for anything else."""
    node = substitute(node, {"h": Term.const(head), "M": Term.var("N")})
    p = node.constant_params()
    for f in node.params_spec():
        v = getattr(node, f.name)
        if isinstance(v, Term) and not v.is_const and f.name in linear:
            setattr(p, f.name, _linear_in_n(v))
        elif v is not None and _has_none(getattr(p, f.name)):
            raise _NoClosedForm(f"parameter {f.name} of {node.name} is not a constant")
    return p


@dataclass(frozen=True)
class Lin:
    """`g * N + c`: a parameter that grows with the length."""

    g: int
    c: int

    def __add__(self, o):
        o = o if isinstance(o, Lin) else Lin(0, o)
        return Lin(self.g + o.g, self.c + o.c)

    __radd__ = __add__

    def __neg__(self):
        return Lin(-self.g, -self.c)

    def __sub__(self, o):
        return self + -o

    def __mul__(self, o: int):
        return Lin(self.g * o, self.c * o)

    __rmul__ = __mul__


def _linear_in_n(t: Term) -> Lin:
    from .ir.expr import evaluate

    if not t.free_vars() <= {"N"}:
        raise _NoClosedForm(f"{t} depends on more than N")
    try:
        c = evaluate(t, {"N": 0})
        g = evaluate(t, {"N": 1}) - c
        if all(evaluate(t, {"N": n}) == g * n + c for n in (2, 3, 7, 64, 1000, 12345)):
            return Lin(g, c)
    except (ZeroDivisionError, TypeError):
        pass
    raise _NoClosedForm(f"{t} is not linear in N")


def _end(a: int, d: int, offset) -> End:
    """`a * (q // d) + offset`, the offset an int or a `Lin`."""
    return End(a, d, offset.g, offset.c) if isinstance(offset, Lin) else End(a, d, 0, offset)


def _has_none(v) -> bool:
    return v is None or isinstance(v, tuple) and any(_has_none(x) for x in v)


def _one(*atoms) -> dict:
    return {frozenset(atoms): 1}


def _atoms_full(p, b):
    return {FULL: 1}


def _atoms_causal(p, b):  # k <= q (M = N), on blocks k // b <= q // b
    return _one(_key(None, End(b, b, 0, b - 1)))


def _atoms_window(p, b):
    r = p.dilation
    lo, hi = _end(b, b, -p.left * r * b), _end(b, b, p.right * r * b + b - 1)
    atoms = [_key(lo, hi)] + ([_residue(b, r, b, 0)] if r > 1 else [])
    return _one(*atoms)


def _atoms_sink(p, b):
    return _one(_key(None, _end(0, 1, p.count * b - 1)))


def _atoms_blocked(p, b):
    s = p.size * b
    return _one(_key(End(s, s, 0, 0), End(s, s, 0, s - 1)))


def _atoms_strided(p, b):
    return _one(_residue(b, p.stride, b, 0))


def _atoms_columns(p, b):
    if not 0 <= p.phase < p.period:
        return {}
    return _one(_residue(b, p.period, None, p.phase))


def _atoms_global(p, b):
    out: dict = {}
    for item in p.tokens:
        lo, hi = (item[1], item[2]) if isinstance(item, tuple) else (item, item)
        ends = (End(0, 1, 0, lo * b), End(0, 1, 0, hi * b + b - 1))
        one = _ie_add((_one(_row(*ends)), 1), (_one(_key(*ends)), 1), (_one(_row(*ends), _key(*ends)), -1))
        out = _ie_add((out, 1), (one, 1), (_ie_mul(out, one), -1)) if out else one
    return out


def _atoms_neighborhood(p, b):
    size, stride, dil = (v[0] if isinstance(v, tuple) and len(v) == 1 else v
                         for v in (p.size, p.stride, p.dilation))
    if any(isinstance(v, tuple) for v in (size, stride, dil)) or stride != 1 or dil != 1:
        raise _NoClosedForm("neighborhood with stride, dilation or several dimensions")
    K = size
    if p.causal:  # the K keys up to the query
        return _one(_key(End(1, 1, 0, 1 - K), End(1, 1, 0, 0)))
    half = K // 2
    # the window shifts inward at both borders: three disjoint row ranges, summed
    first = _one(_row(None, End(0, 1, 0, half - 1)), _key(None, End(0, 1, 0, K - 1)))
    middle = _one(_row(End(0, 1, 0, half), End(0, 1, 1, half - K)),
                  _key(End(1, 1, 0, -half), End(1, 1, 0, K - 1 - half)))
    last = _one(_row(End(0, 1, 1, half - K + 1), None), _key(End(0, 1, 1, -K), None))
    return _ie_add((first, 1), (middle, 1), (last, 1))


_LINEAR = {"window": ("left", "right"), "sink": ("count",)}  # parameters that may grow with N
_ATOMS = {
    "full": _atoms_full, "causal": _atoms_causal, "window": _atoms_window, "sink": _atoms_sink,
    "blocked": _atoms_blocked, "strided": _atoms_strided, "columns": _atoms_columns, "global": _atoms_global,
    "neighborhood": _atoms_neighborhood,
}


def _lone(expr: Node, head: int) -> _Derived | None:
    """Closed forms of primitives that have one alone but not inside compositions."""
    if isinstance(expr, Intersect):
        sides = {getattr(expr.a, "name", None): expr.a, getattr(expr.b, "name", None): expr.b}
        if set(sides) == {"causal", "topk"} and sides["causal"].block is None:
            return _causal_topk(sides["topk"], head)
    name = getattr(expr, "name", None)
    if name not in ("pow2", "random", "topk", "neighborhood"):
        return None
    try:
        p = _constant_params(expr, head)
    except _NoClosedForm:
        return None
    b = getattr(p, "block", None) or 1
    if name == "pow2":
        # per query block: distances 0, 1, 2, 4, ... back to block 0; over N = b * 2^m the row sum
        # is b^2 * ((N/b) * log2(N/b) + 1)
        count = b * sp.log(N / b, 2) + sp.Rational(b * b) / N
        return _Derived("expr", count=count, period=b, n0=b, cost="O(N log N)", note="N / block a power of two")
    if name == "topk" and p.threshold is not None:
        return None  # as many blocks as the routing softmax needs: no count without the data
    if name in ("random", "topk"):
        blocks = p.count
        routed = "routed: any q, k" if name == "topk" else f"seed {p.seed}"
        return _Derived("expr", count=sp.Integer(blocks * b), period=b, n0=blocks * b,
                        cost="O(N*w)", note=routed)
    if name == "neighborhood" and not p.causal:
        sizes = p.size if isinstance(p.size, tuple) else (p.size,)
        return _Derived("expr", count=sp.Integer(math.prod(sizes)), period=1, n0=math.prod(sizes), cost="O(N*w)",
                        note="exactly the window per query, NATTEN semantics")
    return None


def _causal_topk(topk, head) -> _Derived | None:
    """`causal & topk(k, block=b)` (MoBA): whatever q and k are, a query in block Qb sees its own
    block up to itself and min(k - 1, Qb) whole earlier blocks. Over N = b * nb, nb >= k - 1:
    S = nb * b(b+1)/2 + b^2 * ((k-1)(k-2)/2 + (k-1)(nb - k + 1))."""
    try:
        p = _constant_params(topk, head)
    except _NoClosedForm:
        return None
    if p.threshold is not None:
        return None  # as many blocks as the routing softmax needs: no count without the data
    k, b = p.count, p.block
    nb = N / b
    S = nb * sp.Rational(b * (b + 1), 2) + b * b * (sp.Rational((k - 1) * (k - 2), 2) + (k - 1) * (nb - k + 1))
    return _Derived("expr", count=sp.expand(S / N), period=b, n0=max(1, k - 1) * b, cost="O(N*w)",
                    note="routed: any q, k")


# ---- summing a signed sum of conjunctions over the rows

_BIG = 10**12  # a stand-in for "large n" when deciding which linear piece wins on a segment


def _form(end: End, r: int, P: int) -> tuple[int, int, int]:
    """`end` at q = P*Q + r, N = P*n, as (alpha, gamma, beta): alpha*Q + gamma*n + beta."""
    return (end.a * P // end.d, end.g * P, end.a * (r // end.d) + end.c)


def _at2(f, Q2):
    """Twice the form `f` at Q = Q2 / 2, n = _BIG."""
    return f[0] * Q2 + 2 * (f[1] * _BIG + f[2])


def _sub(f, g):
    return (f[0] - g[0], f[1] - g[1], f[2] - g[2])


def _sum_rows(ie: dict, head: int, min_length: int = 1) -> _Derived:
    atoms = set().union(*ie) if ie else set()
    residues = [a for a in atoms if a[0] == "res"]
    ends = [e for a in atoms if a[0] in ("key", "row") for e in a[1:] if e is not None]
    L = math.lcm(*(a[1] * a[2] for a in residues)) if residues else 1
    needs = [e.d for e in ends] + [e.d * L // math.gcd(e.a, e.d * L) for e in ends if e.a] + \
        [a[2] * a[3] for a in residues if a[3]] + [L]
    P = math.lcm(*needs)
    if P > MAX_PERIOD:
        raise _NoClosedForm(f"period {P} too large")
    conjs = []
    for conj, coeff in ie.items():
        keys = [a for a in conj if a[0] == "key"]
        rows = [a for a in conj if a[0] == "row"]
        conjs.append((coeff,
                      [a[1] for a in keys if a[1] is not None] + [End()],  # k >= 0
                      [a[2] for a in keys if a[2] is not None] + [End(0, 1, 1, -1)],  # k <= N - 1
                      [a[1] for a in rows if a[1] is not None], [a[2] for a in rows if a[2] is not None],
                      [a for a in conj if a[0] == "res"]))
    total = [Fraction(0)] * 3
    # some primitives only exist from a length on (neighborhood(K): N >= K)
    n0 = max(1, -(-min_length // P))
    empty = None
    at_one = []
    residue_cache: dict = {}
    for r in range(P):
        per = []
        points = {(0, Fraction(0)), (1, Fraction(0))}
        for coeff, los, his, rlos, rhis, res in conjs:
            lo = _envelope([_form(e, r, P) for e in los], max)
            hi = _envelope([_form(e, r, P) for e in his], min)
            qf = (P, 0, r)
            rows = [_sub(qf, _form(e, r, P)) for e in rlos] + [_sub(_form(e, r, P), qf) for e in rhis]
            his1 = [(f[0], f[1], f[2] + 1) for f in hi]
            pairs = [(f, g) for i, f in enumerate(lo) for g in lo[i + 1:]] + \
                [(f, g) for i, f in enumerate(hi) for g in hi[i + 1:]] + [(f, g) for f in his1 for g in lo]
            for f, g in pairs:
                points.add(_crossing(_sub(f, g)))
            for f in rows:  # a row bound holds *at* its zero: the count jumps after it, not before
                point = _crossing(f)
                if point is not None:
                    points |= {point, (point[0], Fraction(math.floor(point[1]) + 1))}
            per.append((coeff, lo, hi, rows, _residue_set(res, r, L, residue_cache)))
        points.discard(None)
        order = sorted(points, key=lambda x: (x[0], x[1]))
        order = [(c, math.ceil(e)) for c, e in order]
        order = sorted(set(order))
        for (c1, e1), (c2, e2) in zip(order, order[1:]):
            if c1 != c2:  # c1 < c2: need c1*n + e1 <= c2*n + e2
                n0 = max(n0, math.ceil(Fraction(e1 - e2, c2 - c1)))
        inside = order[order.index((0, 0)): order.index((1, 0)) + 1]
        for (ca, ea), (cb, eb) in zip(inside, inside[1:]):
            # sample the middle of [A, B - 1]: crossings sit at or before A, or after B - 1,
            # so every linear piece keeps the order it has there on the whole segment.
            # (Twice the middle, to stay in integers: forms are compared at 2Q through _at2.)
            Qs = ca * _BIG + ea + cb * _BIG + eb - 1
            T = (0, 0, 0)
            for coeff, lo, hi, rows, rset in per:
                form, need = _row_count(lo, hi, rows, rset, Qs, L)
                n0 = max(n0, need)
                T = (T[0] + coeff * form[0], T[1] + coeff * form[1], T[2] + coeff * form[2])
            for i, v in enumerate(_segment_sum(T, (ca, ea), (cb, eb))):
                total[i] += v
            if empty is None:
                # T is linear in Q and >= 0 on the segment: a row is empty iff T is 0 at an end.
                # At Q = c*n + e, T is (T0*c + T1) * n + (T0*e + T2): zero for every n, or at one n
                wide = 1 if ca == cb else math.ceil(Fraction(ea - eb + 1, cb - ca))  # A < B from here
                for c, e in ((ca, ea), (cb, eb - 1)):
                    slope, offset = T[0] * c + T[1], T[0] * e + T[2]
                    if slope == 0 and offset == 0:
                        empty = (r, c, e, wide)
                        break
                    if slope != 0 and offset % slope == 0 and -offset // slope >= wide:
                        at_one.append((r, c, e, -offset // slope))
    # from polynomials in n (N = P*n) to polynomials in N
    coeffs = (total[0], total[1] / P, total[2] / (P * P))
    found = _Derived("poly", coeffs, period=P, n0=n0 * P)
    if empty is not None:
        r, c, e, wide = empty
        n = max(n0, wide, 1)
        found.empty = (P * n, head, P * (c * n + e) + r)
        found.empty_always = True
    else:  # rows empty at one length only (e.g. full - neighborhood(K, causal=true) at N = K)
        hits = sorted((n, r, c, e) for r, c, e, n in at_one if n >= n0)
        if hits:
            n, r, c, e = hits[0]
            found.empty = (P * n, head, P * (c * n + e) + r)
    return found


def _envelope(forms, pick):
    """Drop forms that a parallel one always beats (same alpha and gamma): fewer, and no spurious,
    breakpoints."""
    best: dict = {}
    for f in forms:
        key = f[:2]
        best[key] = f if key not in best else pick(best[key], f, key=lambda x: x[2])
    return list(best.values())


def _crossing(f):
    """Where the form `f` changes sign in Q, as (c, e) with Q = c*n + e (the first Q past the zero)."""
    alpha, gamma, beta = f
    if alpha == 0:
        return None
    c = Fraction(-gamma, alpha)
    if c.denominator != 1:
        raise _NoClosedForm("non-integral crossing")
    return int(c), Fraction(-beta, alpha)


def _threshold(diff) -> int:
    """Smallest n from which the (Q-free) form `diff` keeps the sign it has at large n."""
    _, gamma, beta = diff
    if gamma == 0:
        return 1
    return max(1, math.ceil(Fraction(-beta, gamma)) + 1)


def _row_count(lo, hi, rows, rset, Q2, L):
    """(the count form of one conjunction on a segment, the n it needs) at sample row Q2 / 2."""
    need = 1
    for f in rows:
        if f[0] == 0:
            need = max(need, _threshold(f))
        if _at2(f, Q2) < 0:
            return (0, 0, 0), need
    best_lo = max(lo, key=lambda f: _at2(f, Q2)) if len(lo) > 1 else lo[0]
    best_hi = min(hi, key=lambda f: _at2(f, Q2)) if len(hi) > 1 else hi[0]
    for f in lo:
        if f[0] == best_lo[0] and f is not best_lo:
            need = max(need, _threshold(_sub(best_lo, f)))
    for f in hi:
        if f[0] == best_hi[0] and f is not best_hi:
            need = max(need, _threshold(_sub(f, best_hi)))
    width = _sub((best_hi[0], best_hi[1], best_hi[2] + 1), best_lo)
    if width[0] == 0:
        need = max(need, _threshold(width))
    if _at2(width, Q2) <= 0 or rset is not None and rset[0] == 0:
        return (0, 0, 0), need
    if rset is None:
        return width, need
    return _sub(_residue_count((best_hi[0], best_hi[1], best_hi[2] + 1), rset, L),
                _residue_count(best_lo, rset, L)), need


def _residue_set(res, r, L, cache):
    """(size, prefix counts) of the key residues mod L allowed for query residue r, or None."""
    if not res:
        return None
    targets = tuple((bk, m, ((r // qdiv) + c) % m if qdiv else c) for _, bk, m, qdiv, c in sorted(res, key=str))
    if targets not in cache:
        allowed = [all((rho // bk) % m == t for bk, m, t in targets) for rho in range(L)]
        prefix = [0]
        for a in allowed:
            prefix.append(prefix[-1] + a)
        cache[targets] = (prefix[-1], prefix)
    return cache[targets]


def _residue_count(x, rset, L):
    """The form counting keys k in [0, x) with an allowed residue (x's coefficients are multiples of L)."""
    size, prefix = rset
    alpha, gamma, beta = x
    if alpha % L or gamma % L:
        raise _NoClosedForm("residue period does not divide the query period")
    return (size * alpha // L, size * gamma // L, size * (beta - beta % L) // L + prefix[beta % L])


def _segment_sum(T, A, B):
    """sum over Q in [A, B) of T0*Q + T1*n + T2, with A, B = c*n + e: polynomial in n (3 Fractions)."""
    t0, t1, t2 = T

    def tri(c, e):  # X (X - 1) / 2 for X = c n + e
        return (Fraction(e * e - e, 2), Fraction(2 * c * e - c, 2), Fraction(c * c, 2))

    (ca, ea), (cb, eb) = A, B
    sa, sb = tri(ca, ea), tri(cb, eb)
    dc, de = cb - ca, eb - ea
    # (t1 n + t2)(dc n + de)
    lin = (Fraction(t2 * de), Fraction(t1 * de + t2 * dc), Fraction(t1 * dc))
    return tuple(t0 * (sb[i] - sa[i]) + lin[i] for i in range(3))


# --------------------------------------------------------------------------- the reference, by rows


def mask_rows(pattern: Pattern, N: int, rows: range, heads: list[int], M: int | None = None, data=None,
              section=None):
    """`pattern.mask(M, N)[heads][:, rows]` without building the whole mask: bool [H, len(rows), N].

    `data`: routed patterns' `{"q": ..., "k": ...}` (see `routed_data`); pass the same dict for
    every chunk of rows so that block selections are computed once."""
    import torch

    from .primitives import Context

    M = N if M is None else M
    if section is not None:
        sections = [section]
    else:
        sections = pattern.sections(None if isinstance(pattern.body, tuple) else max(heads) + 1)
    grid = pattern.grid_shape(M, N)
    store = data if data is not None else {}
    out = torch.zeros(len(heads), len(rows), N, dtype=torch.bool)
    qi = torch.arange(rows.start, rows.stop).view(1, -1, 1)
    ki = torch.arange(N).view(1, 1, N)
    for s in sections:
        idx = [i for i, h in enumerate(heads) if s.lo <= h <= s.hi]
        if not idx:
            continue
        h = torch.tensor([heads[i] for i in idx]).view(-1, 1, 1)
        # one dict per section, kept in `store`: the section's causal flag plus q, k and caches
        per = store.setdefault(("section", s.lo), {**{k: v for k, v in store.items() if k in ("q", "k")},
                                                   "causal": under_causal(s.expr)})
        ctx = Context(M, N, h, grid, per)
        out[idx] = torch.as_tensor(s.expr.visible(ctx, qi, ki)).to(torch.bool).expand(len(idx), len(rows), N)
    return out


def routed_data(pattern: Pattern, M: int, N: int, heads: int, seed: int = 0, dim: int = 16) -> dict | None:
    """Random q, k (`dim` features) for routed patterns (their blocks depend on the data), else
    None. How alike the selections of different queries are depends on `dim` (in few dimensions
    the pooled keys' norms dominate the scores): to stand for real q, k, give their head_dim."""
    if not pattern.is_routed:
        return None
    import torch

    g = torch.Generator().manual_seed(seed)
    return {"q": torch.randn(heads, M, dim, generator=g), "k": torch.randn(heads, N, dim, generator=g)}


def row_counts(pattern: Pattern, section, heads: list[int], N: int, data=None):
    """Visible keys of every query row: int64 [len(heads), N] (M = N), in chunks of rows."""
    import torch

    out = torch.empty(len(heads), N, dtype=torch.int64)
    step = max(1, (1 << 22) // max(1, N * len(heads)))
    shared = dict(data) if data is not None else {}
    for q0 in range(0, N, step):
        rows = range(q0, min(N, q0 + step))
        out[:, q0:rows.stop] = mask_rows(pattern, N, rows, heads, data=shared, section=section).sum(-1)
    return out


def _mean_count(pattern, section, heads, n) -> Fraction | None:
    """Mean visible keys per query at N = n, from the reference mask (None if invalid there)."""
    try:
        data = routed_data(pattern, n, n, max(heads) + 1)
        counts = row_counts(pattern, section, heads, n, data)
    except PatternError:
        return None
    return Fraction(int(counts.sum()), len(heads) * n)


# --------------------------------------------------------------------------- measured results


def _constants(expr: Node) -> list[int]:
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


def _numeric_result(pattern, section, heads) -> SectionAnalysis:
    expr = section.expr
    notes = [" with random q, k"] if pattern.is_routed else []
    if len(heads) > 4:  # head-dependent patterns: measure four heads spread over the section
        heads = [heads[i * (len(heads) - 1) // 3] for i in range(4)]
        notes.append(f" on heads {', '.join(map(str, heads))}")
    if pattern.grid is not None:
        n = math.prod(pattern.grid_shape(1, 1))
        value = _mean_count(pattern, section, heads, n) if n <= 4 * CHECK_LIMIT else None
        count = None if value is None else sp.Rational(value.numerator, value.denominator)
        basis = f"numeric: measured from the mask at the grid's N = {n}" if value is not None else \
            f"unknown: the grid's N = {n} is too large for the brute-force mask"
        return SectionAnalysis((section.lo, section.hi), str(expr), count,
                               None if count is None else count / n, None, "n/a (fixed grid)", None, False,
                               basis + "".join(notes), False, "", samples={} if value is None else {n: float(value)})
    big = max(_constants(expr) + [1])
    start = max(64, 1 << (big - 1).bit_length())
    lengths = [start << i for i in range(5) if start << i <= CHECK_LIMIT]
    if len(lengths) < 4:
        lengths = [CHECK_LIMIT >> i for i in range(4, -1, -1)]
        notes.append(f"; the pattern's constants (up to {big}) are not small against these lengths")
    samples = {}
    for n in lengths:
        v = _mean_count(pattern, section, heads, n)
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


# --------------------------------------------------------------------------- empty rows


def _find_empty_rows(pattern, section, heads, result: SectionAnalysis, found: _Derived | None):
    exact = result.exact and found is not None
    if exact and found.empty is not None:
        result.empty_rows = True
        result.empty_example = found.empty
        result.empty_basis = "exact: some query sees no key, at every large N" if found.empty_always else \
            f"exact: e.g. at N = {found.empty[0]}"
        return
    if exact and found.kind == "expr":  # pow2, random, topk, neighborhood alone
        result.empty_basis = "exact: every query sees its own block or window"
        return
    if pattern.grid is not None:
        lengths = [n for n in [math.prod(pattern.grid_shape(1, 1))] if n <= CHECK_LIMIT]
    else:
        consts = [c for c in _constants(section.expr) if 0 < c <= 1024]
        lengths = sorted(set(SMALL_LENGTHS) | {x for c in consts for x in (c - 1, c, c + 1, 2 * c + 1) if x >= 1})
        lengths = [n for n in lengths if n <= 2048][:40]
    checked = []
    for n in lengths:
        try:
            data = routed_data(pattern, n, n, max(heads) + 1)
            counts = row_counts(pattern, section, heads, n, data)
        except PatternError:
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
