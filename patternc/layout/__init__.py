"""Pattern -> block-sparse Layout (analytic lowering, no N x N mask)."""
from .build import build_layout
from .layout import EMPTY, FULL, PARTIAL, Layout

__all__ = ["EMPTY", "FULL", "PARTIAL", "Layout", "build_layout"]
