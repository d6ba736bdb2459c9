"""Pattern -> block-sparse Layout (analytic lowering, no N x N mask), and its FlexAttention export."""
from ..ir.pattern import DELEGATES
from .build import build_layout
from .flex import mask_mod
from .layout import EMPTY, FULL, PARTIAL, Layout

DELEGATES.update(layout=build_layout, mask_mod=mask_mod)  # Pattern.layout / Pattern.mask_mod

__all__ = ["EMPTY", "FULL", "PARTIAL", "Layout", "build_layout", "mask_mod"]
