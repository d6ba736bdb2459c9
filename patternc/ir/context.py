"""`Context`: where a rule is evaluated (lengths, head, token grid, run-time data)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Context:
    """Where a rule is evaluated: lengths, the head index, the token grid and run-time data.

    `M`, `N` and `h` are values of the evaluation domain (ints, tensors, intervals or symbols).
    Queries are the last M positions of the key sequence: query row `q` sits at position
    `q + N - M`, and rules read positions (`position`). `q_offset` overrides where row 0 sits;
    a kernel's trace sets it to 0: the kernel hands `visible()` positions it computed itself.
    """

    M: object
    N: object
    h: object = 0
    grid: tuple[int, ...] | None = None
    data: dict = field(default_factory=dict)
    q_offset: object = None  # the position of query row 0; None: N - M (bottom-right aligned)

    def position(self, q):
        """The position of query row(s) `q` among the keys."""
        return q + (self.N - self.M if self.q_offset is None else self.q_offset)

    def row(self, q):
        """The raw row `0..M-1` that `q` stands for (FlexAttention's convention, which routed
        choices and traced predicates read): `q`, or `position(q) - (N - M)` with `q_offset`."""
        return q if self.q_offset is None else self.position(q) - (self.N - self.M)

    def blocked(self, b) -> Context:
        return dataclasses.replace(self, M=(self.M + b - 1) // b, N=(self.N + b - 1) // b)

    def env(self) -> dict:
        return {"M": self.M, "N": self.N, "h": self.h}
