"""The cost of a pattern's predicate: weighted operations of the generated `visible()` body.

The simulator charges partial tiles for the predicate the kernel evaluates there. It reads the
source that `patternc.codegen.predicate.predicate_source` emits (Python syntax), finds every
operation that reads `q_idx` or `kv_idx` (directly or through an earlier `vis_i`), counts each
distinct subexpression once (the compiler shares them), and weighs it by a rough instruction
count:

| operation | weight |
|---|---|
| comparison, `+ - *`, `min`/`max`, `where`, `~` | 1 |
| `&`, `|`, `^` | 0 (fused into the comparisons as predicate logic) |
| `//`, `%` by a power of two | 2 |
| `//`, `%` by anything else | 5 |
| `floor_mod(a, b)` = `(a % b + b) % b` | 2 x (`%`) + 1 |
| `floor_div(a, b)` = `(a - floor_mod(a, b)) // b` | floor_mod + 1 + (`//`) |

Operations on query indices only or key indices only are counted like element-wise ones: the
measured partial-tile costs (FlexAttention's especially) follow that count much better than a
count of element-wise operations alone. Operations on scalars only (`off_h % 16`) are free.
"""
from __future__ import annotations

import ast

WEIGHTS = {"compare": 1, "arith": 1, "logic": 0, "call": 1, "div_pow2": 2, "div": 5}
INDEX_NAMES = ("q_idx", "kv_idx")


def _is_pow2(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, int) and node.value > 0 \
        and node.value & (node.value - 1) == 0


def _divide(divisor: ast.AST) -> int:
    return WEIGHTS["div_pow2"] if _is_pow2(divisor) else WEIGHTS["div"]


def _own_weight(node: ast.AST) -> int:
    """The weight of one operation, not counting its operands."""
    if isinstance(node, ast.Compare):
        return WEIGHTS["compare"] * len(node.ops)
    if isinstance(node, ast.BinOp):
        if isinstance(node.op, (ast.FloorDiv, ast.Mod)):
            return _divide(node.right)
        if isinstance(node.op, (ast.BitAnd, ast.BitOr, ast.BitXor)):
            return WEIGHTS["logic"]
        return WEIGHTS["arith"]
    if isinstance(node, ast.UnaryOp):
        return WEIGHTS["arith"] if not isinstance(node.op, ast.Invert) else WEIGHTS["logic"]
    if isinstance(node, ast.BoolOp):
        return WEIGHTS["logic"] * (len(node.values) - 1)
    if isinstance(node, ast.Call):
        name = ast.unparse(node.func)
        if name == "floor_mod" and len(node.args) == 2:
            return 2 * _divide(node.args[1]) + 1
        if name == "floor_div" and len(node.args) == 2:
            return 2 * _divide(node.args[1]) + 2 + _divide(node.args[1])
        return WEIGHTS["call"]
    return 0


def predicate_ops(source: str) -> int:
    """Weighted operation count of a predicate body (see the module docstring)."""
    tree = ast.parse(source)
    reads_index = {name: True for name in INDEX_NAMES}
    seen: set[str] = set()

    def depends(node: ast.AST) -> bool:
        if isinstance(node, ast.Name):
            return reads_index.get(node.id, False)
        return any(depends(c) for c in ast.iter_child_nodes(node))

    def cost(node: ast.AST) -> int:
        key = ast.dump(node)
        if key in seen:
            return 0
        seen.add(key)
        total = sum(cost(c) for c in ast.iter_child_nodes(node) if not isinstance(c, ast.expr_context))
        if depends(node):
            total += _own_weight(node)
        return total

    count = 0
    for statement in tree.body:
        if isinstance(statement, ast.Assign):
            count += cost(statement.value)
            for target in statement.targets:
                if isinstance(target, ast.Name):
                    reads_index[target.id] = depends(statement.value)
        elif isinstance(statement, (ast.Return, ast.Expr)) and statement.value is not None:
            count += cost(statement.value)
    return count


def pattern_ops(pattern, heads: int, M: int, N: int) -> int | None:
    """Weighted operation count of the predicate the kernel would evaluate for `pattern`;
    None where no predicate can be emitted (primitives that read run-time tables)."""
    from ..codegen.predicate import predicate_source
    from ..errors import PatternError

    grid = pattern.grid_shape(M, N)
    if grid is None and any(p.name == "neighborhood" for p in pattern.primitives()):
        grid = (N,)
    try:
        source, _ = predicate_source(pattern.sections(heads), grid)
    except (PatternError, NotImplementedError, TypeError):
        return None
    return predicate_ops(source)
