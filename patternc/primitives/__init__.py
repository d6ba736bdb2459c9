"""The primitives of the pattern language, one module each, registered by name."""
from . import (blocked, causal, columns, full, global_, neighborhood, pow2, random_, sink,  # noqa: F401
               strided, topk, window)
from .base import REGISTRY, Context, Primitive

__all__ = ["REGISTRY", "Context", "Primitive"]
