"""`full`: every key (DESIGN.md's language table), restated in numpy."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st


def case():
    return st.just(("full", lambda M, N, H: np.ones((H, M, N), bool)))
