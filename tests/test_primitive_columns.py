"""`columns(s, phase=s-1)`: `k % s == phase`, per head with `h` (DESIGN.md's language table),
restated in numpy."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from reference import idx, per_head


@st.composite
def case(draw):
    s = draw(st.integers(1, 20))
    kind = draw(st.sampled_from(["default", "const", "head"]))
    if kind == "default":
        text, phase = f"columns({s})", lambda h: s - 1
    elif kind == "const":
        c = draw(st.integers(0, s - 1))
        text, phase = f"columns({s}, phase={c})", lambda h: c
    else:  # S2-Attention: every head its own column
        text, phase = f"columns({s}, phase=h % {s})", lambda h: h % s

    def ref(M, N, H):
        q, k = idx(M, N)
        return per_head(lambda h: np.broadcast_to(k % s == phase(h), (M, N)), H)
    return text, ref
