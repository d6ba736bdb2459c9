"""`strided(s)`: `(q - k) % s == 0` (DESIGN.md's language table), restated in numpy."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from reference import idx


@st.composite
def case(draw):
    s = draw(st.integers(1, 30))

    def ref(M, N, H):
        q, k = idx(M, N)
        return np.broadcast_to((q - k) % s == 0, (H, M, N))
    return f"strided({s})", ref
