"""`blocked(b)`: `q // b == k // b` (DESIGN.md's language table), restated in numpy."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from reference import idx


@st.composite
def case(draw):
    b = draw(st.integers(1, 40))

    def ref(M, N, H):
        q, k = idx(M, N)
        return np.broadcast_to(q // b == k // b, (H, M, N))
    return f"blocked({b})", ref
