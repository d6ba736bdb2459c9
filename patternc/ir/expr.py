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

from .intervals import INTERVAL_FUNCTIONS, Interval, Truth  # noqa: F401 - Interval, Truth: this module's domains

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

    def free_vars(self) -> frozenset[str]:
        found = self.__dict__.get("_free_vars")  # cached: parameters are asked on every evaluation
        if found is None:
            if self.op == "var":
                found = frozenset(self.args)
            elif self.op == "const":
                found = frozenset()
            else:
                found = frozenset().union(*(a.free_vars() for a in self.args))
            self.__dict__["_free_vars"] = found
        return found

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


# --------------------------------------------------------------------------- functions over every domain


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def _dispatch(op, *xs):
    if any(isinstance(x, Sym) for x in xs):
        return Sym(_fold(op, tuple(_term(x) for x in xs)))
    if any(isinstance(x, (Interval, Truth)) for x in xs):
        return INTERVAL_FUNCTIONS[op](*xs)
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
