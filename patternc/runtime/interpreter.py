"""What Triton's CPU interpreter (`TRITON_INTERPRET=1`) can be trusted with."""
from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def bf16_dot_works() -> bool:
    """Does the interpreter's `tl.dot` get bfloat16 right? Triton 3.9's keeps bfloat16 tiles as
    their uint16 bits and multiplies those as integers (InterpreterBuilder.create_dot), so every
    bfloat16 kernel returns garbage there (~8e8 off). One 16 x 16 product tells, once per process."""
    import torch
    import triton
    import triton.language as tl

    @triton.jit
    def square(X, Y):
        offs = tl.arange(0, 16)[:, None] * 16 + tl.arange(0, 16)[None, :]
        x = tl.load(X + offs)
        tl.store(Y + offs, tl.dot(x, x))

    x = torch.eye(16, dtype=torch.bfloat16) * 2
    y = torch.zeros(16, 16)
    square[(1,)](x, y)
    return torch.equal(y, torch.eye(16) * 4)
