"""`strided(s)`: `(p - k) % s == 0` on query positions `p = q + N - M` (DESIGN.md's language table),
restated in numpy."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from reference import positions


@st.composite
def case(draw):
    s = draw(st.integers(1, 30))

    def ref(M, N, H):
        p, k = positions(M, N)
        return np.broadcast_to((p - k) % s == 0, (H, M, N))
    return f"strided({s})", ref
