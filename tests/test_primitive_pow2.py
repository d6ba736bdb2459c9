"""`pow2`: `D == 0` or `D` a positive power of two, `D = p - k` on query positions `p = q + N - M`
(DESIGN.md's language table), restated in numpy."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from reference import positions


def case():
    def ref(M, N, H):
        p, k = positions(M, N)
        D = p - k
        powers = np.isin(D, [2 ** i for i in range(12)])
        return np.broadcast_to((D == 0) | powers, (H, M, N))
    return st.just(("pow2", ref))
