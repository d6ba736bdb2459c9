"""Shared test setup: hypothesis profiles and the package on sys.path.

Profiles (pick with `HYPOTHESIS_PROFILE=...`; `dev` is the default):
- `dev`: the default run, tuned to keep the language tests well under three minutes on 2 cores;
- `ci`: more examples, for a nightly or pre-release run;
- `quick`: a smoke run while editing.
Tests that need a different budget say so with their own `@settings(max_examples=...)`,
which scales with the profile through `examples(n)`.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _import_triton_for_the_interpreter():
    """Triton fixes, when triton.language is first imported, whether its own language functions
    (`tl.zeros`, ...) run in the interpreter; tests switch TRITON_INTERPRET on per test, after
    other tests may have imported triton (torch.compile does). On a machine without CUDA, import
    it in interpreter mode first; patternc reads the variable per call, so tests without it still
    take the dense CPU path."""
    import torch

    if torch.cuda.is_available():
        return
    before = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import triton.language  # noqa: F401
    finally:
        if before is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = before


_import_triton_for_the_interpreter()

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
               derandomize=False, print_blob=True)
settings.register_profile("dev", max_examples=100, **_COMMON)
settings.register_profile("ci", max_examples=400, **_COMMON)
settings.register_profile("quick", max_examples=15, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

_SCALE = {"dev": 1.0, "ci": 4.0, "quick": 0.15}.get(os.environ.get("HYPOTHESIS_PROFILE", "dev"), 1.0)


def examples(n: int) -> int:
    """`n` examples under the dev profile, scaled for the others."""
    return max(5, int(n * _SCALE))


@pytest.fixture
def interpret(monkeypatch, tmp_path):
    """Generated kernels run in Triton's interpreter for this test, with a kernel cache of its own."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("PATTERNC_CACHE_DIR", str(tmp_path))


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="rewrite tests/golden/ from the current code generator instead of comparing")
