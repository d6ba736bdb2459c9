"""patternc: a compiler for sparse attention patterns.

    p = patternc.compile("causal & window(1024)")     # -> Pattern
    p.mask(64)                                        # bool [heads, M, N] reference mask
    p.layout(32768)                                   # block-sparse Layout, built analytically
    out = patternc.attention(q, k, v, p)              # generated Triton kernel
"""
from __future__ import annotations

from .errors import PatternError
from .frontend import jit
from .grammar import compile, load  # noqa: A004 - compile is the product's verb
from .ir import Pattern, where
from .layout import Layout  # also registers Pattern.layout and Pattern.mask_mod
from .runtime import attention, reference_attention  # also makes @jit predicates callable
from .version import __version__

__all__ = ["Layout", "Pattern", "PatternError", "attention", "compile", "load", "jit", "reference_attention", "simulate",
           "where", "__version__"]


def simulate(pattern, M, N=None, heads=None, head_dim=128, dtype="bfloat16", batch=1, device="h100", config=None,
             documents=None):
    """Predicted forward time and speedups of `pattern` on a device (a `patternc.sim.Prediction`)."""
    from .sim import simulate as _simulate

    return _simulate(pattern, M, N, heads, head_dim, dtype, batch, device, config, documents)


