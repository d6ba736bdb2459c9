"""Family recognition: rewrite a traced predicate into primitive nodes, only where exactly equal.

The traced `Term` is read as a boolean formula (`& | ~` over comparisons). Comparisons that are
bounds on `d = q - k` become windows, bounds on `k` sinks, `d % s == 0` strided, `k % s == p`
columns, `q // b == k // b` blocked — on tokens or, when both indices are `// b`, on blocks of b.
Whatever isn't recognised stays a `predicate` node: recognition can be partial, never approximate.

Exactness is over every M, N and h. The predicate reads raw query rows `q` in `0..M-1`
(FlexAttention's `mask_mod` convention) while primitives read positions `p = q + N - M` (queries
are the last M positions), so the term is first rewritten on positions (`q := p - (N - M)`), and
recognised there: `k <= q + N - M` is `causal`, `q - k < 1024` is `window(N - M + 1023, M - 1)`,
and `q // 64 == k // 64`, a block boundary that moves with `N - M`, is no primitive at all (it
stays a `predicate`; `(q + N - M) // 64 == k // 64` is `blocked(64)`). Windows whose parameters
use `N - M` are valid only on some lengths (`q >= k` is `window(N - 1, M - N)`: M >= N), and
`trace` keeps the general predicate where they would be rejected. For self-attention (M = N)
rows are positions and nothing moves.
"""
from __future__ import annotations

from collections import defaultdict

from ..ir.expr import COMPARISONS, Sym, Term, evaluate
from ..ir.nodes import Difference, Intersect, Node, Union
from ..primitives import REGISTRY
from .affine import add, affine, combine, const, free, linear, linear_parts, neg, render, same, scaled, sub
from .predicate import Predicate

ZERO = Term.const(0)
_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}


def recognize(term: Term) -> Node:
    """The primitive-node expression equal to the boolean predicate `term` over q, k, h, M, N
    (`q` the raw query row), on query positions as primitives read them."""
    return _node(_on_positions(term))


def _on_positions(term: Term, shift=("M", "N")) -> Term:
    """`term` with the raw row q written as position minus `N - M` (`q := q + M - N`, q now the
    position), integer sums over q re-rendered as affine forms (`(q + M - N) + N - M` is `q`).
    `shift=("N", "M")` goes back: a term on positions as a term on rows."""
    plus, minus = shift
    row = Term("-", (Term("+", (Term.var("q"), Term.var(plus))), Term.var(minus)))

    def go(t: Term) -> Term:
        if t.op == "var":
            return row if t.args[0] == "q" else t
        if t.op == "const":
            return t
        t = Term(t.op, tuple(go(a) for a in t.args))
        if t.op in ("+", "-", "neg", "*") and "q" in t.free_vars():
            return render(*affine(t))
        return t

    return go(term)


def _predicate(t: Term) -> Node:
    """What isn't recognised, as the general predicate, which reads raw rows again."""
    return Predicate(_on_positions(t, shift=("N", "M")))


def _prim(name: str, **params) -> Node:
    return REGISTRY[name].make(**params)


def _full() -> Node:
    return _prim("full")


# --------------------------------------------------------------------------- the boolean layer


def _node(t: Term) -> Node:
    if t.is_const:
        return _full() if t.value else _predicate(t)
    pow2 = _pow2(t)
    if pow2 is not None:
        return pow2
    if t.op == "|":
        return Union(_node(t.args[0]), _node(t.args[1]))
    if t.op == "~":
        return Difference(_full(), _node(t.args[0]))
    if t.op == "&" or t.op in COMPARISONS:
        return _conjunction(_flatten(t, "&"))
    return _predicate(t)


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
    parts = front + nodes + ([_predicate(_and_terms(leftovers))] if leftovers else [])
    out = parts[0] if parts else _full()
    for p in parts[1:]:
        out = Intersect(out, p)
    for n in negatives:
        out = Difference(out, n)
    return out


# --------------------------------------------------------------------------- atoms


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
    la, lb = linear(a), linear(b)
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
    rest = render(*combine(linear_parts(a), scaled(linear_parts(b), -1))[1])
    op, value = (c.op, neg(rest)) if sign == 1 else (_FLIP[c.op], rest)
    items = {
        "<": [("le", add(value, -1))], "<=": [("le", value)], ">": [("ge", add(value, 1))],
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
    if op not in ("<", "<=") or not free(b):
        return None
    lin = linear(a.args[0])
    if lin is None or _axis(lin[0]) is None or _axis(lin[0])[0] != "D":
        return None
    bound, unit, sign = add(b, -1) if op == "<" else b, *_axis(lin[0])[1:]
    rest = lin[1] if sign == 1 else neg(lin[1])  # abs(d + rest) <= bound
    return "bounds", unit, [("D", "le", sub(bound, rest)), ("D", "ge", sub(neg(bound), rest))]


def _modular(a: Term, b: Term):
    if b.op == "%" and a.op != "%":
        a, b = b, a
    x, s = a.args
    if not free(s, ("q", "k", "h")):
        return None
    if b.op == "%" and b.args[1] == s and not free(b):  # q % s == k % s  (or on blocks)
        la, lb = linear(x), linear(b.args[0])
        if la is None or lb is None or const(la[1]) != 0 or const(lb[1]) != 0:
            return None
        if len(la[0]) == len(lb[0]) == 1:
            ((i, ui), ci), = la[0].items()
            ((j, uj), cj), = lb[0].items()
            if {i, j} == {"q", "k"} and ui == uj and ci == cj == 1:
                return "stride", ui, s
        return None
    if not free(b):
        return None
    lin = linear(x)
    if lin is None or const(lin[1]) != 0:
        return None
    found = _axis(lin[0])
    if found is None:
        return None
    axis, unit, _ = found
    if axis == "D":
        return ("stride", unit, s) if const(b) == 0 else None
    if lin[0] != {("k", unit): 1}:
        return None
    period, phase = const(s, 1), const(b)
    in_range = period is not None and phase is not None and 0 <= phase < period
    if in_range or b.op == "%" and b.args[1] == s:  # h % s is always a valid phase
        return "node", _prim("columns", period=s, phase=b, block=unit)
    return None


def _blocked(a: Term, b: Term):
    (x, s), (y, t) = a.args, b.args
    if s != t or not free(s, ("q", "k", "h")) or {x, y} != {Term.var("q"), Term.var("k")}:
        return None
    return _prim("blocked", size=s)


def _pow2(t: Term):
    """`pow2`'s own rule, as traced, on tokens or on blocks `q // b`."""
    units = [None] + sorted({s.args[1] for s in _subterms(t) if s.op == "//" and s.args[0] == Term.var("q")
                             and free(s.args[1], ("q", "k", "h"))}, key=str)
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


# the lengths (M, N) a recognised form is tried on (`jit._checked` compares it with the predicate
# there): window sides that use `N - M` must be valid on all of them
PROBES = ((1, 1), (3, 5), (5, 3), (8, 8), (13, 6), (7, 17), (24, 24))


def _valid(side: Term) -> bool:
    """Is a window side >= 0 on every probe (unknown parameters: not decided here)?"""
    try:
        return all(evaluate(side, {"M": M, "N": N, "h": h}) >= 0 for M, N in PROBES for h in range(3))
    except (NameError, ZeroDivisionError):
        return True


def _intersect(nodes: list[Node]) -> Node:
    out = nodes[0]
    for n in nodes[1:]:
        out = Intersect(out, n)
    return out


def _tighten(values: list[Term], pick):
    """Merge constant bounds with `pick` (max for lower, min for upper); keep symbolic ones."""
    consts = [v.value for v in values if const(v) is not None]
    symbolic = [v for v in values if const(v) is None]
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
    causal, front, minus = [], [], []
    M, N = Sym("M"), Sym("N")
    zeros = [v for v in d_lo if same(v, ZERO)]  # p - k >= 0 is causal
    d_lo = [v for v in d_lo if not any(v is z for z in zeros)]
    d_lo, d_hi = _tighten(d_lo, max), _tighten(d_hi, min)
    if zeros and (d_lo or not d_hi or const(d_hi[0]) != 0):  # (0 <= d <= 0 is window(0, 0) alone)
        causal.append(_prim("causal", block=unit))
    elif zeros:
        d_lo = [ZERO]
    windows = []  # window(left, right): -right <= d <= left
    if d_lo or d_hi:
        # p - k lies in [1 - M, N - 1] on tokens and on blocks alike: N - 1 / M - 1 mean "no bound"
        windows.append({"left": d_hi[0] if d_hi else (N - 1).term,
                        "right": neg(d_lo[0]) if d_lo else (M - 1).term})
        windows += [{"left": v, "right": (M - 1).term} for v in d_hi[1:]]
        windows += [{"left": (N - 1).term, "right": neg(v)} for v in d_lo[1:]]
        if causal and not d_lo:  # under causal a window's right side is moot: write causal & window(w)
            windows[0]["right"] = windows[0]["left"]
    if any(not _valid(w[side]) for w in windows for side in ("left", "right")):
        return None  # e.g. d >= 5 alone: a window can't exclude the diagonal from both sides
    for s, _ in strides:
        r = const(s, 1)
        if len(windows) == 1 and r is not None and "dilation" not in windows[0]:
            # d % r == 0 & -R <= d <= L  is exactly  window(L // r, R // r, dilation=r)
            w = windows[0]
            w.update(left=(Sym(w["left"]) // r).term, right=(Sym(w["right"]) // r).term, dilation=s)
        else:
            front.append(_prim("strided", stride=s, block=unit))
    # causal first, then windows, then the rest: the order the pattern text is canonically written in
    front = causal + [_prim("window", block=unit, **w) for w in windows] + front
    for v in _tighten(k_hi, min):
        if const(v) is not None and const(v) < 0:
            return None  # k <= -1: nothing is visible
        front.append(_prim("sink", count=add(v, 1), block=unit))
    for v in _tighten(k_lo, max):
        if const(v) is not None and const(v) <= 0:
            continue  # k >= 0 always holds
        minus.append(_prim("sink", count=v, block=unit))
    if not front and minus:
        front.append(_full())
    return front, minus
