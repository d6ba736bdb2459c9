"""The simulator: a pattern's kernel time and speedup, predicted before anything runs.

    from patternc.sim import simulate
    p = simulate("causal & window(1024)", 32768, heads=16, head_dim=128)
    p.ms, p.config_name, p.speedup_vs_dense, p.speedup_vs_flex, p.ideal_speedup, p.worst_tile_speedup

`simulate` (a `Prediction`), `simulate_training` (forward + backward), `sweep` (rank parameter values and tile configs), `closed_form`
(time and speedup as sympy expressions in N, and the break-even length, where they exist), `Profile`
(device profiles: `patternc/sim/profiles/*.json`, or measured by `patternc calibrate`).
Modules: `predict` (simulate), `model` (the formulas per program), `schedule`, `ops` (predicate
cost), `profile`, `fit`, `calibrate`, `sweeps`, `formulas` (closed forms). The names below load
on first use, so importing the package stays cheap; the command line (`patternc simulate`,
`patternc calibrate`) is in `patternc.cli`.
"""
from __future__ import annotations

_EXPORTS = {  # name -> module (modules are named apart from the functions, so neither shadows the other)
    "ClosedForm": "formulas", "closed_form": "formulas",
    "ConfigPrediction": "predict", "Prediction": "predict", "simulate": "predict",
    "Profile": "profile",
    "SweepPoint": "sweeps", "parse_sweep": "sweeps", "sweep": "sweeps",
    "TrainingPrediction": "training", "simulate_training": "training",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'patternc.sim' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
