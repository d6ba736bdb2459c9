"""A routed pattern (one `topk`, say) as two static patterns: its routed primitive replaced by
every key (the block was chosen) and by no key (it was not). Layouts, Flex export and the
routed runtime build on these."""
from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import PatternError
from ..ir.nodes import Node
from ..ir.pattern import Pattern
from ..primitives import Primitive
from .layout import FULL, PARTIAL


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


def pieces(a, b, stride: int):
    """The tiles of one head's two layouts (runs `(partial, full)` each, as `Layout.from_runs`
    takes them) as pieces of one class pair, cut where any run ends: keys `row * stride + column`
    (stride > key tiles, so a run's end stays in its row) of each piece's start and end, sorted,
    and `cls` = class in `a` | class in `b` << 2 (never 0: pieces in neither are left out)."""
    ka, ea, ca = _classed(a, stride)
    kb, eb, cb = _classed(b, stride)
    points = np.concatenate([ka, ea, kb, eb])
    points.sort()
    points = points[np.append(True, points[1:] != points[:-1])]
    start, end = points[:-1], points[1:]
    cls = _class_at(ka, ea, ca, start) | (_class_at(kb, eb, cb, start) << 2)
    keep = cls != 0  # a piece in some run stays in that run's row (no run boundary inside it)
    return start[keep], end[keep], cls[keep]


def _classed(runs, stride: int):
    """A layout's runs `(partial, full)` as sorted keys of their starts and ends, and their class."""
    (pr, pl, ph), (fr, fl, fh) = runs
    key = np.concatenate([pr * stride + pl, fr * stride + fl])
    end = np.concatenate([pr * stride + ph, fr * stride + fh])
    cls = np.repeat(np.array([PARTIAL, FULL], np.int8), [len(pr), len(fr)])
    order = np.argsort(key, kind="stable")
    return key[order], end[order], cls[order]


def _class_at(keys, ends, cls, at):
    """The class of the run holding each key of `at` (0 where none does)."""
    if not len(keys):
        return np.zeros(len(at), np.int8)
    i = np.maximum(np.searchsorted(keys, at, side="right") - 1, 0)
    return np.where((at >= keys[i]) & (at < ends[i]), cls[i], 0).astype(np.int8)
