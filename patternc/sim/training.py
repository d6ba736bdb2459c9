"""`simulate_training()`: a training step's attention time, forward plus backward, predicted.

The backward's three kernels (the delta pre-pass, dK/dV over the layout's columns, dQ over its
rows) visit the tiles the forward visits, each with the backward's five matmuls instead of two, so
the model scales the forward's prediction at the same tiles (the per-program, per-tile model of
`predict`) and adds the backward's fixed cost per call:

    forward + backward = BACKWARD_FACTOR * forward + BACKWARD_FIXED_MS

Fitted on an H200 (benchmarks/results/2026-12-01-h200-backward: six suite patterns at 8k and 32k,
bf16, D 128, 64x64 tiles): leave-one-out median error 10 %, worst 29 %. Not yet fitted per device,
head_dim or tile shape by `patternc calibrate`: say so where it matters (`notes`).
"""
from __future__ import annotations

from dataclasses import dataclass

from .predict import Prediction, simulate

BACKWARD_FACTOR = 4.135
BACKWARD_FIXED_MS = 0.389


@dataclass(frozen=True)
class TrainingPrediction:
    """Forward + backward (ms) at the training tiles; `forward`: the forward's `Prediction` there."""

    forward: Prediction
    ms: float

    @property
    def backward_ms(self) -> float:
        return self.ms - self.forward.ms

    @property
    def notes(self) -> tuple[str, ...]:
        return self.forward.notes + (
            f"backward: {BACKWARD_FACTOR} x the forward + {BACKWARD_FIXED_MS} ms, fitted on an H200 at D 128, bf16, "
            "64x64 tiles (benchmarks/results/2026-12-01-h200-backward); other devices and shapes are extrapolated",)

    def to_dict(self) -> dict:
        return {"ms": self.ms, "forward_ms": self.forward.ms, "backward_ms": self.backward_ms,
                "config": self.forward.config_name, "notes": list(self.notes), "forward": self.forward.to_dict()}


def simulate_training(pattern, M: int, N: int | None = None, heads: int | None = None, head_dim: int = 128,
                      dtype="bfloat16", batch: int = 1, device="h200", config=None) -> TrainingPrediction:
    """Predicted forward + backward attention time of `pattern` (arguments as `simulate`); the
    config defaults to the one training uses (`runtime.attention.training_config`)."""
    if config is None:
        import torch

        from ..runtime.attention import training_config
        from .profile import dtype_name

        config = dict(training_config(head_dim, getattr(torch, dtype_name(dtype))), memory="pointers")
    forward = simulate(pattern, M, N, heads, head_dim, dtype, batch, device, config)
    return TrainingPrediction(forward, BACKWARD_FACTOR * forward.ms + BACKWARD_FIXED_MS)
