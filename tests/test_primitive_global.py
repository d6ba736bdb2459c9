"""`global(i, j, a..b, ...)`: a query at a listed position sees every key, every query sees the
listed keys (DESIGN.md's language table; query positions `p = q + N - M`), restated in numpy."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from reference import positions


@st.composite
def case(draw):
    items = draw(st.lists(st.one_of(st.integers(0, 100).map(lambda i: (i, i, False)),
                                    st.tuples(st.integers(0, 100), st.integers(0, 30)).map(
                                        lambda t: (t[0], t[0] + t[1], True))), min_size=1, max_size=4))
    tokens = sorted({t for lo, hi, _ in items for t in range(lo, hi + 1)})
    text = "global(" + ", ".join(f"{lo}..{hi}" if rng else str(lo) for lo, hi, rng in items) + ")"

    def ref(M, N, H):
        p, k = positions(M, N)
        return np.broadcast_to(np.isin(p, tokens) | np.isin(k, tokens), (H, M, N))
    return text, ref
