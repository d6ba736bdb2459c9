"""`Pattern`: a named pattern expression with default parameters, an optional token grid and
optional per-head sections, and its reference semantics `mask()`."""
from __future__ import annotations

import dataclasses
import math
import weakref
from dataclasses import dataclass, field
from typing import Callable

from ..errors import PatternError, Source, Span, closest
from .context import Context
from .expr import Sym, Term, evaluate
from .nodes import Difference, Intersect, Node, Union

MAX_MASK_ELEMENTS = 2**31  # Pattern.mask's limit (2 GiB of bools, and more while computing it)

# What `Pattern.layout`, `Pattern.mask_mod` and calling a `@jit` predicate delegate to: the
# stages that define them register them here when imported (`import patternc` imports them
# all), so that the IR and the front ends import no stage above them.
DELEGATES: dict[str, Callable] = {}


@dataclass(frozen=True)
class Section:
    """`heads lo..hi: expr` (both ends included)."""

    lo: int
    hi: int
    expr: Node
    span: Span | None = field(default=None, compare=False, repr=False)

    def __str__(self):
        heads = str(self.lo) if self.lo == self.hi else f"{self.lo}..{self.hi}"
        return f"heads {heads}: {self.expr}"


def substitute(node: Node, mapping: dict[str, Term]) -> Node:
    """`node` with the variables of every parameter replaced (constants folded)."""
    if not mapping:
        return node

    def sub(v):
        if isinstance(v, Term):
            return v.subs(mapping)
        if isinstance(v, tuple):
            return tuple(sub(x) for x in v)
        if isinstance(v, Node):
            return substitute(v, mapping)
        return v

    changes = {f.name: sub(getattr(node, f.name)) for f in dataclasses.fields(node)
               if f.name not in ("span", "arg_spans")}
    return dataclasses.replace(node, **changes)


def under_causal(node: Node) -> bool:
    """Is the expression `causal & ...` (so routed blocks must not look ahead)?"""
    if isinstance(node, Intersect):
        return under_causal(node.a) or under_causal(node.b)
    return not node.children() and node.bounds_causally()


_LIVE: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # canonical text -> a Pattern with it
_AMBIGUOUS: set[str] = set()  # texts that unequal live patterns share


@dataclass(frozen=True)
class Pattern:
    """Which keys each query may see, for any lengths and heads.

    Build one with `patternc.compile(text)`, `patternc.load(path)` or `@patternc.jit`.
    `str(pattern)` is canonical pattern text; `patternc.compile(str(p)) == p`.
    """

    body: Node | tuple[Section, ...]
    name: str | None = None
    params: tuple[tuple[str, Term | None], ...] = ()
    grid: tuple[Term, ...] | None = None
    source: Source | None = field(default=None, compare=False, repr=False)
    span: Span | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        # `text`, the canonical text, kept as a plain attribute: torch.compile reads it as a
        # constant where it can't take the Pattern itself (runtime/autograd.py), and `with_text`
        # finds a live pattern by it (predicates of @patternc.jit have no text that parses)
        text = str(self)
        object.__setattr__(self, "text", text)
        if _LIVE.setdefault(text, self) != self:
            _AMBIGUOUS.add(text)

    @staticmethod
    def with_text(text: str) -> Pattern | None:
        """The live pattern whose canonical text is `text`, if there is one; an error where two
        unequal patterns print the same (the text can't stand for either)."""
        if text in _AMBIGUOUS:
            raise PatternError(f"two different patterns print as {text!r}, so torch.compile can't tell them apart",
                               None, "give one of them a name (`pattern name: ...`) or call patternc.attention "
                               "outside torch.compile")
        return _LIVE.get(text)

    # ------------------------------------------------------------------ parameters

    def bind(self, **values) -> Pattern:
        """This pattern with parameter defaults replaced: `p.bind(w=2048)`."""
        names = [n for n, _ in self.params]
        for key in values:
            if key not in names:
                guess = closest(key, names)
                raise PatternError(
                    f"pattern {self.name or ''} has no parameter '{key}'".replace("  ", " "), self.span,
                    f"did you mean '{guess}'?" if guess else
                    f"its parameters: {', '.join(names)}" if names else "it takes no parameters")
        params = tuple((n, _to_term(values[n], n) if n in values else d) for n, d in self.params)
        return dataclasses.replace(self, params=params)

    def _mapping(self) -> dict[str, Term]:
        missing = [n for n, d in self.params if d is None]
        if missing:
            raise PatternError(f"pattern {self.name} needs a value for parameter '{missing[0]}'", self.span,
                               f"pass it: compile(text, {missing[0]}=...) or pattern.bind({missing[0]}=...)")
        return {n: d for n, d in self.params}

    @property
    def expr(self) -> Node:
        """The expression with parameters substituted (one-section patterns only)."""
        if isinstance(self.body, tuple):
            raise PatternError(f"pattern {self.name} has per-head sections; use sections()", self.span)
        return substitute(self.body, self._mapping())

    def sections(self, heads: int | None = None) -> list[Section]:
        """The per-head sections with parameters substituted; one section over all heads
        for a plain expression."""
        mapping = self._mapping()
        if isinstance(self.body, tuple):
            covered = self.body[-1].hi + 1
            if heads is not None and heads != covered:
                raise PatternError(f"pattern {self.name} defines heads 0..{covered - 1} but {heads} heads were asked for",
                                   self.span, f"use heads={covered}")
            return [dataclasses.replace(s, expr=substitute(s.expr, mapping)) for s in self.body]
        heads = heads if heads is not None else self.default_heads
        if not isinstance(heads, int) or isinstance(heads, bool) or heads < 1:
            raise PatternError(f"the number of heads must be a positive integer, got {heads!r}", self.span)
        return [Section(0, heads - 1, substitute(self.body, mapping))]

    @property
    def default_heads(self) -> int:
        if isinstance(self.body, tuple):
            return self.body[-1].hi + 1
        value = dict(self.params).get("heads")
        if value is not None and not value.is_const:
            raise PatternError(f"pattern {self.name}: the 'heads' parameter must be a constant, got '{value}'",
                               self.span)
        return int(value.value) if value is not None else 1

    def grid_shape(self, M: int, N: int) -> tuple[int, ...] | None:
        if self.grid is None:
            return None
        mapping = self._mapping()
        out = []
        for t in self.grid:
            v = evaluate(t.subs(mapping), {"M": M, "N": N, "h": 0})
            if not isinstance(v, int) or v < 1:
                raise PatternError(f"grid dimensions must be integers >= 1, got {v}", self.span)
            out.append(v)
        return tuple(out)

    def check(self, M: int, N: int | None = None, heads: int | None = None) -> None:
        """Evaluate every parameter at lengths M, N on every head, raising the located
        `PatternError` that `mask` or `layout` would (a window larger than its grid, a phase out
        of range on some head, ...) without computing either."""
        import numpy as np

        N = M if N is None else N
        _check_lengths(M, N, self.span)
        for s in self.sections(heads):
            ctx = self.context(s, M, N, np.arange(s.lo, s.hi + 1))
            for leaf in s.expr.walk():
                if not leaf.children():
                    leaf.params(ctx)

    @property
    def fixed_length(self) -> int | None:
        """The token count of a grid that names no length (`grid(16, 48, 48)`), else None."""
        if self.grid is None or any(t.subs(dict(self._mapping())).free_vars() for t in self.grid):
            return None
        return math.prod(self.grid_shape(1, 1))

    def rule_grid(self, M: int, N: int) -> tuple[int, ...] | None:
        """The grid rules read: `grid_shape`, or `(N,)` when a primitive needs one and the
        pattern declares none (kernels and traced predicates need it spelled out)."""
        grid = self.grid_shape(M, N)
        if grid is None and any(p.needs_grid for p in self.primitives()):
            grid = (N,)
        return grid

    def context(self, section: Section, M, N, h, data=None, lengths=None) -> Context:
        """Where `section`'s rule is evaluated: lengths `M`, `N` and heads `h` in any domain of
        `ir.expr`, run-time `data` (q, k and the caches of routed primitives), whether the section
        is `causal & ...`, and the declared grid; symbolic lengths (a traced rule) pass the int
        `lengths` the grid is for, and get `rule_grid`'s, spelled out."""
        grid = self.grid_shape(M, N) if lengths is None else self.rule_grid(*lengths)
        return Context(M, N, h, grid, dict(data or {}, causal=under_causal(section.expr)))

    def primitives(self):
        """Every primitive (leaf of the expression) in the pattern (all sections)."""
        bodies = [s.expr for s in self.body] if isinstance(self.body, tuple) else [self.body]
        return [n for b in bodies for n in b.walk() if not n.children()]

    @property
    def is_routed(self) -> bool:
        return any(p.routed for p in self.primitives())

    # ------------------------------------------------------------------ semantics

    def mask(self, M: int, N: int | None = None, heads: int | None = None, q=None, k=None, device="cpu",
             documents=None):
        """The reference semantics: `torch.bool [heads, M, N]`, True where query i may see key j.

        Brute force over every (query, key) pair; for tests and small lengths. Routed patterns
        (`topk`) need `q` `[heads, M, D]` and `k` `[kv_heads, N, D]` (a leading batch of 1 is
        accepted). `documents`: cumulative boundaries of packed documents (`patternc.ir.documents`):
        the pattern inside each, with positions from the document's first token (M == N); a
        routed pattern chooses its blocks inside each document, from its own tokens of q and k.
        """
        import torch

        N = M if N is None else N
        _check_lengths(M, N, self.span)
        data = {}
        if q is not None or k is not None:
            if q is None or k is None:
                raise PatternError("pass both q= and k= (or neither)", self.span)
            data.update(q=_heads_first(q, "q"), k=_heads_first(k, "k"))
            _check_qk(data["q"], data["k"], M, N, self.span)
            if heads is None and not isinstance(self.body, tuple):
                heads = data["q"].shape[0]  # routed masks: one per query head
        if documents is not None:
            from .documents import document_mask

            if M != N:
                raise PatternError(f"documents= masks self-attention (M == N), got M = {M}, N = {N}", self.span)
            return document_mask(self, N, heads, documents, device, **data)
        sections = self.sections(heads)
        H = sections[-1].hi + 1
        if data and data["q"].shape[0] != H:
            raise PatternError(f"q has {data['q'].shape[0]} heads but the mask has {H}", self.span,
                               f"pass q with {H} heads, or heads={data['q'].shape[0]}")
        if H * M * N > MAX_MASK_ELEMENTS:
            raise PatternError(f"the brute-force mask would be {H} x {M} x {N} = {H * M * N:,} booleans "
                               f"({H * M * N / 2**30:.1f} GiB), more than the {MAX_MASK_ELEMENTS:,} it builds",
                               self.span, "Pattern.layout(...) describes long sequences analytically, in tiles")
        qi = torch.arange(M, device=device).view(1, M, 1)
        ki = torch.arange(N, device=device).view(1, 1, N)
        out = torch.empty(H, M, N, dtype=torch.bool, device=device)
        for s in sections:
            h = torch.arange(s.lo, s.hi + 1, device=device).view(-1, 1, 1)
            out[s.lo: s.hi + 1] = torch.as_tensor(s.expr.visible(self.context(s, M, N, h, data), qi, ki),
                                                  device=device)
        return out

    def layout(self, M: int, N: int | None = None, heads: int | None = None, block_m: int = 128,
               block_n: int = 128, q=None, k=None, device="cpu", order: str = "auto", documents=None):
        """The block-sparse `Layout` of this pattern for the given lengths and tile shape.

        `order="auto"` lays residue-closed patterns (dilated windows, strided) out class by
        class, and neighborhoods on a 2-D/3-D grid box by box (`Layout.permutation`), so tiles
        hold only tokens that can see each other, or boxes of the grid (where that visits fewer
        tiles; `order="box"`: box order wherever it applies, an error elsewhere);
        `order="natural"` keeps token order (as FlexAttention needs). `documents`: packed
        documents (see `mask`), laid out in absolute tiles, token order natural."""
        N = M if N is None else N
        if documents is not None:
            if q is not None or k is not None or M != N:
                raise PatternError("documents= lays out self-attention (M == N) of static patterns (no q=, k=)",
                                   self.span)
            return delegate("document_layout")(self, N, heads, block_m, block_n, documents, device=device)
        return delegate("layout")(self, M, N, heads, block_m, block_n, q=q, k=k, device=device, order=order)

    def predicate_terms(self, M: int, N: int, heads: int | None = None, data=None) -> list[tuple[Section, Term | None]]:
        """Per section, the rule traced into one `Term` over q, k, h, M, N (None where a
        primitive reads run-time tables and can't be traced; `data` may let it: see
        `primitives.tables.AS_ARGUMENT`)."""
        out = []
        for s in self.sections(heads):
            ctx = self.context(s, Sym("M"), Sym("N"), Sym("h"), data, lengths=(M, N))
            try:
                value = s.expr.visible(ctx, Sym("q"), Sym("k"))
            except NotImplementedError:
                out.append((s, None))
                continue
            out.append((s, value.term if isinstance(value, Sym) else Term.const(bool(value))))
        return out

    def mask_mod(self, M: int, N: int | None = None, heads: int | None = None, q=None, k=None, documents=None):
        """A FlexAttention `mask_mod(b, h, q_idx, kv_idx) -> bool` with this pattern's semantics
        at lengths M, N (see `patternc.layout.flex.mask_mod`); `documents` as `mask`'s."""
        if documents is not None:
            if q is not None or k is not None or (N is not None and N != M):
                raise PatternError("documents= masks self-attention (M == N) of static patterns (no q=, k=)",
                                   self.span)
            return delegate("document_mask_mod")(self, M, heads, documents)
        return delegate("mask_mod")(self, M, N, heads, q=q, k=k)

    # ------------------------------------------------------------------ composition and printing

    def _combine(self, other, cls) -> Pattern:
        if isinstance(self.body, tuple) or isinstance(other.body, tuple):
            raise PatternError("patterns with per-head sections can't be combined with | & -")
        if self.grid != other.grid and None not in (self.grid, other.grid):
            raise PatternError("can't combine patterns on different grids")
        return Pattern(cls(self.expr, other.expr), grid=self.grid or other.grid)

    def __or__(self, other):
        return self._combine(other, Union)

    def __and__(self, other):
        return self._combine(other, Intersect)

    def __sub__(self, other):
        return self._combine(other, Difference)

    def __str__(self):
        lines = []
        if self.grid is not None:
            lines.append(f"grid({', '.join(map(str, self.grid))})")
        if isinstance(self.body, tuple):
            lines += [str(s) for s in self.body]
        else:
            lines.append(str(self.body))
        if self.name is None and not self.params:
            return "\n".join(lines)
        params = ", ".join(n if d is None else f"{n} = {d}" for n, d in self.params)
        header = f"pattern {self.name or 'pattern'}" + (f"({params})" if self.params else "") + ":"
        return "\n".join([header] + ["    " + line for line in lines])

    def __repr__(self):
        return f"Pattern({str(self)!r})"


def delegate(name: str) -> Callable:
    """The registered implementation of `name` (see `DELEGATES`)."""
    if name not in DELEGATES:
        raise PatternError(f"'{name}' is defined by a stage of patternc that is not loaded", None,
                           "import patternc first")
    return DELEGATES[name]


def _to_term(value, name) -> Term:
    if isinstance(value, Term):
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise PatternError(f"parameter '{name}' must be an integer, got {value!r}")
    return Term.const(value)


def _check_lengths(M, N, span):
    for n, v in (("M", M), ("N", N)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise PatternError(f"length {n} must be a positive integer, got {v!r}", span)


def _check_qk(q, k, M, N, span):
    if q.shape[1] != M or k.shape[1] != N:
        raise PatternError(f"q has {q.shape[1]} queries and k {k.shape[1]} keys, but the mask is {M} x {N}", span)
    if q.shape[2] != k.shape[2]:
        raise PatternError(f"q and k head_dims differ: {q.shape[2]} vs {k.shape[2]}", span)
    if k.shape[0] < 1 or q.shape[0] % k.shape[0]:
        raise PatternError(f"q's {q.shape[0]} heads are not a multiple of k's {k.shape[0]} (GQA/MQA)", span)


def _heads_first(x, name):
    if not hasattr(x, "dim"):
        raise PatternError(f"{name} must be a torch tensor [heads, length, head_dim], got {type(x).__name__}")
    if x.dim() == 4:
        if x.shape[0] != 1:
            raise PatternError(f"{name}: the reference mask takes a batch of 1, got shape {tuple(x.shape)}")
        x = x[0]
    if x.dim() != 3:
        raise PatternError(f"{name} must be [heads, length, head_dim], got shape {tuple(x.shape)}")
    return x

