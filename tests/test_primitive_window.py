"""`window(left, right, dilation=r)` and `window(w)` on query positions `p = q + N - M` (DESIGN.md's
language table), restated in numpy."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from reference import idx, mask_of, positions, same


@st.composite
def case(draw):
    form = draw(st.sampled_from(["w", "lr"]))
    r = draw(st.sampled_from([1, 1, 2, 3, 4, 7]))
    if form == "w":
        w = draw(st.integers(1, 40))
        left = right = w - 1
        text = f"window({w}" + (f", dilation={r})" if r != 1 else ")")
    else:
        left, right = draw(st.integers(0, 40)), draw(st.integers(0, 40))
        text = f"window({left}, {right}" + (f", dilation={r})" if r != 1 or draw(st.booleans()) else ")")

    def ref(M, N, H):
        p, k = positions(M, N)
        d = p - k
        return np.broadcast_to((p - left * r <= k) & (k <= p + right * r) & (d % r == 0), (H, M, N))
    return text, ref


def test_dilated_window_from_the_table():
    # window(w, dilation=r): d % r == 0 and abs(d) <= (w-1)*r
    for w, r in [(1, 3), (3, 2), (4, 5)]:
        q, k = idx(60, 60)
        d = q - k
        same(mask_of(f"window({w}, dilation={r})", 60)[0], (d % r == 0) & (abs(d) <= (w - 1) * r),
             f"window({w}, dilation={r})")
