"""The cost of a pattern's predicate: weighted operations of the kernel's `visible()`.

The simulator charges partial tiles for the predicate the kernel evaluates there. It walks
the `Term` trees of that predicate (`patternc.codegen.predicate.trace`: one binding per
primitive, then their combination, floor helpers where the kernel has them), finds every
operation that reads the query or key index (directly or through an earlier binding), counts
each distinct subexpression once (the compiler shares them), and weighs it by a rough
instruction count:

| operation | weight |
|---|---|
| comparison, `+ - *`, negation, `min`/`max`, `where`, `abs` | 1 |
| `&`, `|`, `^`, `~` | 0 (fused into the comparisons as predicate logic) |
| `//`, `%` by a power of two | 2 |
| `//`, `%` by anything else | 5 |
| `floor_mod(a, b)` = `(a % b + b) % b` | 2 x (`%`) + 1 |
| `floor_div(a, b)` = `(a - floor_mod(a, b)) // b` | floor_mod + 1 + (`//`) |

Operations on query indices only or key indices only are counted like element-wise ones: the
measured partial-tile costs (FlexAttention's especially) follow that count much better than a
count of element-wise operations alone. Operations on scalars only (`h % 16`) are free.
"""
from __future__ import annotations

import ast

from ..codegen.predicate import FUNCTIONS, NAMES, trace
from ..errors import PatternError
from ..ir.expr import COMPARISONS, Term

WEIGHTS = {"compare": 1, "arith": 1, "logic": 0, "call": 1, "div_pow2": 2, "div": 5}
INDEX_NAMES = ("q", "k")


def _divide(divisor: Term) -> int:
    v = divisor.value if divisor.is_const else None
    return WEIGHTS["div_pow2"] if isinstance(v, int) and v > 0 and v & (v - 1) == 0 else WEIGHTS["div"]


def _own_weight(term: Term) -> int:
    """The weight of one operation, not counting its operands."""
    op = term.op
    if op in COMPARISONS:
        return WEIGHTS["compare"]
    if op in ("//", "%"):
        return _divide(term.args[1])
    if op in ("&", "|", "^", "~"):
        return WEIGHTS["logic"]
    if op in ("+", "-", "*", "neg"):
        return WEIGHTS["arith"]
    if op == "floor_mod":
        return 2 * _divide(term.args[1]) + 1
    if op == "floor_div":
        return 2 * _divide(term.args[1]) + 2 + _divide(term.args[1])
    if op in ("const", "var"):
        return 0
    return WEIGHTS["call"]


def term_ops(bindings, result: Term) -> int:
    """Weighted operation count of `name = term` bindings, in order, then `result` (see the
    module docstring)."""
    reads = set(INDEX_NAMES)
    seen: set[Term] = set()

    def cost(term: Term) -> int:
        if term in seen:
            return 0
        seen.add(term)
        total = sum(cost(a) for a in term.args if isinstance(a, Term))
        if term.free_vars() & reads:
            total += _own_weight(term)
        return total

    count = 0
    for name, term in bindings:
        count += cost(term)
        if term.free_vars() & reads:
            reads.add(name)
        else:
            reads.discard(name)
    return count + cost(result)


def pattern_ops(pattern, heads: int, M: int, N: int) -> int | None:
    """Weighted operation count of the predicate the kernel would evaluate for `pattern`;
    None where no predicate can be emitted (primitives that read run-time tables)."""
    grid = pattern.rule_grid(M, N)
    try:
        predicate = trace(pattern.sections(heads), grid)
    except (PatternError, NotImplementedError, TypeError):
        return None
    return term_ops(((b.name, b.term) for b in predicate.bindings), predicate.result)


# --------------------------------------------------------------------------- predicates as text

_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.FloorDiv: "//", ast.Mod: "%", ast.BitAnd: "&",
        ast.BitOr: "|", ast.BitXor: "^", ast.Lt: "<", ast.LtE: "<=", ast.Eq: "==", ast.NotEq: "!=",
        ast.Gt: ">", ast.GtE: ">=", ast.USub: "neg", ast.Invert: "~"}
_VARIABLES = {v: k for k, v in NAMES.items()}
_CALLS = {v: k for k, v in FUNCTIONS.items()}


def _term(node: ast.AST) -> Term:
    """A Python expression of the kernel's names as a Term over the pattern's."""
    if isinstance(node, ast.Name):
        return Term.var(_VARIABLES.get(node.id, node.id))
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return Term.const(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return Term(_OPS[type(node.op)], (_term(node.left), _term(node.right)))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
        return Term(_OPS[type(node.op)], (_term(node.operand),))
    if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _OPS:
        return Term(_OPS[type(node.ops[0])], (_term(node.left), _term(node.comparators[0])))
    if isinstance(node, ast.Call) and ast.unparse(node.func) in _CALLS:
        return Term(_CALLS[ast.unparse(node.func)], tuple(_term(a) for a in node.args))
    raise ValueError(f"not a predicate expression: {ast.unparse(node)}")


def predicate_ops(source: str) -> int:
    """`term_ops` of a predicate body written as Triton source (`name = expr` lines, then
    `return expr`), for predicates written by hand."""
    bindings, result = [], Term.const(True)
    for statement in ast.parse(source).body:
        if isinstance(statement, ast.Assign) and len(statement.targets) == 1 \
                and isinstance(statement.targets[0], ast.Name):
            bindings.append((statement.targets[0].id, _term(statement.value)))
        elif isinstance(statement, ast.Return) and statement.value is not None:
            result = _term(statement.value)
        else:
            raise ValueError(f"a predicate body holds assignments and a return, not: {ast.unparse(statement)}")
    return term_ops(bindings, result)
