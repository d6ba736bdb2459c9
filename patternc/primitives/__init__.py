"""The primitives of the pattern language, one module each, registered by name.

Every module of this package is imported here, so a primitive's module is all it takes to
add one: its class registers itself in `REGISTRY` under its language name.
"""
import importlib
import pkgutil

from ..ir.context import Context
from .base import REGISTRY, Primitive

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["REGISTRY", "Context", "Primitive"]
