"""Integer/boolean expressions over token indices: one language, four interpretations.

A primitive's rule ("may query q see key k?") and every parameter are written once as
ordinary Python arithmetic (`+ - * // % < <= == & | ~`, `where`, `minimum`, `maximum`,
`abs`) and evaluated over whatever values it is handed:

- `torch` tensors: the reference token mask (`Pattern.mask`);
- `Interval` / `Truth`: interval arithmetic over tile ranges, which classifies a whole
  BLOCK_M x BLOCK_N tile as empty / partial / full without looking at its elements;
- `Sym`: a symbolic trace, giving a `Term` tree that prints as pattern text or as Triton code
  (the predicate inlined in partial tiles) and that `@patternc.jit` builds from user code;
- plain ints.

`Term` is the immutable, hashable tree stored in the IR; `Sym` wraps a Term with Python's
operators, so tracing a function yields Terms.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np

# --------------------------------------------------------------------------- terms


@dataclass(frozen=True)
class Term:
    """An immutable expression node: `op` with `args` (Terms, or the value/name of a leaf)."""

    op: str
    args: tuple

    @staticmethod
    def const(value) -> Term:
        return Term("const", (bool(value) if isinstance(value, (bool, np.bool_)) else int(value),))

    @staticmethod
    def var(name: str) -> Term:
        return Term("var", (name,))

    @property
    def is_const(self) -> bool:
        return self.op == "const"

    @property
    def value(self):
        assert self.op == "const"
        return self.args[0]

    def free_vars(self) -> set[str]:
        if self.op == "var":
            return {self.args[0]}
        if self.op == "const":
            return set()
        return set().union(*(a.free_vars() for a in self.args))

    def subs(self, mapping: dict[str, Term]) -> Term:
        """Replace variables by terms (folding constants)."""
        if self.op == "var":
            return mapping.get(self.args[0], self)
        if self.op == "const" or not (self.free_vars() & mapping.keys()):
            return self
        return evaluate(self, {n: Sym(mapping.get(n, Term.var(n))) for n in self.free_vars()}).term

    def __str__(self) -> str:
        return to_text(self)


BINARY = {
    "+": operator.add, "-": operator.sub, "*": operator.mul, "//": operator.floordiv,
    "%": operator.mod, "<": operator.lt, "<=": operator.le, "==": operator.eq,
    "!=": operator.ne, ">": operator.gt, ">=": operator.ge, "&": operator.and_,
    "|": operator.or_, "^": operator.xor,
}
COMPARISONS = {"<", "<=", "==", "!=", ">", ">="}


def evaluate(term: Term, env: dict):
    """Evaluate `term` with variables bound by `env` to values of any supported domain."""
    op, args = term.op, term.args
    if op == "const":
        return args[0]
    if op == "var":
        try:
            return env[args[0]]
        except KeyError:
            raise NameError(args[0]) from None
    vals = [evaluate(a, env) for a in args]
    if op in BINARY:
        return BINARY[op](*vals)
    if op == "neg":
        return -vals[0]
    if op == "~":
        return invert(vals[0])
    return FUNCTIONS[op](*vals)


# --------------------------------------------------------------------------- the Sym domain


def _term(x) -> Term:
    if isinstance(x, Sym):
        return x.term
    if isinstance(x, Term):
        return x
    if isinstance(x, (bool, int, np.integer, np.bool_)):
        return Term.const(x)
    raise TypeError(f"can't use {type(x).__name__} {x!r} in a pattern expression (integers and booleans only)")


class TraceError(TypeError):
    """Raised when traced code asks a symbolic value for a concrete answer."""


def _fold(op: str, args: tuple[Term, ...]) -> Term:
    if all(a.is_const for a in args):
        vals = [a.value for a in args]
        if op in ("//", "%") and vals[1] == 0:
            raise ZeroDivisionError("division by zero in a pattern expression")
        if op in BINARY:
            return Term.const(BINARY[op](*vals))
        if op == "neg":
            return Term.const(-vals[0])
        if op == "~":
            return Term.const(not vals[0] if isinstance(vals[0], bool) else ~vals[0])
        return Term.const(FUNCTIONS[op](*vals))
    a = args[0]
    b = args[1] if len(args) > 1 else None
    # (x ± c1) ± c2 -> x ± c: `window(w)` stores w - 1 and prints (w - 1) + 1, which must read back as w
    if op in ("+", "-") and b.is_const and not isinstance(b.value, bool) and a.op in ("+", "-") \
            and a.args[1].is_const and not isinstance(a.args[1].value, bool):
        inner = a.args[1].value if a.op == "+" else -a.args[1].value
        total = inner + (b.value if op == "+" else -b.value)
        x = a.args[0]
        return x if total == 0 else Term("+", (x, Term.const(total))) if total > 0 else Term("-", (x, Term.const(-total)))
    # identities that keep traced and generated code small
    if op == "+" and b.is_const and b.value == 0 or op == "-" and b.is_const and b.value == 0:
        return a
    if op == "+" and a.is_const and a.value == 0:
        return b
    if op in ("*", "//") and b.is_const and b.value == 1:
        return a
    if op == "*" and a.is_const and a.value == 1:
        return b
    if op == "&" and b.is_const and b.value is True or op == "|" and b.is_const and b.value is False:
        return a
    if op == "&" and a.is_const and a.value is True or op == "|" and a.is_const and a.value is False:
        return b
    if op == "&" and (a.is_const and a.value is False or b.is_const and b.value is False):
        return Term.const(False)
    if op == "|" and (a.is_const and a.value is True or b.is_const and b.value is True):
        return Term.const(True)
    if op == "where" and a.is_const:
        return args[1] if a.value else args[2]
    return Term(op, args)


class Sym:
    """A symbolic value: Python operators on it build a `Term`."""

    __slots__ = ("term",)

    def __init__(self, term: Term | str):
        self.term = Term.var(term) if isinstance(term, str) else term

    def _op(self, op, *others):
        return Sym(_fold(op, (self.term, *map(_term, others))))

    def _rop(self, op, other):
        return Sym(_fold(op, (_term(other), self.term)))

    __add__ = lambda s, o: s._op("+", o)
    __radd__ = lambda s, o: s._rop("+", o)
    __sub__ = lambda s, o: s._op("-", o)
    __rsub__ = lambda s, o: s._rop("-", o)
    __mul__ = lambda s, o: s._op("*", o)
    __rmul__ = lambda s, o: s._rop("*", o)
    __floordiv__ = lambda s, o: s._op("//", o)
    __rfloordiv__ = lambda s, o: s._rop("//", o)
    __mod__ = lambda s, o: s._op("%", o)
    __rmod__ = lambda s, o: s._rop("%", o)
    __lt__ = lambda s, o: s._op("<", o)
    __le__ = lambda s, o: s._op("<=", o)
    __eq__ = lambda s, o: s._op("==", o)
    __ne__ = lambda s, o: s._op("!=", o)
    __gt__ = lambda s, o: s._op(">", o)
    __ge__ = lambda s, o: s._op(">=", o)
    __and__ = lambda s, o: s._op("&", o)
    __rand__ = lambda s, o: s._rop("&", o)
    __or__ = lambda s, o: s._op("|", o)
    __ror__ = lambda s, o: s._rop("|", o)
    __xor__ = lambda s, o: s._op("^", o)
    __rxor__ = lambda s, o: s._rop("^", o)
    __neg__ = lambda s: Sym(_fold("neg", (s.term,)))
    __invert__ = lambda s: Sym(_fold("~", (s.term,)))
    __abs__ = lambda s: Sym(_fold("abs", (s.term,)))
    __hash__ = None

    def __bool__(self):
        raise TraceError(
            "a pattern expression has no truth value while it is traced "
            "(Python `if`, `and`, `or`, `not` or a chained comparison `a < b < c`)"
        )

    __index__ = __int__ = __bool__

    def __repr__(self):
        return f"Sym({to_text(self.term)})"


# --------------------------------------------------------------------------- the interval domain


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
        return Interval(self.lo + o.lo, self.hi + o.hi, step=np.gcd(self.step, o.step))

    __radd__ = __add__

    def __sub__(self, o):
        o = Interval.of(o)
        return Interval(self.lo - o.hi, self.hi - o.lo, step=np.gcd(self.step, o.step))

    def __rsub__(self, o):
        return Interval.of(o) - self

    def __neg__(self):
        return Interval(-self.hi, -self.lo, step=self.step)

    def __mul__(self, o):
        o = Interval.of(o)
        p = [self.lo * o.lo, self.lo * o.hi, self.hi * o.lo, self.hi * o.hi]
        step = np.where(o.step == 0, self.step * np.abs(o.lo), np.where(self.step == 0, o.step * np.abs(self.lo), 1))
        return Interval(np.minimum.reduce(p), np.maximum.reduce(p), step=step)

    __rmul__ = __mul__

    def __floordiv__(self, o):
        o = Interval.of(o)
        if np.any(o.lo <= 0):
            raise ValueError("interval division by a non-positive divisor")
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
        step = np.where(base.step == 0, c, base.step)  # a single value: any step that stays put
        v, lo, hi, step, c = np.broadcast_arrays(np.asarray(v, np.int64), lo, hi, step, np.asarray(c, np.int64))
        # the smallest lattice value x = lo + step*t (t >= 0) with x % c == v: solve step*t = v - lo (mod c)
        g = np.gcd(step, c)
        solvable = (v - lo) % g == 0
        modulus = c // g
        t = np.zeros_like(lo)
        for s_, m_ in {(int(a), int(b)) for a, b in zip((step // g).ravel(), modulus.ravel())}:
            inverse = pow(s_ % m_, -1, m_) if m_ > 1 else 0
            sel = (step // g == s_) & (modulus == m_)
            t = np.where(sel, ((v - lo) // np.maximum(g, 1)) * inverse % m_, t)
        first = lo + step * t
        in_range = (v >= 0) & (v < c)
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


# --------------------------------------------------------------------------- functions over every domain


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def _dispatch(op, *xs):
    if any(isinstance(x, Sym) for x in xs):
        return Sym(_fold(op, tuple(_term(x) for x in xs)))
    if any(isinstance(x, (Interval, Truth)) for x in xs):
        return _INTERVAL[op](*xs)
    if any(_is_torch(x) for x in xs):
        import torch

        return _TORCH[op](torch, *xs)
    return _PLAIN[op](*xs)


def minimum(a, b):
    """Elementwise minimum in any domain."""
    return _dispatch("min", a, b)


def maximum(a, b):
    """Elementwise maximum in any domain."""
    return _dispatch("max", a, b)


def where(cond, a, b):
    """`a` where `cond` holds, else `b`, in any domain (like `torch.where`)."""
    return _dispatch("where", cond, a, b)


def in_range(x, lo, hi):
    """`lo <= x <= hi` in any domain; exact on strided intervals (a single check, where the two
    comparisons joined by & would be judged one bound at a time)."""
    if isinstance(x, Interval):
        return x.within(lo, hi)
    return (x >= lo) & (x <= hi)


def clamp(x, lo, hi):
    return minimum(maximum(x, lo), hi)


def invert(x):
    """Logical/bitwise not: `~x` that also works on Python bools."""
    if isinstance(x, (bool, np.bool_)):
        return not x
    return ~x


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


_INTERVAL = {
    "min": _interval_minmax(np.minimum),
    "max": _interval_minmax(np.maximum),
    "where": _interval_where,
    "abs": abs,
}
_TORCH = {
    "min": lambda t, a, b: t.minimum(*_as_tensors(t, a, b)),
    "max": lambda t, a, b: t.maximum(*_as_tensors(t, a, b)),
    "where": lambda t, c, a, b: t.where(c, a, b),
    "abs": lambda t, a: t.abs(a),
}
_PLAIN = {
    "min": lambda a, b: np.minimum(a, b) if isinstance(a, np.ndarray) or isinstance(b, np.ndarray) else min(a, b),
    "max": lambda a, b: np.maximum(a, b) if isinstance(a, np.ndarray) or isinstance(b, np.ndarray) else max(a, b),
    "where": lambda c, a, b: np.where(c, a, b) if isinstance(c, np.ndarray) else (a if c else b),
    "abs": abs,
}
FUNCTIONS = {"min": minimum, "max": maximum, "where": where, "abs": abs}


def _as_tensors(torch, a, b):
    ref = a if _is_torch(a) else b
    return (torch.as_tensor(a, device=ref.device), torch.as_tensor(b, device=ref.device))


# --------------------------------------------------------------------------- printing

# precedence for pattern text / Python; higher binds tighter. Python's: comparisons bind looser
# than | ^ &, so `(q - k <= 4) & (k >= 0)` keeps its parentheses.
_PREC = {"<": 0, "<=": 0, "==": 0, "!=": 0, ">": 0, ">=": 0, "|": 1, "^": 2, "&": 3,
         "+": 6, "-": 6, "*": 7, "//": 7, "%": 7, "neg": 8, "~": 8}


def to_text(term: Term, names: dict[str, str] | None = None, functions: dict[str, str] | None = None,
            bool_words: tuple[str, str] = ("true", "false")) -> str:
    """Print `term` with the fewest parentheses that keep its tree; `names` renames variables,
    `functions` renames min/max/where/abs (Triton: `tl.minimum`...)."""
    names = names or {}
    functions = functions or {"min": "min", "max": "max", "where": "where", "abs": "abs"}

    def go(t: Term) -> tuple[int, str]:
        if t.op == "const":
            v = t.value
            if isinstance(v, bool):
                return 10, bool_words[0] if v else bool_words[1]
            return (10, str(v)) if v >= 0 else (8, str(v))
        if t.op == "var":
            return 10, names.get(t.args[0], t.args[0])
        if t.op in ("neg", "~"):
            p, s = go(t.args[0])
            return 8, ("-" if t.op == "neg" else "~") + (s if p >= 8 else f"({s})")
        if t.op in _PREC:
            prec = _PREC[t.op]
            (pa, sa), (pb, sb) = go(t.args[0]), go(t.args[1])
            # comparisons never chain; left-associative otherwise
            left = sa if pa > prec or (pa == prec and prec != 0) else f"({sa})"
            right = sb if pb > prec else f"({sb})"
            return prec, f"{left} {t.op} {right}"
        return 10, f"{functions[t.op]}({', '.join(go(a)[1] for a in t.args)})"

    return go(term)[1]
