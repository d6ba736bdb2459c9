"""Running patterns: `attention`, the kernel cache, the dense reference."""
from ..ir.pattern import DELEGATES
from .api import attention
from .attention import reference_attention


def _call_jit(q, k, v, pattern, **kw):
    """Calling a `@patternc.jit` predicate (`attention` is looked up per call, so it can be patched)."""
    return attention(q, k, v, pattern, **kw)


DELEGATES.update(attention=_call_jit)

__all__ = ["attention", "reference_attention"]
