"""`sink(n)`: `k < n` (DESIGN.md's language table), restated in numpy."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from reference import idx


@st.composite
def case(draw):
    n = draw(st.integers(1, 40))

    def ref(M, N, H):
        q, k = idx(M, N)
        return np.broadcast_to(k < n, (H, M, N))
    return f"sink({n})", ref
