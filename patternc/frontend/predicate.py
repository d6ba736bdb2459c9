"""`predicate`: a rule traced from a Python function by `@patternc.jit`, kept as a `Term` over
`q`, `k`, `h`, `M`, `N` (and the function's extra parameters, substituted like any pattern
parameter). `q` is the raw query row `0..M-1` (FlexAttention's `mask_mod` convention), not the
position `q + N - M` that primitives read. It is what the front end emits for the parts of a
predicate it can't prove equal to a primitive family; the mask, the interval tile
classification and the Triton predicate all come from evaluating the term in their domain.

It has no pattern-text syntax: `str()` prints it as a Python lambda, and writing `predicate`
in a `.pat` file is an error.

    predicate(lambda q, k, h: (q >= k) & (k % 3 != 1))
    #.....
    ##....
    ##.#..
    ##.##.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import ClassVar

from ..errors import PatternError
from ..ir.expr import Term, evaluate, to_text
from ..primitives.base import Primitive, param

VARIABLES = ("q", "k", "h", "M", "N")


@dataclass(frozen=True)
class Predicate(Primitive):
    name = "predicate"
    blockable = False
    textual: ClassVar[bool] = False  # no pattern-text form: printing doesn't round-trip
    signature = "predicate: made by @patternc.jit from a Python function, not written in pattern text"
    term: Term = param(doc="the rule, a boolean term over q, k, h, M, N")

    @classmethod
    def from_call(cls, args, kwargs, span=None):
        raise PatternError("'predicate' can't be written in pattern text", span,
                           "predicates come from @patternc.jit functions; in text, combine primitives with | & -")

    def constant_params(self) -> SimpleNamespace:
        return SimpleNamespace(term=None)

    def params(self, ctx) -> SimpleNamespace:
        # the term is the rule itself, evaluated per (q, k) in rule(); nothing to evaluate up front
        return SimpleNamespace(term=self.term)

    def visible(self, ctx, q, k):
        return self.rule(self.params(ctx), ctx, ctx.row(q), k)  # raw rows, not positions

    def rule(self, p, ctx, q, k):
        try:
            return evaluate(self.term, {"q": q, "k": k, "h": ctx.h, "M": ctx.M, "N": ctx.N})
        except NameError as e:
            self.fail(None, f"unbound name '{e.args[0]}' in the traced predicate",
                      f"give the parameter a value: pattern.bind({e.args[0]}=...)")
        except ZeroDivisionError:
            self.fail(None, "division by zero in the traced predicate")
        except RuntimeError as e:  # torch: integer division by zero
            if "ZeroDivision" not in str(e):
                raise
            self.fail(None, "division by zero in the traced predicate")

    def __str__(self):
        return f"predicate(lambda q, k, h: {python_text(self.term)})"


def python_text(term: Term) -> str:
    """`term` as a Python expression (what the user wrote, up to parentheses and folding)."""
    return to_text(term, bool_words=("True", "False"))
