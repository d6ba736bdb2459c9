"""A pattern's rule as the kernel evaluates it: one binding per primitive, then their combination.

`trace` turns each primitive's `visible()`, traced with symbolic indices (`Sym`), into a
`Term` over the query's position `q_pos` (the kernel computes `q_idx + (KV_LEN - Q_LEN)` at the
call and hands it to `visible()`: `q_offset=0`), and the `| & -` of the expression and the
per-head sections into a `Term` over the bindings' names: a `Predicate`, which
`predicate_lines` prints with Triton names and which the simulator weighs (`patternc.sim.ops`).
Integer `//` and `%` whose dividend may be negative (positions are, where M > N) go through
floor helpers, because Triton (like C) truncates toward zero while the pattern semantics floor
(as Python and torch do).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import PatternError
from ..ir.expr import Interval, Sym, Term, evaluate, to_text
from ..ir.nodes import Difference, Intersect, Node, Union
from ..primitives import Context, Primitive
from ..primitives.tables import AS_ARGUMENT, table_primitives
from .tables import table_calls

NAMES = {"q": "q_pos", "k": "kv_idx", "h": "off_h", "M": "Q_LEN", "N": "KV_LEN"}
FUNCTIONS = {"min": "tl.minimum", "max": "tl.maximum", "where": "tl.where", "abs": "tl.abs",
             "floor_div": "floor_div", "floor_mod": "floor_mod", "table_bit": "table_bit"}
# index ranges the kernel can meet (int32 offsets), to decide where floor helpers are needed
# (q is the query's position q_idx + KV_LEN - Q_LEN: negative where Q_LEN > KV_LEN)
_RANGES = {"q": (-(2**31 - 1), 2**31 - 1), "k": (0, 2**31 - 1), "h": (0, 2**16), "M": (1, 2**31 - 1),
           "N": (1, 2**31 - 1)}

FLOOR_HELPERS = '''
@triton.jit
def floor_mod(a, b):
    """Python's a % b for b > 0 (Triton's % truncates toward zero)."""
    return (a % b + b) % b


@triton.jit
def floor_div(a, b):
    """Python's a // b for b > 0."""
    return (a - floor_mod(a, b)) // b
'''


@dataclass(frozen=True)
class Binding:
    """`name = term`, with a comment naming the primitive and where it was written."""

    name: str
    term: Term  # over q, k, h, M, N; `selected` for a routed primitive
    comment: str


@dataclass(frozen=True)
class Predicate:
    """The body of `visible(q_pos, kv_idx, off_h, Q_LEN, KV_LEN[, selected])`."""

    bindings: tuple[Binding, ...]
    result: Term  # over the bindings' names (and q, k, h)
    # `result` was a constant or a tile's choice, and reads q and k only to have the tile's shape
    shaped: bool
    uses_floor: bool
    routed: bool  # reads the tile's run-time choice `selected`
    tables: int = 0  # table arguments it reads (`table_bit`), see codegen/tables.py


def _may_be_negative(term: Term) -> bool:
    env = {n: Interval(lo, hi) for n, (lo, hi) in _RANGES.items()}
    try:
        return bool((evaluate(term, env).lo < 0).any())
    except (ValueError, TypeError):
        return True


def _floorize(term: Term) -> tuple[Term, bool]:
    """Rewrite // and % of possibly negative dividends into floor_div / floor_mod calls."""
    if term.op in ("const", "var"):
        return term, False
    used = False
    args = []
    for a in term.args:
        a2, u = _floorize(a)
        args.append(a2)
        used |= u
    if term.op in ("//", "%") and _may_be_negative(term.args[0]):
        return Term("floor_div" if term.op == "//" else "floor_mod", tuple(args)), True
    return Term(term.op, tuple(args)), used


_SHAPE = Term("&", (Term(">=", (Term.var("q"), Term.const(0))), Term(">=", (Term.var("k"), Term.const(0)))))
_NOWHERE = Term("&", (Term("<", (Term.var("q"), Term.const(0))), Term("<", (Term.var("k"), Term.const(0)))))


def trace(sections, grid) -> Predicate:
    """The predicate of `sections` (a pattern's, with parameters substituted) on `grid`:
    one binding per primitive, sections for different heads selected with `h`. A routed
    primitive is the tile's `selected` flag: its blocks are whole tiles, chosen or not at run
    time. A rule that looks up a table reads the kernel's table argument of its primitive."""
    bindings: list[Binding] = []
    uses_floor, count = False, 0
    slots = table_primitives([s.expr for s in sections])

    def combine(node: Node, ctx: Context) -> Term:
        nonlocal uses_floor, count
        if not isinstance(node, Primitive):
            a, b = combine(node.a, ctx), combine(node.b, ctx)
            if isinstance(node, Union):
                return Term("|", (a, b))
            if isinstance(node, Intersect):
                return Term("&", (a, b))
            if isinstance(node, Difference):
                return Term("&", (a, Term("~", (b,))))
            raise TypeError(type(node).__name__)
        where = f" @ {node.span}" if node.span is not None else ""
        if node.routed:
            chosen = Term("!=", (Term.var("selected"), Term.const(0)))
            bindings.append(Binding("routed", chosen, f"{node}{where}: was this tile's key block chosen?"))
            return Term.var("routed")
        try:
            value = node.visible(ctx, Sym("q"), Sym("k"))
        except NotImplementedError as e:
            raise PatternError(f"{node.name} can't be evaluated inside a kernel tile yet: {e}", node.span) from None
        term = value.term if isinstance(value, Sym) else Term.const(bool(value))
        if term.is_const:
            return term
        term = table_calls(term)
        term, used = _floorize(term)
        uses_floor |= used
        name, count = f"vis_{count}", count + 1
        bindings.append(Binding(name, term, f"{node}{where}"))
        return Term.var(name)

    traced = {"causal": False, AS_ARGUMENT: slots}
    ctx = Context(Sym("M"), Sym("N"), Sym("h"), grid, traced, q_offset=0)  # q: the position the kernel hands
    results = [(s, combine(s.expr, ctx)) for s in sections]
    result = results[-1][1]
    for s, r in reversed(results[:-1]):
        result = Term("where", (Term("<=", (Term.var("h"), Term.const(s.hi))), r, result))
    shaped = result.is_const or result == Term.var("routed")
    if shaped:  # keep the result a tensor of the tile's shape
        result = (_NOWHERE if result == Term.const(False) else _SHAPE if result.is_const
                  else Term("&", (_SHAPE, result)))
    routed = any(b.name == "routed" for b in bindings)
    return Predicate(tuple(bindings), result, shaped, uses_floor, routed, len(slots))


def term_source(term: Term) -> str:
    """A (floorized) term as a Triton expression."""
    return to_text(term, NAMES, FUNCTIONS, bool_words=("True", "False"))


def _combination(term: Term) -> str:
    """The bindings' combination, every `|` and `&` in its own parentheses."""
    if term.op == "var":
        return NAMES.get(term.args[0], term.args[0])
    if term.op == "const":
        return "True" if term.value else "False"
    if term.op in ("|", "&"):
        return f"({_combination(term.args[0])} {term.op} {_combination(term.args[1])})"
    if term.op == "~":
        return f"~{_combination(term.args[0])}"
    if term.op == "where":
        cond, a, b = term.args
        return f"tl.where({term_source(cond)}, {_combination(a)}, {_combination(b)})"
    raise TypeError(f"'{term.op}' can't combine primitives")


def predicate_lines(predicate: Predicate) -> list[str]:
    """The body of `visible()`: each binding under its comment, then the combination."""
    lines = []
    for b in predicate.bindings:
        lines += [f"# {b.comment}", f"{b.name} = {term_source(b.term)}"]
    result = term_source(predicate.result) if predicate.shaped else _combination(predicate.result)
    return lines + [f"return {result}"]
