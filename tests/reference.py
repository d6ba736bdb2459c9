"""Helpers for the independent references: tests/test_primitive_<name>.py and tests/test_masks.py.

Every textual primitive has a file `tests/test_primitive_<name>.py` (test_masks checks it). The
file defines `case`: a function returning a hypothesis strategy of `(text, reference)`, where
`reference(M, N, H) -> bool [H, M, N]` is plain numpy written from DESIGN.md's language table,
never from patternc's code, for any lengths M, N, on the query positions `p = q + N - M`
(`positions`); or `case = None` with a comment saying why (routed, grid-only or random rules)
and that primitive's own comparisons as tests. The generic
tests of test_masks.py (definition, `block=`, combinators, head sections) run over every `case`.
"""
from __future__ import annotations

import importlib
import sys
from functools import cache
from pathlib import Path

import numpy as np
import torch
from hypothesis import strategies as st

import patternc
from patternc.primitives import REGISTRY

TESTS = Path(__file__).resolve().parent


def mask_of(text, M, N=None, heads=None, **kw) -> np.ndarray:
    return patternc.compile(text).mask(M, N, heads, **kw).numpy()


def idx(M, N):
    return np.arange(M)[:, None], np.arange(N)[None, :]


def positions(M, N):
    """(p, k): the query positions `p = q + N - M` (queries are the last M of the N positions,
    DESIGN.md's language section) as a column, the keys as a row."""
    q, k = idx(M, N)
    return q + N - M, k


def per_head(f, H):
    """[H, M, N] from a function of the head index."""
    return np.stack([f(h) for h in range(H)])


def cdiv(a, b):
    return -(-a // b)


def on_blocks(ref, b):
    """A reference applied to blocks of positions: query position p in block `p // b`, key k in
    `k // b`. `ref` runs over the block positions the queries occupy (the last of the ceil(N/b)
    key blocks, from the first query's `(N - M) // b`), and is expanded to tokens."""
    def go(M, N, H):
        first, n_k = (N - M) // b, cdiv(N, b)
        blocks = ref(n_k - first, n_k, H)  # its rows: block positions first..n_k-1
        p, k = positions(M, N)
        return blocks[:, p // b - first, k // b]
    return go


def same(got, want, text):
    want = np.broadcast_to(want, got.shape)
    if not np.array_equal(got, want):
        bad = np.argwhere(got != want)[:5].tolist()
        raise AssertionError(f"{text}: {int((got != want).sum())} entries differ, e.g. [h, q, k] = {bad} "
                             f"(got {[bool(got[tuple(i)]) for i in bad]})")


def with_block(text, b):
    if "(" not in text:
        return f"{text}(block={b})"
    return f"{text[:-1]}, block={b})"


# --------------------------------------------------------------------------- the per-primitive files


@cache
def primitive_tests() -> dict:
    """Primitive name -> its module tests/test_primitive_<name>.py. Imported by module name, as
    pytest imports test files, so both share one module object (and pytest's assert rewriting)."""
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    return {path.stem.removeprefix("test_primitive_"): importlib.import_module(path.stem)
            for path in sorted(TESTS.glob("test_primitive_*.py"))}


def references() -> dict:
    """Primitive name -> `case` for the files that define one (rules on any lengths M, N)."""
    return {name: module.case for name, module in primitive_tests().items() if getattr(module, "case", None)}


@st.composite
def leaf_case(draw, allow_block=True):
    """(text, reference) of any primitive with a `case`, on blocks a quarter of the time where
    the primitive takes `block=`."""
    cases = references()
    name = draw(st.sampled_from(sorted(cases)))
    text, ref = draw(cases[name]())
    if allow_block and REGISTRY[name].blockable and draw(st.integers(0, 3)) == 0:
        b = draw(st.integers(1, 12))
        return with_block(text, b), on_blocks(ref, b)
    return text, ref


def reference_grads(q, k, v, pattern, dout, dlse=None, scale=None, documents=None):
    """(dq, dk, dv) by torch.autograd of the fp64 dense reference, for the output's gradient `dout`
    and, given, the LSE's `dlse` (rows with no visible key contribute none); unused inputs get 0."""
    qd, kd, vd = (x.detach().double().requires_grad_() for x in (q, k, v))
    out, lse = patternc.reference_attention(qd, kd, vd, pattern, scale=scale, return_lse=True, documents=documents)
    loss = (out * dout.double()).sum()
    if dlse is not None:
        loss = loss + (torch.where(torch.isinf(lse), 0.0, lse) * dlse.double()).sum()
    grads = torch.autograd.grad(loss, (qd, kd, vd), allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for g, x in zip(grads, (qd, kd, vd))]


def assert_close(got, want, tol, what):
    """No NaN, and a relative error within `tol` (or both exactly zero)."""
    assert not torch.isnan(got).any(), f"{what}: NaN in the gradient"
    err = (got.double() - want).norm() / want.norm().clamp_min(1e-30)
    assert err <= tol or want.norm() == 0 and got.abs().max() == 0, f"{what}: relative error {err:.2e}"
