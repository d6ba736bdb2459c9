"""Pattern text -> IR (the grammar `pattern.lark` is package data)."""
from .parser import parse_text

__all__ = ["parse_text"]
