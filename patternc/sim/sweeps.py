"""Sweeps: predict a pattern over a range of one or more parameters and rank the results.

`parse_sweep("w=256..4096")` -> `("w", [256, 512, 1024, 2048, 4096])`: `a..b` doubles from a
up to b, `a..b:s` steps by s, `a,b,c` lists values. A name is one of the pattern's
parameters (`pattern swa(w = 1024): ...`) or `seq_len` (M = N). Every point predicts every
tile configuration; points are ranked by their fastest configuration's time, and flag the
configurations that are perfectly block-sparse (no partial tile: the predicate never runs)
and the points predicted slower than dense.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from ..errors import PatternError
from .predict import Prediction, as_pattern, simulate

LENGTH_NAMES = ("seq_len", "N", "n")
MAX_POINTS = 256


@dataclass(frozen=True)
class SweepPoint:
    values: dict  # parameter -> value at this point
    prediction: Prediction

    @property
    def ms(self) -> float:
        return self.prediction.ms

    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.values.items())

    def to_dict(self) -> dict:
        return {"values": dict(self.values), **self.prediction.to_dict()}


def parse_sweep(text: str) -> tuple[str, list[int]]:
    """`name=a..b` (doubling), `name=a..b:step` or `name=v1,v2,...` -> (name, values)."""
    hint = "write NAME=A..B (doubling), NAME=A..B:STEP or NAME=V1,V2,..., e.g. w=256..4096"
    m = re.fullmatch(r"\s*([A-Za-z_]\w*)\s*=\s*(.+?)\s*", text)
    if not m:
        raise PatternError(f"can't read the sweep {text!r}", None, hint)
    name, spec = m.groups()
    try:
        if ".." in spec:
            lo, rest = spec.split("..", 1)
            hi, _, step = rest.partition(":")
            lo, hi = int(lo), int(hi)
            step = int(step) if step else None
            if lo < 1 or hi < lo or (step is not None and step < 1):
                raise ValueError
            if step is None:
                values = []
                v = lo
                while v <= hi:
                    values.append(v)
                    v *= 2
            else:
                values = list(range(lo, hi + 1, step))
        else:
            values = [int(v) for v in spec.split(",") if v.strip()]
            if not values:
                raise ValueError
    except ValueError:
        raise PatternError(f"can't read the sweep {text!r}: expected positive integers with A <= B", None,
                           hint) from None
    if len(values) > MAX_POINTS:
        raise PatternError(f"the sweep {text!r} has {len(values)} points; at most {MAX_POINTS}", None,
                           "use a larger step")
    return name, values


def sweep(pattern, sweeps, M: int | None = None, N: int | None = None, heads: int | None = None,
          head_dim: int = 128, dtype="bfloat16", batch: int = 1, device="h100", config=None) -> list[SweepPoint]:
    """Predict `pattern` at every combination of `sweeps` (a list of `(name, values)` or sweep
    texts); returns the points ranked by predicted time, fastest first."""
    pattern = as_pattern(pattern)
    parsed = [parse_sweep(s) if isinstance(s, str) else (s[0], list(s[1])) for s in sweeps]
    if not parsed:
        raise PatternError("nothing to sweep", None, "give one or more NAME=A..B")
    names = [n for n, _ in parsed]
    if len(set(names)) != len(names):
        raise PatternError(f"a parameter is swept twice: {', '.join(names)}")
    params = {n for n, _ in pattern.params}
    for n in names:
        if n not in params and n not in LENGTH_NAMES:
            from ..errors import closest

            guess = closest(n, list(params) + ["seq_len"])
            raise PatternError(f"can't sweep '{n}': it is not a parameter of the pattern", None,
                               f"did you mean '{guess}'?" if guess else
                               f"its parameters: {', '.join(sorted(params)) or 'none'}; or sweep seq_len")
    if M is None and not any(n in LENGTH_NAMES for n in names):
        raise PatternError("a sweep needs a sequence length", None, "pass --seq-len N (or sweep seq_len)")
    total = 1
    for _, values in parsed:
        total *= len(values)
    if total > MAX_POINTS:
        raise PatternError(f"the sweep has {total} points; at most {MAX_POINTS}", None, "sweep fewer values")
    points = []
    for combo in itertools.product(*(values for _, values in parsed)):
        values = dict(zip(names, combo))
        bound = {k: v for k, v in values.items() if k not in LENGTH_NAMES}
        length = next((v for k, v in values.items() if k in LENGTH_NAMES), None)
        m = length if length is not None else M
        n = length if length is not None else N
        p = pattern.bind(**bound) if bound else pattern
        points.append(SweepPoint(values, simulate(p, m, n, heads=heads, head_dim=head_dim, dtype=dtype,
                                                  batch=batch, device=device, config=config)))
    return sorted(points, key=lambda pt: pt.ms)
