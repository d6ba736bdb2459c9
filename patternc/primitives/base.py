"""What every primitive is: a frozen IR node with typed parameters and one rule.

A primitive subclass declares its parameters as dataclass fields (each a `Term`, a tuple of
Terms, a float, or a bool/str), checks them in `check`, and states its meaning once in
`rule(p, ctx, q, k)`: plain Python arithmetic that `patternc.ir.expr` evaluates as a torch mask, as interval
arithmetic over tiles, or symbolically into the Triton predicate. `band` bounds the keys a
range of queries can see, so that layouts visit only candidate tiles.

Queries are the last M positions: `visible` hands `rule` the position `p = q + N - M` of query
row q (`Context.position`), so every rule is written on positions (`causal` is `k <= p`) and a
new primitive is aligned for free. `block=b` is generic: the rule is applied to the blocks of
positions `p // b`, `k // b` (the context's lengths become `ceil(M / b)`, `ceil(N / b)`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import ClassVar

import numpy as np

from ..errors import PatternError, Span, closest
from ..ir.context import Context
from ..ir.expr import Term, evaluate
from ..ir.nodes import MAX_INTERVALS, Node  # noqa: F401 - MAX_INTERVALS is shared with primitives

REGISTRY: dict[str, type[Primitive]] = {}

# parameter kinds: how a field is written and evaluated. FLOAT: a constant decimal (`0.9`) or
# integer, stored as a float; CHOICE: a bare name among `choices` (`shared=group`), stored as a str;
# BOOLS: `true`/`false` or a tuple of them (one per grid dimension), stored as a bool or a tuple
INT, INTS, BOOL, CHOICE, INDICES, FLOAT = "int", "ints", "bool", "choice", "indices", "float"
BOOLS = "bools"


def param(default=dataclasses.MISSING, kind=INT, doc="", choices=()):
    return field(default=default, metadata={"kind": kind, "doc": doc, "choices": choices})


@dataclass(frozen=True)
class Primitive(Node):
    """Base of all primitives; subclasses register under `name`."""

    name: ClassVar[str] = ""
    blockable: ClassVar[bool] = True
    per_head_tables: ClassVar[bool] = False  # rule reads a per-head table (random, topk)
    # one line per form, for hints: "window(w) | window(left, right, dilation=1, block=None)"
    signature: ClassVar[str] = ""
    textual: ClassVar[bool] = True  # has a pattern-text form that round-trips (not jit's predicate)
    needs_grid: ClassVar[bool] = False  # the rule reads ctx.grid; without grid(...) it is (N,)
    # resolved at run time from q and k (topk): kernels read a tile's choice, the runtime selects
    routed: ClassVar[bool] = False
    # pattern texts using this primitive, for the registry-wide contract tests (`strategy`)
    examples: ClassVar[tuple[str, ...]] = ()
    # parameters that must be equal on every head: they size block tables, tiles or the grid
    head_invariant: ClassVar[tuple[str, ...]] = ("block",)
    # optional parameters the signature writes positionally after the required ones
    # (`window(left, right)`); every other option is keyword-only
    positional_options: ClassVar[tuple[str, ...]] = ()
    block: Term | None = field(default=None, kw_only=True, metadata={"kind": INT, "doc": "apply to blocks of b tokens"})
    arg_spans: tuple = field(default=(), compare=False, repr=False, kw_only=True)

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if cls.name:
            REGISTRY[cls.name] = cls

    # ------------------------------------------------------------------ construction

    @classmethod
    def takes_name(cls, param_name: str) -> bool:
        """Is the parameter written as a bare name (a CHOICE such as `shared=group`)?"""
        return any(f.name == param_name and f.metadata.get("kind") == CHOICE for f in cls.params_spec())

    @classmethod
    def params_spec(cls):
        return [f for f in dataclasses.fields(cls) if f.name not in ("span", "arg_spans")
                and (cls.blockable or f.name != "block")]

    @classmethod
    def from_call(cls, args: list, kwargs: dict, span: Span | None = None) -> Primitive:
        """Bind call arguments `[(value, span)]`, `{name: (value, span)}` to fields, checking kinds."""
        spec = cls.params_spec()
        names = [f.name for f in spec]
        positional = [f.name for f in spec if f.default is dataclasses.MISSING or f.name in cls.positional_options]
        bound, spans = {}, {}
        if len(args) > len(positional):
            by_name = ", ".join(f"{n}=..." for n in names if n not in positional)
            raise PatternError(f"{cls.name}() takes at most {len(positional)} positional argument(s), got {len(args)}",
                               args[len(positional)][1] or span,
                               f"its options are written by name ({by_name}); usage: {cls.signature}")
        for name, (value, sp) in zip(positional, args):
            bound[name], spans[name] = value, sp
        for name, (value, sp) in kwargs.items():
            if name not in names:
                guess = closest(name, names)
                hint = f"did you mean '{guess}'? " if guess else ""
                raise PatternError(f"{cls.name}() has no parameter '{name}'", sp or span,
                                   f"{hint}usage: {cls.signature}")
            if name in bound:
                raise PatternError(f"{cls.name}() got parameter '{name}' twice", sp or span, f"usage: {cls.signature}")
            bound[name], spans[name] = value, sp
        for f in spec:
            if f.name in bound:
                bound[f.name] = _coerce(cls, f, bound[f.name], spans.get(f.name) or span)
            elif f.default is dataclasses.MISSING:
                raise PatternError(f"{cls.name}() needs its '{f.name}' argument", span, f"usage: {cls.signature}")
        for name in cls.head_invariant:
            if name in bound and "h" in _free_vars(bound[name]):
                raise PatternError(f"{cls.name}(): '{name}' can't depend on the head index h", spans.get(name) or span,
                                   f"{name} must be the same on every head; use per-head sections for different ones")
        node = cls.make(**bound, span=span, arg_spans=tuple(spans.items()))
        node.check(node.constant_params(), ctx=None)
        return node

    @classmethod
    def make(cls, span=None, arg_spans=(), **params) -> Primitive:
        """Normalise parameters into the canonical node (e.g. `window(w)` -> `window(w-1, w-1)`)."""
        return cls(**params, span=span, arg_spans=arg_spans)

    # ------------------------------------------------------------------ parameters

    def arg_span(self, name: str) -> Span | None:
        return dict(self.arg_spans).get(name) or self.span

    def fail(self, name: str | None, message: str, hint: str | None = None):
        raise PatternError(f"{self.name}: {message}", self.arg_span(name) if name else self.span, hint)

    def constant_params(self) -> SimpleNamespace:
        """Parameters that are constants as ints, the others None (for checks at parse time)."""

        def const(v):
            if isinstance(v, Term):
                return v.value if v.is_const else None
            if isinstance(v, tuple):
                return tuple(const(x) for x in v)
            return v

        return SimpleNamespace(**{f.name: const(getattr(self, f.name)) for f in self.params_spec()})

    def params(self, ctx: Context) -> SimpleNamespace:
        """Every parameter evaluated in `ctx`'s domain (and checked when the values are ints)."""
        env = ctx.env()

        def ev(v, name):
            if isinstance(v, Term):
                try:
                    return evaluate(v, env)
                except NameError as e:
                    self.fail(name, f"unknown name '{e.args[0]}' in parameter '{name}'",
                              "parameters may use N (keys), M (queries), h (head) and the pattern's parameters")
                except ZeroDivisionError:
                    self.fail(name, f"division by zero in parameter '{name}'")
                except RuntimeError as e:  # torch: integer division by zero on some head
                    if "ZeroDivision" not in str(e):
                        raise
                    self.fail(name, f"division by zero in parameter '{name}' (on some head)")
            if isinstance(v, tuple):
                return tuple(ev(x, name) for x in v)
            return v

        for name in self.head_invariant:  # a parameter default may have brought h in
            if "h" in _free_vars(getattr(self, name, None)):
                self.fail(name, f"'{name}' can't depend on the head index h",
                          f"{name} must be the same on every head; use per-head sections for different ones")
        p = SimpleNamespace(**{f.name: ev(getattr(self, f.name), f.name) for f in self.params_spec()})
        if all(isinstance(x, (int, np.integer)) for x in (ctx.M, ctx.N)):
            self.check(p, ctx)
        return p

    def check(self, p: SimpleNamespace, ctx: Context | None):
        """Raise PatternError for invalid values; entries of `p` may be None (unknown yet)."""
        if getattr(p, "block", None) is not None and isinstance(p.block, (int, np.integer)) and p.block < 1:
            self.fail("block", f"block must be >= 1, got {p.block}")

    def positive(self, p, *names, allow_zero=False):
        for n in names:
            v = getattr(p, n)
            for x in v if isinstance(v, tuple) else (v,):
                x = smallest(x)
                if x is not None and (x < 0 or x == 0 and not allow_zero):
                    need = ">= 0" if allow_zero else ">= 1"
                    self.fail(n, f"{n} must be {need}, got {x}")

    # ------------------------------------------------------------------ semantics

    def rule(self, p: SimpleNamespace, ctx: Context, q, k):
        """May the query at position q see key k? (q is a position, not a row: see `visible`.)"""
        raise NotImplementedError

    def rule_band(self, p: SimpleNamespace, ctx: Context, q0, q1):
        """Key intervals for query positions [q0, q1). Default: any key."""
        return [(np.zeros_like(q0), np.full_like(q0, ctx.N))]

    def exact_on_strided(self) -> bool:
        """Is the interval rule also tight on strided token sets (residue order)? Floor division
        forgets a stride, so rules that divide (block=, blocked, tables by block) are not."""
        return getattr(self, "block", None) is None and not self.per_head_tables

    def distance_only(self) -> bool:
        """Is the rule a function of `d = p - k` alone (the query's position minus the key)? A
        tile then shows it every d between its extremes, so compositions of such rules are
        classified exactly from a table over d (layout/build.py)."""
        return False

    def key_period(self, ctx: Context) -> int | None:
        """A period P such that the rule reads the key only through `k % P` and nothing of the
        query (`columns`): key tiles whose width P divides then all hold the same pattern, so a
        row of them classifies alike (layout/build.py). None: no such period."""
        return None

    def exact_tiles(self, ctx: Context, block_m: int, block_n: int) -> bool:
        """Is the interval rule tight on these tiles, so that a tile it calls partial really is?"""
        return True

    def visible(self, ctx: Context, q, k):
        """May query row q see key k? The rule reads the row's position `ctx.position(q)` (the
        last M positions: `q + N - M`), on blocks of positions with `block=b`."""
        p = self.params(ctx)
        b = getattr(p, "block", None)
        pos = ctx.position(q)
        if b is None or b == 1 and isinstance(b, int):
            return self.rule(p, ctx, pos, k)
        return self.rule(p, ctx.blocked(b), pos // b, k // b)

    def band(self, ctx: Context, q0, q1):
        """Key intervals [lo, hi) that query rows [q0, q1) may see (`rule_band` on positions)."""
        p = self.params(ctx)
        b = getattr(p, "block", None)
        p0, p1 = ctx.position(q0), ctx.position(q1)
        if b is None or b == 1:
            return self.rule_band(p, ctx, p0, p1)
        return [(lo * b, hi * b) for lo, hi in self.rule_band(p, ctx.blocked(b), p0 // b, (p1 - 1) // b + 1)]

    # ------------------------------------------------------------------ hooks the stages ask
    # Stages reach a primitive only through the registry and these hooks, never by its name.
    # The defaults describe a plain token rule; a primitive overrides what differs.

    def bounds_causally(self) -> bool:
        """Does `self & x` keep every query off future keys (routed blocks ahead are then never chosen)?"""
        return False

    def residue_modulus(self, grid) -> int:
        """An r > 1 such that `visible(q, k)` implies `q % r == k % r` (tokens can be laid out
        class by class, see layout/residue.py); 1 when there is none."""
        return 1

    def box_groups(self, grid) -> tuple[int, ...] | None:
        """Per dimension of a grid of 2 or more, the dilation r such that visible pairs share their
        coordinate modulo r (1: none), when the interval rule classifies boxes of the grid exactly
        (`ir.intervals.Box`, one dilation group per box): the pattern can then be laid out box by
        box (layout/box.py). None (the default): it can't."""
        return None

    def box_band(self, ctx: Context, lo: list, hi: list) -> list | None:
        """For box order: per grid dimension, outermost first, the key coordinates [lo, hi) that
        queries with coordinates lo[d]..hi[d] (arrays, one box each) may see; None: any key."""
        return None

    def standalone_error(self) -> str | None:
        """Why this primitive's kernel can't be written out as a standalone module (None: it can)."""
        return None

    def table(self, p, ctx: Context):
        """For a static rule that looks up a table (`per_head_tables`, `tables.lookup`): the function
        `head -> bool ndarray [rows, cols]` it looks up, at ctx's int lengths (in blocks under
        `block=`). Kernels receive it as a tensor argument (`tables.kernel_tables`)."""
        return None

    def routed_variants(self) -> tuple[Node, Node]:
        """A routed primitive's two static stand-ins: (every key: the block was chosen, no key)."""
        raise self.missing_hook("routed_variants", "the routed runtime")

    def select(self, q, k, causal: bool):
        """A routed primitive's choice from q [H, M, D] and k [Hkv, N, D] (the reference selection)."""
        raise self.missing_hook("select", "the routed runtime")

    @classmethod
    def strategy(cls, grid=None):
        """A hypothesis strategy of pattern texts using this primitive (for the contract tests).
        `grid`: the token grid (a tuple of lengths) the texts must be valid on; only primitives
        that `needs_grid` read it."""
        if not cls.examples:
            raise cls.missing_hook("examples", "the registry-wide contract tests")
        from hypothesis import strategies as st

        return st.sampled_from(cls.examples)

    def constant_step(self, name: str) -> int:
        """Parameter `name` when it is a constant above 1 on token indices (no `block=`), else 1:
        the residue modulus of rules that keep `d % step == 0`."""
        value = getattr(self, name)
        if getattr(self, "block", None) is not None or not (isinstance(value, Term) and value.is_const):
            return 1
        return max(int(value.value), 1)

    @classmethod
    def missing_hook(cls, hook: str, stage: str) -> PatternError:
        return PatternError(f"primitive '{cls.name}' ({cls.__module__}) has no '{hook}', which {stage} needs",
                            None, f"define {cls.__name__}.{hook} in its module (see Primitive's hooks)")

    # ------------------------------------------------------------------ analysis hooks
    # How patternc.analysis counts visible keys in closed form. `p`: the parameters as ints on one
    # head (M = N), `linear_params` possibly `g*N + c`; `atoms`: the vocabulary of
    # patternc/analysis/atoms.py, handed in because primitives sit below the analysis. None (the
    # defaults): no closed form, so the analysis measures the mask instead.

    # parameters that may grow linearly with N (`window(M - 1, 0)`), each with its least valid value
    linear_params: ClassVar[dict[str, int]] = {}

    def depends_on_head(self) -> bool:
        """Can the rule differ between heads (per-head tables, `h` in a parameter)?"""
        return self.per_head_tables or any("h" in _free_vars(getattr(self, f.name)) for f in self.params_spec())

    def min_length(self, p) -> int:
        """The least N at which the parameters `p` are valid (besides `linear_params`)."""
        return 1

    def count_atoms(self, p, b: int, atoms) -> dict | None:
        """The rule on blocks of `b` tokens as a signed sum of conjunctions of atoms
        (`{frozenset(atoms): coefficient}`), or raise `atoms.NoClosedForm` for unsupported `p`."""
        return None

    def count_alone(self, p, atoms):
        """Mean keys per query of this primitive alone, `atoms.closed(...)`, where only that has one."""
        return None

    def count_under_causal(self, p, atoms):
        """The same for `causal & self` (any primitive that `bounds_causally` in causal's place)."""
        return None

    # ------------------------------------------------------------------ printing

    def __str__(self):
        # required arguments positionally first (the order `from_call` binds them), then keywords
        spec = self.params_spec()
        parts = [format_value(getattr(self, f.name)) for f in spec if f.default is dataclasses.MISSING]
        parts += [f"{f.name}={format_value(getattr(self, f.name))}" for f in spec
                  if f.default is not dataclasses.MISSING and getattr(self, f.name) != f.default]
        return f"{self.name}({', '.join(parts)})" if parts else self.name


def smallest(x):
    """The least value of an int or of a per-head tensor/array (parameters using `h`); None if unknown."""
    if isinstance(x, (bool, np.bool_)):
        return None
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, np.ndarray) or type(x).__module__.startswith("torch"):
        size = x.numel() if hasattr(x, "numel") else x.size
        is_bool = str(x.dtype).endswith("bool")
        return int(x.min()) if size and not is_bool else None
    return None


def largest(x):
    """The greatest value of an int or of a per-head tensor/array; None if unknown."""
    s = smallest(x)
    return None if s is None else (int(x) if isinstance(x, (int, np.integer)) else int(x.max()))


def as_numpy(x) -> np.ndarray:
    """An int, array or torch tensor as a numpy array."""
    return x.detach().cpu().numpy() if type(x).__module__.startswith("torch") else np.asarray(x)


def format_value(v) -> str:
    if isinstance(v, Term):
        return str(v)
    if isinstance(v, tuple):
        if v and v[0] == "range":
            return f"{v[1]}..{v[2]}"
        inner = ", ".join(format_value(x) for x in v)
        return f"({inner},)" if len(v) == 1 else f"({inner})"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):  # positional, shortest round-tripping digits: 1e-05 would not parse
        return np.format_float_positional(v, trim="0")
    return str(v)


def _coerce(cls, f, value, span):
    """Check an argument's kind (int expression, tuple, boolean, name) and convert it."""
    kind = f.metadata.get("kind", INT)
    usage = f"usage: {cls.signature}"

    def is_int(v):
        return isinstance(v, Term) and not (v.is_const and isinstance(v.value, bool))

    if kind == INT:
        if not is_int(value):
            raise PatternError(f"{cls.name}(): '{f.name}' must be an integer, got {describe(value)}", span, usage)
        return value
    if kind == INTS:
        if is_int(value):
            return value
        if isinstance(value, tuple) and value and value[0] != "range" and all(is_int(x) for x in value):
            return value
        raise PatternError(f"{cls.name}(): '{f.name}' must be an integer or a tuple of integers, got {describe(value)}",
                           span, usage)
    if kind in (BOOL, BOOLS):
        def is_bool(v):
            return isinstance(v, Term) and v.is_const and isinstance(v.value, bool)

        if is_bool(value):
            return value.value
        tup = kind == BOOLS and isinstance(value, tuple) and value and value[0] != "range"
        if tup and all(is_bool(x) for x in value):
            return tuple(x.value for x in value)
        got = f"a tuple holding {describe(next(x for x in value if not is_bool(x)))}" if tup else describe(value)
        them = ", or a tuple of them" if kind == BOOLS else ""
        raise PatternError(f"{cls.name}(): '{f.name}' must be true or false{them}, got {got}", span, usage)
    if kind == FLOAT:
        if isinstance(value, float):
            return value
        if is_int(value) and value.is_const:
            return float(value.value)
        got = f"'{value}'" if is_int(value) else describe(value)
        raise PatternError(f"{cls.name}(): '{f.name}' must be a constant number such as 0.9, got {got}", span, usage)
    if kind == CHOICE:
        choices = f.metadata["choices"]
        name = value.args[0] if isinstance(value, Term) and value.op == "var" else None
        if name not in choices:
            guess = closest(name, choices) if name else None
            raise PatternError(f"{cls.name}(): '{f.name}' must be one of {', '.join(choices)}, got {describe(value)}",
                               span, f"did you mean '{guess}'?" if guess else usage)
        return name
    raise AssertionError(kind)


def _free_vars(value) -> set[str]:
    if isinstance(value, Term):
        return value.free_vars()
    if isinstance(value, tuple):
        return set().union(*(_free_vars(v) for v in value if isinstance(v, (Term, tuple))))
    return set()


def describe(value) -> str:
    if isinstance(value, float):
        return format_value(value)
    if isinstance(value, Term):
        if value.is_const and isinstance(value.value, bool):
            return "a boolean"
        if value.op == "var":
            return f"the name '{value.args[0]}'"
        return "an integer"
    if isinstance(value, tuple):
        return "a range" if value and value[0] == "range" else "a tuple"
    return type(value).__name__
