"""examples/train_tiny.py on the CPU: a handful of steps run, through patternc's custom op
and its backward, and the loss falls; the dense flag trains the same model with masked SDPA."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
import train_tiny  # noqa: E402

TINY = ["--seq-len", "96", "--steps", "8", "--dim", "64", "--heads", "4", "--layers", "2", "--batch", "4",
        "--lr", "3e-3", "--pattern", "causal & (window(24) | sink(2))"]


@pytest.mark.filterwarnings("ignore:patternc.attention on CPU tensors")
def test_loss_falls_and_matches_dense_training(tmp_path):
    log = train_tiny.main(TINY + ["--log", str(tmp_path / "pc.json")])
    losses = [r["loss"] for r in log]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3, losses
    dense = train_tiny.main(TINY + ["--dense"])
    # the same model, data and mask: the curves agree to float32 noise
    assert all(abs(a - r["loss"]) < 1e-3 for a, r in zip(losses, dense)), (losses, [r["loss"] for r in dense])
    saved = json.loads((tmp_path / "pc.json").read_text())
    assert saved["label"] == "patternc" and len(saved["steps"]) == 8
