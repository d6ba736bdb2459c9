"""`blocked(b)`: `p // b == k // b` on query positions `p = q + N - M` (DESIGN.md's language table),
restated in numpy."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from reference import positions


@st.composite
def case(draw):
    b = draw(st.integers(1, 40))

    def ref(M, N, H):
        p, k = positions(M, N)
        return np.broadcast_to(p // b == k // b, (H, M, N))
    return f"blocked({b})", ref
