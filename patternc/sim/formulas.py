"""Predicted time and speedup as closed forms in N (self-attention, M = N), where they exist.

The model's time is launch + the makespan of the programs; without the last wave's
imbalance (a fluid schedule) the makespan is (sum of program times) x batch / slots, and the
sum of program times is linear in the layout's tile counts. For banded patterns (windows,
blocks, causal, dilated, strided...) those counts are exact polynomials of degree <= 2 in N
from some length on, for N a multiple of the pattern's period; so is the predicted time.
`closed_form` finds the polynomial from the layouts at three lengths, checks it at two more
(one step on, and at twice the length: else there is no closed form and it returns None),
and divides the dense time, `4 B H N^2 D` at the profile's throughput for the longest
measured length, by it:

    >>> f = closed_form("causal & window(1024)", heads=16)
    >>> f.time_us          # a*N + b    (for N >= f.valid_from, N a multiple of f.step)
    >>> f.break_even       # the shortest such N predicted faster than dense

The fluid form leaves out the tail (`ConfigPrediction.tail_ms`), so it runs a little under
`simulate` for short lengths; the check allows for exactly that.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sympy as sp

from .model import Shape, kernel_workload, resolve_costs
from .ops import pattern_ops
from .profile import config_name
from .predict import DEFAULT_OPS, _layout, as_pattern, as_profile, simulate

N = sp.Symbol("N", positive=True, integer=True)


@dataclass(frozen=True)
class ClosedForm:
    """Predicted kernel and dense times (microseconds) and speedup as expressions in `N`."""

    config: str
    time_us: sp.Expr
    dense_us: sp.Expr
    speedup: sp.Expr
    valid_from: int  # exact (in the fluid model) for N >= valid_from ...
    step: int  # ... and N a multiple of step
    break_even: int | None  # smallest valid N predicted at least as fast as dense (None: none up to 2^24)

    def time_ms(self, n: int) -> float:
        return float(self.time_us.subs(N, n)) / 1e3

    def speedup_at(self, n: int) -> float:
        return float(self.speedup.subs(N, n))

    def to_dict(self) -> dict:
        return {"config": self.config, "time_us": str(self.time_us), "dense_us": str(self.dense_us),
                "speedup": str(self.speedup), "valid_from": self.valid_from, "step": self.step,
                "break_even": self.break_even}


def _fluid_sum_us(pattern, n: int, heads: int, head_dim: int, dtype: str, config, profile, ops):
    """(sum of program times in us for one batch element at length n, slots)."""
    shape = Shape(n, n, heads, head_dim, dtype, 1)
    costs = resolve_costs(config, shape, profile)
    layout = _layout(pattern, n, n, heads, config["block_m"], config["block_n"], config.get("order", "auto"), head_dim)
    work = kernel_workload(layout, config, shape, ops, costs, profile)
    return float(work.times(profile.kernel, costs.tile_us).sum()), work.slots


UNITS = (1024, 2048, 4096)  # candidate periods: the form holds for multiples of one
FIRST = (1, 2, 4)  # ... from this many periods on


def closed_form(pattern, heads: int | None = None, head_dim: int = 128, dtype="bfloat16", batch: int = 1,
                device="h100", config=None, reference_length: int = 8192) -> ClosedForm | None:
    """The predicted time and speedup over dense as expressions in N (see the module docstring);
    None where no polynomial fits the tile counts (checked at two more lengths).
    `config` defaults to the one `simulate` picks at N = `reference_length`."""
    pattern = as_pattern(pattern)
    profile = as_profile(device)
    heads = pattern.default_heads if heads is None else heads
    if pattern.grid is not None or pattern.is_routed:
        return None  # a token grid fixes the length; routed tiles depend on the data
    first = simulate(pattern, reference_length, heads=heads, head_dim=head_dim, dtype=dtype, batch=batch,
                     device=profile, config=config)
    config = first.config
    ops = pattern_ops(pattern, heads, reference_length, reference_length)
    ops = DEFAULT_OPS if ops is None else ops
    sums = {}

    def total(n):
        if n not in sums:
            sums[n] = _fluid_sum_us(pattern, n, heads, first.head_dim, first.dtype, config, profile, ops)
        return sums[n]

    for unit in UNITS:
        if unit % config["block_m"] or unit % config["block_n"]:
            continue
        for k in FIRST:
            # fit on three lengths; check one step on and at twice the last (past a power of two,
            # where log terms such as pow2's change slope)
            lengths = [unit * (k + i) for i in range(4)] + [2 * unit * (k + 2)]
            values = [total(n)[0] for n in lengths]
            coeffs = np.polyfit(np.array(lengths[:3], float), np.array(values[:3]), 2)
            if all(abs(np.polyval(coeffs, n) - v) <= 1e-7 * max(abs(v), 1.0) for n, v in zip(lengths[3:], values[3:])):
                return _form(coeffs, total(lengths[0])[1], batch, heads, first, profile, config, lengths[0], unit)
    return None


def _form(coeffs, slots, batch, heads, first, profile, config, valid_from, step) -> ClosedForm:
    from .model import _shape_factor

    c2, c1, c0 = (float(c) * batch / slots for c in coeffs)
    launch = profile.kernel["launch_us"]
    time = sum((sp.Float(round(c, 12), 6) * N ** i for i, c in ((2, c2), (1, c1), (0, c0 + launch)) if abs(c) > 1e-12),
               sp.Integer(0))
    top = profile.dense["points"][-1]
    ref = profile.reference["head_dim"]
    rate = 4 * profile.dense["batch"] * profile.dense["heads"] * top["M"] * top["N"] * ref / (top["ms"] * 1e3)
    rate /= _shape_factor(profile, Shape(1, 1, heads, first.head_dim, first.dtype)) * ref / first.head_dim
    per_n2 = 4 * batch * heads * first.head_dim / rate  # us per N^2 at the longest measured length's throughput
    dense = sp.Float(per_n2, 6) * N ** 2

    def f(n):
        return per_n2 * n * n - (c2 * n * n + c1 * n + c0 + launch)

    return ClosedForm(config_name(config), time, dense, dense / time, valid_from, step,
                      _break_even(f, valid_from, step))


def _break_even(f, start: int, step: int) -> int | None:
    """Smallest N >= start, a multiple of step, with f(N) = dense - time >= 0 (one sign change)."""
    limit = 1 << 24
    if f(limit) < 0:
        return None
    if f(start) >= 0:
        return start
    lo, hi = start // step, limit // step
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if f(mid * step) >= 0:
            hi = mid
        else:
            lo = mid
    return hi * step
