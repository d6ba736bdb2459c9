"""Layout + pattern -> Triton source: kernel families composed from one emitter per axis."""
from .forward import GENERATOR_VERSION, KernelSpec, make_spec
from .module import module_source

__all__ = ["GENERATOR_VERSION", "KernelSpec", "make_spec", "module_source"]
