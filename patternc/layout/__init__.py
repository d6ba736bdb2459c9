"""Pattern -> block-sparse Layout (analytic lowering, no N x N mask), and its FlexAttention export."""
from ..ir.pattern import DELEGATES
from .build import build_layout
from .documents import document_layout, document_mask_mod
from .flex import mask_mod
from .layout import EMPTY, FULL, PARTIAL, Layout

# Pattern.layout / Pattern.mask_mod, without and with packed documents
DELEGATES.update(layout=build_layout, mask_mod=mask_mod, document_layout=document_layout,
                 document_mask_mod=document_mask_mod)

__all__ = ["EMPTY", "FULL", "PARTIAL", "Layout", "build_layout", "mask_mod"]
