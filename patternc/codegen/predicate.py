"""A pattern's rule as Triton source: one line per primitive, then their combination.

Each primitive's `visible()` is traced with symbolic indices (`Sym`) into a `Term` and
printed with Triton names. Integer `//` and `%` whose dividend may be negative go through
floor helpers, because Triton (like C) truncates toward zero while the pattern semantics
floor (as Python and torch do).
"""
from __future__ import annotations

from ..errors import PatternError
from ..ir.expr import Interval, Sym, Term, evaluate, to_text
from ..ir.nodes import Difference, Intersect, Node, Union
from ..primitives import Context, Primitive

NAMES = {"q": "q_idx", "k": "kv_idx", "h": "off_h", "M": "Q_LEN", "N": "KV_LEN"}
FUNCTIONS = {"min": "tl.minimum", "max": "tl.maximum", "where": "tl.where", "abs": "tl.abs"}
# index ranges the kernel can meet (int32 offsets), to decide where floor helpers are needed
_RANGES = {"q": (0, 2**31 - 1), "k": (0, 2**31 - 1), "h": (0, 2**16), "M": (1, 2**31 - 1), "N": (1, 2**31 - 1)}

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


def term_source(term: Term) -> tuple[str, bool]:
    """(Triton expression, whether it needs the floor helpers)."""
    term, used = _floorize(term)
    fns = dict(FUNCTIONS, floor_div="floor_div", floor_mod="floor_mod")
    return to_text(term, NAMES, fns, bool_words=("True", "False")), used


def predicate_source(sections, grid) -> tuple[str, bool]:
    """The body of `visible(q_idx, kv_idx, off_h, Q_LEN, KV_LEN[, selected])`: one assignment
    per primitive with a comment naming it and where it was written, then the combination.
    Sections for different heads are selected with `off_h`. A routed primitive (topk) is the
    tile's `selected` flag: its blocks are whole tiles, chosen or not at run time."""
    lines: list[str] = []
    uses_floor = False
    counter = [0]

    def emit(node: Node, ctx: Context) -> str:
        nonlocal uses_floor
        if isinstance(node, Primitive) and node.per_head_tables and node.name == "topk":
            where = f" @ {node.span}" if node.span is not None else ""
            lines.append(f"# {node}{where}: was this tile's key block chosen?")
            lines.append("routed = selected != 0")
            return "routed"
        if isinstance(node, Primitive):
            try:
                value = node.visible(ctx, Sym("q"), Sym("k"))
            except NotImplementedError as e:
                raise PatternError(f"{node.name} can't be evaluated inside a kernel tile yet: {e}", node.span) from None
            term = value.term if isinstance(value, Sym) else Term.const(bool(value))
            if term.is_const:
                return "True" if term.value else "False"
            text, used = term_source(term)
            uses_floor |= used
            name = f"vis_{counter[0]}"
            counter[0] += 1
            where = f" @ {node.span}" if node.span is not None else ""
            lines.append(f"# {node}{where}")
            lines.append(f"{name} = {text}")
            return name
        a, b = emit(node.a, ctx), emit(node.b, ctx)
        if isinstance(node, Union):
            return f"({a} | {b})"
        if isinstance(node, Intersect):
            return f"({a} & {b})"
        if isinstance(node, Difference):
            return f"({a} & ~{b})"
        raise TypeError(type(node).__name__)

    ctx = Context(Sym("M"), Sym("N"), Sym("h"), grid)
    results = []
    for s in sections:
        results.append((s, emit(s.expr, Context(ctx.M, ctx.N, ctx.h, grid, {"causal": False}))))
    expr = results[-1][1]
    for s, r in reversed(results[:-1]):
        expr = f"tl.where(off_h <= {s.hi}, {r}, {expr})"
    if expr in ("True", "False", "routed"):  # keep the result a tensor of the tile's shape
        expr = {"True": "(q_idx >= 0) & (kv_idx >= 0)", "False": "(q_idx < 0) & (kv_idx < 0)",
                "routed": "(q_idx >= 0) & (kv_idx >= 0) & routed"}[expr]
    lines.append(f"return {expr}")
    return "\n".join(lines), uses_floor
