"""`causal`: `k <= p`, the query's position `p = q + N - M`: bottom-right aligned (DESIGN.md's
language table), restated in numpy."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from reference import mask_of, positions


def case():
    def ref(M, N, H):
        p, k = positions(M, N)
        return np.broadcast_to(k <= p, (H, M, N))
    return st.just(("causal", ref))


def test_causal_is_bottom_right_aligned():
    m = mask_of("causal", 3, 5)[0]
    assert m.tolist() == [[True, True, True, False, False],
                          [True, True, True, True, False],
                          [True, True, True, True, True]]
    m = mask_of("causal", 5, 3)[0]
    assert m.sum(1).tolist() == [0, 0, 1, 2, 3]  # more queries than keys: the first see nothing
