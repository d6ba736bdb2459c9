"""The pattern IR: an immutable expression tree of primitives joined by `|`, `&` and `-`.

Nodes are frozen dataclasses; their `span` (where they were written) does not count for
equality. `str(node)` prints canonical pattern text that parses back to an equal node.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

from ..errors import Span


# a band lists at most this many key intervals per query range; past it, one span (a superset:
# candidate tiles are still classified exactly, there are just more of them)
MAX_INTERVALS = 512


def _span(bands):
    import numpy as np

    return [(np.minimum.reduce([lo for lo, _ in bands]), np.maximum.reduce([hi for _, hi in bands]))]


@dataclass(frozen=True)
class Node:
    span: Span | None = field(default=None, compare=False, repr=False, kw_only=True)

    def __or__(self, other: Node) -> Node:
        return Union(self, other)

    def __and__(self, other: Node) -> Node:
        return Intersect(self, other)

    def __sub__(self, other: Node) -> Node:
        return Difference(self, other)

    def children(self) -> tuple[Node, ...]:
        return ()

    def walk(self):
        """This node and every node below it, parents first."""
        yield self
        for c in self.children():
            yield from c.walk()

    def visible(self, ctx, q, k):
        """May query q see key k? Evaluated in any domain of `patternc.ir.expr`."""
        raise NotImplementedError

    def band(self, ctx, q0, q1):
        """Key-index intervals [lo, hi) that may be visible from queries [q0, q1) (numpy)."""
        raise NotImplementedError

    def bounds_causally(self) -> bool:
        """Does `self & x` keep every query off future keys? (a primitive's hook; see `under_causal`)"""
        return False


@dataclass(frozen=True)
class Combinator(Node):
    a: Node
    b: Node
    symbol = "?"
    precedence = 0

    def children(self):
        return (self.a, self.b)

    def __str__(self):
        def wrap(node, strict):
            s = str(node)
            p = getattr(node, "precedence", 99)
            return f"({s})" if p < self.precedence or (strict and p == self.precedence) else s

        return f"{wrap(self.a, False)} {self.symbol} {wrap(self.b, True)}"


@dataclass(frozen=True)
class Union(Combinator):
    """`a | b`: visible in either."""

    symbol = "|"
    precedence = 1

    def visible(self, ctx, q, k):
        return self.a.visible(ctx, q, k) | self.b.visible(ctx, q, k)

    def band(self, ctx, q0, q1):
        return self.a.band(ctx, q0, q1) + self.b.band(ctx, q0, q1)


@dataclass(frozen=True)
class Intersect(Combinator):
    """`a & b`: visible in both."""

    symbol = "&"
    precedence = 3

    def visible(self, ctx, q, k):
        return self.a.visible(ctx, q, k) & self.b.visible(ctx, q, k)

    def band(self, ctx, q0, q1):
        import numpy as np

        a, b = self.a.band(ctx, q0, q1), self.b.band(ctx, q0, q1)
        if len(a) * len(b) > MAX_INTERVALS:  # pairwise would blow up: intersect the two spans
            a, b = _span(a), _span(b)
        return [(np.maximum(alo, blo), np.minimum(ahi, bhi)) for alo, ahi in a for blo, bhi in b]


@dataclass(frozen=True)
class Difference(Combinator):
    """`a - b`: visible in a but not in b."""

    symbol = "-"
    precedence = 6

    def visible(self, ctx, q, k):
        return self.a.visible(ctx, q, k) & ~self.b.visible(ctx, q, k)

    def band(self, ctx, q0, q1):
        return self.a.band(ctx, q0, q1)


def node_fields(node: Node):
    return [f for f in fields(node) if f.name != "span"]
