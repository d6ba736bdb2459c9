"""Family recognition: rewrite a traced predicate into primitive nodes, only where exactly equal.

The traced `Term` is read as a boolean formula (`& | ~` over comparisons). Comparisons that are
bounds on `d = q - k` become windows, bounds on `k` sinks, `d % s == 0` strided, `k % s == p`
columns, `q // b == k // b` blocked — on tokens or, when both indices are `// b`, on blocks of b.
Whatever isn't recognised stays a `predicate` node: recognition can be partial, never approximate.

Exactness is over every M, N and h, with `q` and `k` the raw token indices (FlexAttention's
`mask_mod` convention). In particular `q >= k` is *not* `causal` (which is aligned bottom-right:
`k <= q + N - M`) but `window(M - 1, 0)`; `k <= q + N - M` is `causal`. For self-attention
(M = N) the two agree.
"""
from __future__ import annotations

from collections import defaultdict

from ..ir.expr import COMPARISONS, Sym, Term
from ..ir.nodes import Difference, Intersect, Node, Union
from ..primitives import REGISTRY
from .predicate import Predicate

ZERO = Term.const(0)
_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}


def recognize(term: Term) -> Node:
    """The primitive-node expression equal to the boolean predicate `term` over q, k, h, M, N."""
    return _node(term)


def _prim(name: str, **params) -> Node:
    return REGISTRY[name].make(**params)


def _full() -> Node:
    return _prim("full")


def _affine(t: Term) -> tuple[dict, int]:
    """An index-free integer term as ({part: coefficient}, constant), linear in its parts (names
    and non-linear subterms such as `h % 16`), so that bounds print as `N - w`, not `-(0 - w)`."""
    if t.is_const:
        return {}, int(t.value)
    if t.op in ("+", "-"):
        (a, x), (b, y) = _affine(t.args[0]), _affine(t.args[1])
        sign = 1 if t.op == "+" else -1
        out = dict(a)
        for part, c in b.items():
            out[part] = out.get(part, 0) + sign * c
        return {p: c for p, c in out.items() if c}, x + sign * y
    if t.op == "neg":
        a, x = _affine(t.args[0])
        return {p: -c for p, c in a.items()}, -x
    if t.op == "*":
        for u, v in (t.args, t.args[::-1]):
            if _const(u) is not None:
                a, x = _affine(v)
                return {p: u.value * c for p, c in a.items() if u.value * c}, u.value * x
    return {t: 1}, 0


def _render(parts: dict, const: int) -> Term:
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


def _add(t: Term, c: int) -> Term:
    parts, const = _affine(t)
    return _render(parts, const + c)


def _neg(t: Term) -> Term:
    parts, const = _affine(t)
    return _render({p: -v for p, v in parts.items()}, -const)


def _free(t: Term, names=("q", "k")) -> bool:
    return not (t.free_vars() & set(names))


def _const(t: Term, lo=None):
    """The int value of a constant term (>= lo), else None."""
    if t.is_const and not isinstance(t.value, bool) and (lo is None or t.value >= lo):
        return t.value
    return None


def _same(a: Term, b: Term) -> bool:
    """Equal as affine forms (`N - M + 0` is `-(M - N)`); anything subtler counts as different."""
    return _affine(a) == _affine(b)


# --------------------------------------------------------------------------- the boolean layer


def _node(t: Term) -> Node:
    if t.is_const:
        return _full() if t.value else Predicate(t)
    pow2 = _pow2(t)
    if pow2 is not None:
        return pow2
    if t.op == "|":
        return Union(_node(t.args[0]), _node(t.args[1]))
    if t.op == "~":
        return Difference(_full(), _node(t.args[0]))
    if t.op == "&" or t.op in COMPARISONS:
        return _conjunction(_flatten(t, "&"))
    return Predicate(t)


def _flatten(t: Term, op: str) -> list[Term]:
    return _flatten(t.args[0], op) + _flatten(t.args[1], op) if t.op == op else [t]


def _and_terms(terms: list[Term]) -> Term:
    out = terms[0]
    for t in terms[1:]:
        out = Term("&", (out, t))
    return out


def _conjunction(conjuncts: list[Term]) -> Node:
    bounds = defaultdict(list)  # unit -> [(axis, kind, value)]; axis D (q-k) or K (k); kind ge/le
    bound_terms = defaultdict(list)  # unit -> the conjuncts they came from (for the fallback)
    strides = defaultdict(list)  # unit -> [(s, term)]
    nodes, negatives, leftovers = [], [], []
    for c in conjuncts:
        if c.op == "~":
            negatives.append(_node(c.args[0]))
            continue
        fact = _fact(c)
        if fact is None and c.op in COMPARISONS:
            leftovers.append(c)
        elif fact is None:
            nodes.append(_node(c))
        elif fact[0] == "bounds":
            _, unit, items = fact
            bounds[unit] += items
            bound_terms[unit].append(c)
        elif fact[0] == "stride":
            strides[fact[1]].append((fact[2], c))
        elif fact[0] == "not":
            negatives.append(fact[1])
        else:
            nodes.append(fact[1])
    front = []
    for unit in list(bounds) + [u for u in strides if u not in bounds]:
        built = _bounds_nodes(unit, bounds.get(unit, []), strides.get(unit, []))
        if built is None:  # e.g. q - k > 4 alone: not a window; keep the conjuncts as a predicate
            leftovers += bound_terms.get(unit, []) + [t for _, t in strides.get(unit, [])]
            continue
        front += built[0]
        negatives += built[1]
    parts = front + nodes + ([Predicate(_and_terms(leftovers))] if leftovers else [])
    out = parts[0] if parts else _full()
    for p in parts[1:]:
        out = Intersect(out, p)
    for n in negatives:
        out = Difference(out, n)
    return out


# --------------------------------------------------------------------------- atoms


def _linear(t: Term):
    """`t` as ({(index, unit): int coefficient}, rest), where index is q or k, unit None (tokens)
    or a divisor term (`q // unit`), and rest an index-free term. None if not of that form."""
    found = _linear_parts(t)
    if found is None:
        return None
    coeffs, rest = found
    return coeffs, _render(*rest)


def _linear_parts(t: Term):
    if _free(t):
        return {}, _affine(t)
    if t.op == "var":
        return {(t.args[0], None): 1}, ({}, 0)
    if t.op == "//" and t.args[0].op == "var" and _free(t.args[1], ("q", "k", "h")):
        return {(t.args[0].args[0], t.args[1]): 1}, ({}, 0)
    if t.op in ("+", "-"):
        a, b = _linear_parts(t.args[0]), _linear_parts(t.args[1])
        return None if a is None or b is None else _combine(a, _scaled(b, 1 if t.op == "+" else -1))
    if t.op == "neg":
        a = _linear_parts(t.args[0])
        return None if a is None else _scaled(a, -1)
    if t.op == "*":
        for u, v in (t.args, t.args[::-1]):
            if _const(u) is not None:
                a = _linear_parts(v)
                return None if a is None else _scaled(a, u.value)
    return None


def _scaled(a, c: int):
    coeffs, (parts, const) = a
    return ({k: c * v for k, v in coeffs.items() if c * v},
            ({p: c * v for p, v in parts.items() if c * v}, c * const))


def _combine(a, b):
    (ca, (pa, xa)), (cb, (pb, xb)) = a, b
    coeffs, parts = dict(ca), dict(pa)
    for k, v in cb.items():
        coeffs[k] = coeffs.get(k, 0) + v
    for p, v in pb.items():
        parts[p] = parts.get(p, 0) + v
    return ({k: v for k, v in coeffs.items() if v}, ({p: v for p, v in parts.items() if v}, xa + xb))


def _axis(coeffs: dict):
    """(axis, unit, sign) for `sign * (q - k)` (axis D) or `sign * k` (axis K) on one unit."""
    units = {u for _, u in coeffs}
    if len(units) != 1:
        return None
    (unit,) = units
    cq, ck = coeffs.get(("q", unit), 0), coeffs.get(("k", unit), 0)
    if len(coeffs) != (cq != 0) + (ck != 0):
        return None
    if (cq, ck) in ((1, -1), (-1, 1)):
        return "D", unit, cq
    if cq == 0 and ck in (1, -1):
        return "K", unit, ck
    return None


def _fact(c: Term):
    """What one conjunct says: ("bounds", unit, [(axis, ge|le, value)]), ("stride", unit, s),
    ("node", Node), ("not", Node), or None."""
    if c.op not in COMPARISONS:
        return None
    a, b = c.args
    if c.op in ("==", "!=") and "%" in (a.op, b.op):
        fact = _modular(a, b)
        if fact is not None and c.op == "!=":
            node = fact[1] if fact[0] == "node" else _prim("strided", stride=fact[2], block=fact[1])
            return "not", node
        return fact
    if c.op in ("==", "!=") and a.op == "//" and b.op == "//":
        blocked = _blocked(a, b)
        if blocked is not None:
            return ("node", blocked) if c.op == "==" else ("not", blocked)
    if "abs" in (a.op, b.op):
        return _absolute(c.op, a, b)
    la, lb = _linear(a), _linear(b)
    if la is None or lb is None:
        return None
    coeffs = dict(la[0])
    for key, v in lb[0].items():
        coeffs[key] = coeffs.get(key, 0) - v
    coeffs = {k: v for k, v in coeffs.items() if v}
    found = _axis(coeffs)
    if found is None:
        return None
    axis, unit, sign = found
    # sign * X + rest  OP  0   ->   X  OP'  value
    rest = _render(*_combine(_linear_parts(a), _scaled(_linear_parts(b), -1))[1])
    op, value = (c.op, _neg(rest)) if sign == 1 else (_FLIP[c.op], rest)
    items = {
        "<": [("le", _add(value, -1))], "<=": [("le", value)], ">": [("ge", _add(value, 1))],
        ">=": [("ge", value)], "==": [("ge", value), ("le", value)], "!=": [("ge", value), ("le", value)],
    }[op]
    items = [(axis, kind, v) for kind, v in items]
    if op == "!=":
        node = _bounds_node(unit, items)
        return None if node is None else ("not", node)
    return "bounds", unit, items


def _absolute(op: str, a: Term, b: Term):
    """abs(q - k) <= c (or < c): a symmetric window."""
    if b.op == "abs":
        a, b, op = b, a, _FLIP[op]
    if op not in ("<", "<=") or not _free(b):
        return None
    lin = _linear(a.args[0])
    if lin is None or _const(lin[1]) != 0 or _axis(lin[0]) is None or _axis(lin[0])[0] != "D":
        return None
    bound = _add(b, -1) if op == "<" else b
    return "bounds", _axis(lin[0])[1], [("D", "le", bound), ("D", "ge", _neg(bound))]


def _modular(a: Term, b: Term):
    if b.op == "%" and a.op != "%":
        a, b = b, a
    x, s = a.args
    if not _free(s, ("q", "k", "h")):
        return None
    if b.op == "%" and b.args[1] == s and not _free(b):  # q % s == k % s  (or on blocks)
        la, lb = _linear(x), _linear(b.args[0])
        if la is None or lb is None or _const(la[1]) != 0 or _const(lb[1]) != 0:
            return None
        if len(la[0]) == len(lb[0]) == 1:
            ((i, ui), ci), = la[0].items()
            ((j, uj), cj), = lb[0].items()
            if {i, j} == {"q", "k"} and ui == uj and ci == cj == 1:
                return "stride", ui, s
        return None
    if not _free(b):
        return None
    lin = _linear(x)
    if lin is None or _const(lin[1]) != 0:
        return None
    found = _axis(lin[0])
    if found is None:
        return None
    axis, unit, _ = found
    if axis == "D":
        return ("stride", unit, s) if _const(b) == 0 else None
    if lin[0] != {("k", unit): 1}:
        return None
    period, phase = _const(s, 1), _const(b)
    in_range = period is not None and phase is not None and 0 <= phase < period
    if in_range or b.op == "%" and b.args[1] == s:  # h % s is always a valid phase
        return "node", _prim("columns", period=s, phase=b, block=unit)
    return None


def _blocked(a: Term, b: Term):
    (x, s), (y, t) = a.args, b.args
    if s != t or not _free(s, ("q", "k", "h")) or {x, y} != {Term.var("q"), Term.var("k")}:
        return None
    return _prim("blocked", size=s)


def _pow2(t: Term):
    """`pow2`'s own rule, as traced, on tokens or on blocks `q // b`."""
    units = [None] + sorted({s.args[1] for s in _subterms(t) if s.op == "//" and s.args[0] == Term.var("q")
                             and _free(s.args[1], ("q", "k", "h"))}, key=str)
    for unit in units:
        q, k = Sym("q"), Sym("k")
        if unit is not None:
            q, k = q // Sym(unit), k // Sym(unit)
        if REGISTRY["pow2"]().rule(None, None, q, k).term == t:
            return _prim("pow2", block=unit)
    return None


def _subterms(t: Term):
    yield t
    if t.op not in ("const", "var"):
        for a in t.args:
            yield from _subterms(a)


# --------------------------------------------------------------------------- bounds -> windows, sinks


def _intersect(nodes: list[Node]) -> Node:
    out = nodes[0]
    for n in nodes[1:]:
        out = Intersect(out, n)
    return out


def _tighten(values: list[Term], pick):
    """Merge constant bounds with `pick` (max for lower, min for upper); keep symbolic ones."""
    consts = [v.value for v in values if _const(v) is not None]
    symbolic = [v for v in values if _const(v) is None]
    return ([Term.const(pick(consts))] if consts else []) + symbolic


def _bounds_node(unit, items, strides=()) -> Node | None:
    """Bounds on one unit as one node (see `_bounds_nodes`)."""
    built = _bounds_nodes(unit, items, strides)
    if built is None:
        return None
    out = _intersect(built[0])
    for n in built[1]:
        out = Difference(out, n)
    return out


def _bounds_nodes(unit, items, strides):
    """(nodes to intersect, nodes to subtract) for bounds on one unit, or None if they aren't a
    window/causal/sink. `strides`: [(s, term)] of `d % s == 0` facts, merged into a window's
    dilation when possible."""
    d_lo = [v for axis, kind, v in items if axis == "D" and kind == "ge"]
    d_hi = [v for axis, kind, v in items if axis == "D" and kind == "le"]
    k_lo = [v for axis, kind, v in items if axis == "K" and kind == "ge"]
    k_hi = [v for axis, kind, v in items if axis == "K" and kind == "le"]
    front, minus = [], []
    M, N = Sym("M"), Sym("N")
    if unit is None:
        causal = [v for v in d_lo if _same(v, (M - N).term)]
        if causal:
            front.append(_prim("causal"))
            d_lo = [v for v in d_lo if not any(v is c for c in causal)]
    d_lo, d_hi = _tighten(d_lo, max), _tighten(d_hi, min)
    windows = []  # window(left, right): -right <= d <= left
    if d_lo or d_hi:
        # q - k lies in [-(N-1), M-1] on tokens and on blocks alike: M - 1 / N - 1 mean "no bound"
        windows.append({"left": d_hi[0] if d_hi else (M - 1).term,
                        "right": _neg(d_lo[0]) if d_lo else (N - 1).term})
        windows += [{"left": v, "right": (N - 1).term} for v in d_hi[1:]]
        windows += [{"left": (M - 1).term, "right": _neg(v)} for v in d_lo[1:]]
    if any(_const(w[side]) is not None and _const(w[side]) < 0 for w in windows for side in ("left", "right")):
        return None  # e.g. d >= 5 alone: a window can't exclude the diagonal from both sides
    for s, _ in strides:
        r = _const(s, 1)
        if len(windows) == 1 and r is not None and "dilation" not in windows[0]:
            # d % r == 0 & -R <= d <= L  is exactly  window(L // r, R // r, dilation=r)
            w = windows[0]
            w.update(left=(Sym(w["left"]) // r).term, right=(Sym(w["right"]) // r).term, dilation=s)
        else:
            front.append(_prim("strided", stride=s, block=unit))
    # causal first, then windows, then the rest: the order the pattern text is canonically written in
    front = [n for n in front if n.bounds_causally()] + [_prim("window", block=unit, **w) for w in windows] + \
        [n for n in front if not n.bounds_causally()]
    for v in _tighten(k_hi, min):
        if _const(v) is not None and _const(v) < 0:
            return None  # k <= -1: nothing is visible
        front.append(_prim("sink", count=_add(v, 1), block=unit))
    for v in _tighten(k_lo, max):
        if _const(v) is not None and _const(v) <= 0:
            continue  # k >= 0 always holds
        minus.append(_prim("sink", count=v, block=unit))
    if not front and minus:
        front.append(_full())
    return front, minus
