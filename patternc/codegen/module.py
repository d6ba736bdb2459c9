"""The generated module: the forward family, and the backward family after it when asked."""
from __future__ import annotations

from .backward import BACKWARD_DOC, backward_source
from .forward import KernelSpec, forward_source


def module_source(spec: KernelSpec, summary: str = "", backward: bool = False) -> str:
    """The whole generated module as formatted Python source: `launch()` (the forward), and with
    `backward=True` also `launch_backward()`. `summary` (lines ending in a newline) describes the
    layout in the header. Raises ValueError for a spec whose backward can't be generated."""
    if not backward:
        return forward_source(spec, summary)
    tail = backward_source(spec)  # first: it raises for what has no backward yet
    return forward_source(spec, summary, BACKWARD_DOC) + tail
