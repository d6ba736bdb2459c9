"""Layout + pattern -> Triton source."""
from .kernel import KernelSpec, make_spec, module_source

__all__ = ["KernelSpec", "make_spec", "module_source"]
