"""The IR: expressions over token indices (`expr`), pattern nodes (`nodes`), `Pattern`."""
from .expr import Sym, Term, where
from .nodes import Difference, Intersect, Node, Union
from .pattern import Pattern, Section

__all__ = ["Difference", "Intersect", "Node", "Pattern", "Section", "Sym", "Term", "Union", "where"]
