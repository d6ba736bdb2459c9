"""Running patterns: `attention`, the kernel cache, the dense reference."""
from .attention import attention, reference_attention

__all__ = ["attention", "reference_attention"]
