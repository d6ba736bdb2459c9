"""`Context`: where a rule is evaluated (lengths, head, token grid, run-time data)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Context:
    """Where a rule is evaluated: lengths, the head index, the token grid and run-time data.

    `M`, `N` and `h` are values of the evaluation domain (ints, tensors, intervals or symbols).
    """

    M: object
    N: object
    h: object = 0
    grid: tuple[int, ...] | None = None
    data: dict = field(default_factory=dict)

    def blocked(self, b) -> Context:
        return dataclasses.replace(self, M=(self.M + b - 1) // b, N=(self.N + b - 1) // b)

    def env(self) -> dict:
        return {"M": self.M, "N": self.N, "h": self.h}
