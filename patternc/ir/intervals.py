"""The interval domain of `ir.expr`: every value an expression can take over a tile.

`Interval` (integers) and `Truth` (three-valued booleans) let a rule written once as plain
arithmetic classify a whole BLOCK_M x BLOCK_N tile as empty / partial / full.
"""
from __future__ import annotations

import operator

import numpy as np

class Interval:
    """Integer intervals [lo, hi] (numpy arrays, elementwise): every value an expression can take
    over a tile. `step`: every value is congruent to `lo` modulo it (1: no such knowledge; 0: a
    single value), so strided token sets (`c + r*i`) keep `d % r == 0` exact. `modulus`
    remembers `x % c` of a wide x so that `x % c == v` stays exact."""

    __slots__ = ("lo", "hi", "step", "modulus")

    def __init__(self, lo, hi=None, modulus=None, step=None):
        self.lo = np.asarray(lo, dtype=np.int64)
        self.hi = self.lo if hi is None else np.asarray(hi, dtype=np.int64)
        single = self.lo == self.hi
        self.step = np.where(single, 0, 1) if step is None else np.where(single, 0, np.asarray(step, dtype=np.int64))
        self.modulus = modulus  # (base Interval, c) or None

    @staticmethod
    def of(x) -> Interval:
        return x if isinstance(x, Interval) else Interval(x, x)

    def __add__(self, o):
        o = Interval.of(o)
        step = self.step if o.step.ndim == 0 and o.step == 0 else np.gcd(self.step, o.step)  # + a constant
        return Interval(self.lo + o.lo, self.hi + o.hi, step=step)

    __radd__ = __add__

    def __sub__(self, o):
        o = Interval.of(o)
        step = self.step if o.step.ndim == 0 and o.step == 0 else np.gcd(self.step, o.step)  # - a constant
        return Interval(self.lo - o.hi, self.hi - o.lo, step=step)

    def __rsub__(self, o):
        return Interval.of(o) - self

    def __neg__(self):
        return Interval(-self.hi, -self.lo, step=self.step)

    def __mul__(self, o):
        o = Interval.of(o)
        if o.lo.ndim == 0 and o.lo == o.hi:  # a constant factor (the common case): monotone
            c = o.lo
            lo, hi = (self.lo * c, self.hi * c) if c >= 0 else (self.hi * c, self.lo * c)
            return Interval(lo, hi, step=self.step * abs(c))
        p = [self.lo * o.lo, self.lo * o.hi, self.hi * o.lo, self.hi * o.hi]
        step = np.where(o.step == 0, self.step * np.abs(o.lo), np.where(self.step == 0, o.step * np.abs(self.lo), 1))
        return Interval(np.minimum.reduce(p), np.maximum.reduce(p), step=step)

    __rmul__ = __mul__

    def __floordiv__(self, o):
        o = Interval.of(o)
        if np.any(o.lo <= 0):
            raise ValueError("interval division by a non-positive divisor")
        if o.lo.ndim == 0 and o.lo == o.hi:  # a constant divisor (the common case): monotone
            c = o.lo
            return Interval(self.lo // c, self.hi // c, step=np.where(self.step % c == 0, self.step // c, 1))
        p = [self.lo // o.lo, self.lo // o.hi, self.hi // o.lo, self.hi // o.hi]
        exact = (o.step == 0) & (self.step % np.maximum(o.lo, 1) == 0)  # (lo + s*t) // c, c | s
        step = np.where(exact, self.step // np.maximum(o.lo, 1), 1)
        return Interval(np.minimum.reduce(p), np.maximum.reduce(p), step=step)

    def __rfloordiv__(self, o):
        return Interval.of(o) // self

    def __mod__(self, o):
        o = Interval.of(o)
        if np.any(o.lo != o.hi) or np.any(o.lo <= 0):
            hi = np.maximum(np.abs(o.lo), np.abs(o.hi)) - 1
            return Interval(np.zeros_like(hi), hi)
        c = o.lo
        fixed = self.step % c == 0  # every value has the same residue
        same = (self.lo // c) == (self.hi // c)  # no wrap: x % c is monotone here
        lo = np.where(fixed | same, self.lo % c, 0)
        hi = np.where(fixed, self.lo % c, np.where(same, self.hi % c, c - 1))
        return Interval(lo, hi, modulus=(self, c), step=np.where(fixed, 0, np.where(same, self.step, 1)))

    def __abs__(self):
        lo = np.where(self.lo >= 0, self.lo, np.where(self.hi <= 0, -self.hi, 0))
        return Interval(lo, np.maximum(np.abs(self.lo), np.abs(self.hi)))

    def _cmp(self, o, op):
        o = Interval.of(o)
        a, b = self, o
        if op == "<":
            return Truth(a.lo < b.hi, a.hi >= b.lo)
        if op == "<=":
            return Truth(a.lo <= b.hi, a.hi > b.lo)
        if op == ">":
            return o._cmp(self, "<")
        if op == ">=":
            return o._cmp(self, "<=")
        if op == "==":
            if self.modulus is not None and np.all(o.lo == o.hi):
                return self._mod_equals(o.lo)
            if o.modulus is not None and np.all(a.lo == a.hi):
                return o._mod_equals(a.lo)
            overlap = (a.lo <= b.hi) & (b.lo <= a.hi)
            if np.all(b.lo == b.hi):  # a value against a constant: respect a's step
                overlap &= (b.lo - a.lo) % np.maximum(a.step, 1) == 0
            single = (a.lo == a.hi) & (b.lo == b.hi) & (a.lo == b.lo)
            return Truth(overlap, ~single)
        return ~self._cmp(o, "==")

    def within(self, a, b) -> Truth:
        """Exactly: is some value (every value) of `lo, lo + step, ..., hi` in [a, b]?"""
        a, b = (Interval.of(x) for x in (a, b))
        step = np.maximum(self.step, 1)
        first = self.lo + np.maximum(0, -(-(a.hi - self.lo) // step)) * step  # first value >= a
        can_true = first <= np.minimum(self.hi, b.lo)
        can_false = (self.lo < a.hi) | (self.hi > b.lo)  # lo and hi are values themselves
        if np.any(a.lo != a.hi) or np.any(b.lo != b.hi):  # bounds that vary: over-approximate
            can_true = can_true | (self.hi >= a.lo) & (self.lo <= b.hi)
            can_false = can_false | (self.lo < a.hi) | (self.hi > b.lo)
        return Truth(can_true, can_false)

    def _mod_equals(self, v) -> Truth:
        """Exactly: is `base % c == v` possible / impossible over the base's values
        `lo, lo + step, ..., <= hi` (step 1: every integer in range)?"""
        base, c = self.modulus
        lo, hi = base.lo, base.hi
        in_range = (v >= 0) & (v < c)
        if np.all(base.step <= 1):  # every integer of [lo, hi] (token order): the first hit is lo + (v - lo) % c
            can_true = in_range & (lo + (v - lo) % c <= hi)
            return Truth(can_true, ~in_range | (hi > lo) & (c > 1) | (lo % c != v))
        step = np.where(base.step == 0, c, base.step)  # a single value: any step that stays put
        v, lo, hi, step, c = np.broadcast_arrays(np.asarray(v, np.int64), lo, hi, step, np.asarray(c, np.int64))
        # the smallest lattice value x = lo + step*t (t >= 0) with x % c == v: solve step*t = v - lo (mod c)
        g = np.gcd(step, c)
        solvable = (v - lo) % g == 0
        modulus = c // g
        s = step // g % modulus  # invertible modulo `modulus`
        inverse = np.ones_like(s)  # s == 1 (token order: step 1) is its own inverse
        other = (s != 1) & (modulus > 1)
        if other.any():  # a handful of distinct (s, modulus) pairs: one pow() each
            for s_, m_ in np.unique(np.stack([s[other], modulus[other]]), axis=1).T:
                inverse[other & (s == s_) & (modulus == m_)] = pow(int(s_), -1, int(m_))
        t = (v - lo) // g * inverse % modulus
        first = lo + step * t
        can_true = in_range & solvable & (first <= hi)
        # two lattice points differ mod c unless step is a multiple of c
        varies = (hi >= lo + step) & (step % c != 0)
        can_false = ~in_range | varies | (lo % c != v)
        return Truth(can_true, can_false)

    __lt__ = lambda s, o: s._cmp(o, "<")
    __le__ = lambda s, o: s._cmp(o, "<=")
    __gt__ = lambda s, o: s._cmp(o, ">")
    __ge__ = lambda s, o: s._cmp(o, ">=")
    __eq__ = lambda s, o: s._cmp(o, "==")
    __ne__ = lambda s, o: s._cmp(o, "!=")
    __hash__ = None

    def _bitwise(self, o, op):
        o = Interval.of(o)
        single = (self.lo == self.hi) & (o.lo == o.hi)
        exact = op(self.lo, o.lo)
        nonneg = (self.lo >= 0) & (o.lo >= 0)
        big = np.int64(1) << 62
        if op is operator.and_:
            hi = np.where(nonneg, np.minimum(self.hi, o.hi), big)
        else:  # | and ^ of non-negatives stay below the next power of two
            hi = np.where(nonneg, 2 * np.maximum(self.hi, o.hi) + 1, big)
        return Interval(np.where(single, exact, np.where(nonneg, 0, -big)), np.where(single, exact, hi))

    __and__ = lambda s, o: s._bitwise(o, operator.and_)
    __rand__ = __and__
    __or__ = lambda s, o: s._bitwise(o, operator.or_)
    __ror__ = __or__
    __xor__ = lambda s, o: s._bitwise(o, operator.xor)
    __rxor__ = __xor__

    def __repr__(self):
        return f"Interval({self.lo}, {self.hi})"


class Box(Interval):
    """Token sets that are boxes of a row-major grid (box order, `layout/box.py`): as an
    `Interval`, each set's bounding range [its first token, its last]; rules that don't read the
    grid see that superset, so their truth over-approximates. Where `exact`, the set is the box
    itself: per grid dimension, innermost first (as `neighborhood`'s digits), the coordinates
    `lo_digits[i], lo_digits[i] + steps[i], ..., hi_digits[i]`; elsewhere it is only known to lie
    in the range."""

    __slots__ = ("lo_digits", "hi_digits", "steps", "exact")

    def __init__(self, lo, hi, lo_digits, hi_digits, steps, exact):
        super().__init__(lo, hi)
        self.lo_digits, self.hi_digits, self.steps = lo_digits, hi_digits, steps
        self.exact = np.asarray(exact, bool)

    def __add__(self, o):
        if isinstance(o, (int, np.integer)) and o == 0:  # a self-attention position: the box itself
            return self
        return Interval.__add__(self, o)

    __radd__ = __add__


class Truth:
    """Tri-state booleans over a tile: `can_true` (some element is true), `can_false`."""

    __slots__ = ("can_true", "can_false")

    def __init__(self, can_true, can_false):
        self.can_true = np.asarray(can_true, dtype=bool)
        self.can_false = np.asarray(can_false, dtype=bool)

    @staticmethod
    def of(x) -> Truth:
        return x if isinstance(x, Truth) else Truth(bool(x), not bool(x))

    def __and__(self, o):
        o = Truth.of(o)
        return Truth(self.can_true & o.can_true, self.can_false | o.can_false)

    __rand__ = __and__

    def __or__(self, o):
        o = Truth.of(o)
        return Truth(self.can_true | o.can_true, self.can_false & o.can_false)

    __ror__ = __or__

    def __xor__(self, o):
        o = Truth.of(o)
        t = self.can_true & o.can_false | self.can_false & o.can_true
        f = self.can_true & o.can_true | self.can_false & o.can_false
        return Truth(t, f)

    __rxor__ = __xor__

    def __invert__(self):
        return Truth(self.can_false, self.can_true)

    def __bool__(self):
        raise TypeError("a tile's truth is three-valued; use can_true / can_false")

    def __repr__(self):
        return f"Truth(t={self.can_true}, f={self.can_false})"


def _interval_where(c, a, b):
    c = Truth.of(c)
    if isinstance(a, Truth) or isinstance(b, Truth) or isinstance(a, bool) or isinstance(b, bool):
        a, b = Truth.of(a), Truth.of(b)
        t = np.where(~c.can_false, a.can_true, np.where(~c.can_true, b.can_true, a.can_true | b.can_true))
        f = np.where(~c.can_false, a.can_false, np.where(~c.can_true, b.can_false, a.can_false | b.can_false))
        return Truth(t, f)
    a, b = Interval.of(a), Interval.of(b)
    lo = np.where(~c.can_false, a.lo, np.where(~c.can_true, b.lo, np.minimum(a.lo, b.lo)))
    hi = np.where(~c.can_false, a.hi, np.where(~c.can_true, b.hi, np.maximum(a.hi, b.hi)))
    return Interval(lo, hi)


def _interval_minmax(f):
    def go(a, b):
        a, b = Interval.of(a), Interval.of(b)
        return Interval(f(a.lo, b.lo), f(a.hi, b.hi))

    return go


INTERVAL_FUNCTIONS = {  # min, max, where, abs over intervals (see expr.FUNCTIONS)
    "min": _interval_minmax(np.minimum),
    "max": _interval_minmax(np.maximum),
    "where": _interval_where,
    "abs": abs,
}
