"""A routed pattern (one `topk`, say) as two static patterns: its routed primitive replaced by
every key (the block was chosen) and by no key (it was not). Layouts, Flex export and the
routed runtime build on these."""
from __future__ import annotations

import dataclasses

from ..errors import PatternError
from ..ir.nodes import Node
from ..ir.pattern import Pattern
from ..primitives import Primitive


def routed_node(pattern: Pattern) -> Primitive:
    """The pattern's one routed primitive (several are not supported yet: a clear error). The
    routing kernels read its options: `block`, `count`, `threshold`, `shared` and `query`."""
    nodes = [p for p in pattern.primitives() if p.routed]
    if len(nodes) != 1 or isinstance(pattern.body, tuple):
        raise PatternError("routed patterns with more than one topk, or with per-head sections, are not supported yet",
                           pattern.span)
    return _routed_in(pattern.expr)  # with the pattern's parameters substituted


def _routed_in(expr: Node) -> Primitive:
    return next(n for n in expr.walk() if isinstance(n, Primitive) and n.routed)


def _replace(node: Node, target: Node, by: Node) -> Node:
    if node is target:
        return by
    changes = {f.name: _replace(getattr(node, f.name), target, by) for f in dataclasses.fields(node)
               if isinstance(getattr(node, f.name), Node)}
    return dataclasses.replace(node, **changes) if changes else node


def static_variants(pattern: Pattern) -> tuple[Pattern, Pattern, int, int]:
    """(pattern with topk := every key, pattern with topk := no key, k or None, routing block)."""
    routed_node(pattern)
    expr = pattern.expr
    target = _routed_in(expr)  # this very node: `_replace` finds it by identity
    if not (target.block.is_const and (target.count is None or target.count.is_const)):
        raise PatternError("topk's k and block must be constants at run time", target.span)
    every, none = target.routed_variants()
    chosen = Pattern(_replace(expr, target, every), grid=pattern.grid)
    nothing = Pattern(_replace(expr, target, none), grid=pattern.grid)
    count = None if target.count is None else target.count.value
    return chosen, nothing, count, target.block.value
