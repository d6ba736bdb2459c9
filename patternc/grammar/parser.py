"""Pattern text -> IR. The grammar is data (`pattern.lark`); this module turns its trees into
`Pattern`s, resolving names in scope (lets, pattern parameters, N/M/h, earlier patterns) and
checking types (a decimal such as `0.9` is a float, accepted only by parameters that take one;
a keyword argument of a CHOICE parameter, `shared=group`, is a bare name, not looked up).
Syntax errors are `syntax.py`'s.

Whatever the text, only a `PatternError` leaves `parse_text`: bad indentation, integers past
2**62 - 1 and expressions nested deeper than `syntax.MAX_DEPTH` included."""
from __future__ import annotations

from dataclasses import dataclass

from lark import Token, Tree

from ..errors import PatternError, Source, Span, closest
from ..ir.expr import Sym, Term, maximum, minimum
from ..ir.nodes import Difference, Intersect, Node, Union
from ..ir.pattern import Pattern, Section
from ..primitives import REGISTRY
from ..primitives.base import format_value
from .syntax import parse_tree

BUILTIN_NAMES = {"N": "number of keys", "M": "number of queries", "h": "head index"}
FUNCTIONS = {"min": minimum, "max": maximum}


@dataclass
class _Val:
    value: object  # Term | Node | tuple | ("range", a, b) | float (a decimal)
    span: Span


def _describe(v) -> str:
    if isinstance(v, float):
        return format_value(v)
    if isinstance(v, Node):
        return "a pattern"
    if isinstance(v, tuple):
        return "a range" if v and v[0] == "range" else "a tuple"
    return "a number"


class _Builder:
    """Walks the lark tree with a scope of names."""

    def __init__(self, source: Source):
        self.source = source
        self.patterns: dict[str, Pattern] = {}

    def span(self, meta_or_token) -> Span:
        m = meta_or_token
        if isinstance(m, Token):
            return Span.from_offsets(self.source, m.start_pos, m.end_pos)
        if getattr(m, "empty", True) and not hasattr(m, "start_pos"):
            return Span(self.source, 1, 1)
        return Span.from_offsets(self.source, m.start_pos, m.end_pos)

    # ------------------------------------------------------------------ statements

    def file(self, tree: Tree) -> dict[str, Pattern]:
        scope: dict[str, _Val] = {}
        for stmt in tree.children:
            if stmt.data == "let_stmt":
                self.let(stmt, scope)
            else:
                p = self.pattern_def(stmt, scope)
                if p.name in self.patterns:
                    first = self.patterns[p.name].span
                    raise PatternError(f"pattern '{p.name}' is defined twice", self.span(stmt.children[0]),
                                       f"rename one of them (the first is on line {first.line})")
                self.patterns[p.name] = p
        return self.patterns

    def let(self, stmt: Tree, scope: dict):
        name_tok, value = stmt.children
        self._check_new_name(name_tok)
        if str(name_tok) in scope:  # a name means one thing: rebinding a parameter would make bind() a no-op
            raise PatternError(f"'{name_tok}' is already defined (line {scope[str(name_tok)].span.line})",
                               self.span(name_tok), "choose another name")
        scope[str(name_tok)] = self.expr(value, scope)

    def _check_new_name(self, tok: Token):
        name = str(tok)
        if name in REGISTRY or name in BUILTIN_NAMES or name in FUNCTIONS:
            raise PatternError(f"'{name}' is a built-in name and can't be rebound", self.span(tok),
                               "choose another name")

    def pattern_def(self, stmt: Tree, scope: dict) -> Pattern:
        name_tok, params_tree, *rest = stmt.children
        local = dict(scope)
        params = []
        if params_tree is not None:
            seen = set()
            for ptree in params_tree.children:
                if ptree is None:
                    continue
                ptok, default = ptree.children
                self._check_new_name(ptok)
                if str(ptok) in seen:
                    raise PatternError(f"parameter '{ptok}' is declared twice", self.span(ptok))
                seen.add(str(ptok))
                value = None
                if default is not None:
                    v = self.expr(default, scope)
                    value = self.number(v, "a parameter default")
                    if str(ptok) == "heads" and not (value.is_const and value.value >= 1):
                        raise PatternError(f"the number of heads must be a constant >= 1, got '{value}'", v.span,
                                           "e.g. pattern s2(heads = 16):")
                params.append((str(ptok), value))
                local[str(ptok)] = _Val(Term.var(str(ptok)), self.span(ptok))
        span = self.span(stmt.meta)
        if rest and isinstance(rest[0], Tree) and rest[0].data == "pattern_body_inline":
            body, grid = self.pattern_expr(rest[0].children[0], local), None
        else:
            body, grid = self.body(rest, local, span)
        return Pattern(body, str(name_tok), tuple(params), grid, self.source, span)

    def body(self, items: list, scope: dict, span: Span):
        grid, expr, sections = None, None, []
        for item in items:
            if item is None:
                continue
            kind = item.data
            if kind == "let_stmt":
                self.let(item, scope)
            elif kind == "grid_stmt":
                if grid is not None:
                    raise PatternError("the grid is declared twice", self.span(item.meta), "keep one grid(...) line")
                dims = [self.expr(c, scope) for c in item.children if c is not None]
                grid = tuple(self.number(v, "a grid dimension") for v in dims)
                for v in dims:
                    if "h" in v.value.free_vars():
                        raise PatternError("the grid can't depend on the head index h", v.span,
                                           "every head attends over the same token grid")
                    if v.value.is_const and v.value.value < 1:
                        raise PatternError(f"grid dimensions must be >= 1, got {v.value.value}", v.span)
            elif kind == "body_expr":
                expr = self.pattern_expr(item.children[0], scope)
            elif kind == "section":
                sections.append(self.section(item, scope, sections))
        if sections:
            return tuple(sections), grid
        return expr, grid

    def section(self, item: Tree, scope: dict, earlier: list) -> Section:
        lo_t, hi_t, expr_t = item.children
        lo = self.const_int(lo_t, scope, "a head index")
        hi = lo if hi_t is None else self.const_int(hi_t, scope, "a head index")
        span = self.span(lo_t.meta if isinstance(lo_t, Tree) else lo_t)
        if hi < lo:
            raise PatternError(f"empty head range {lo}..{hi}", span, "ranges a..b include both ends and need a <= b")
        expected = earlier[-1].hi + 1 if earlier else 0
        if lo < expected:
            raise PatternError(f"heads {lo}..{hi} overlap the section above (heads {earlier[-1].lo}..{earlier[-1].hi})",
                               span, f"start this section at head {expected}")
        if lo > expected:
            raise PatternError(f"heads {expected}..{lo - 1} are not covered by any section", span,
                               f"start this section at head {expected}, or add a section for the missing heads")
        return Section(lo, hi, self.pattern_expr(expr_t, scope), span)

    # ------------------------------------------------------------------ expressions

    def pattern_expr(self, tree, scope) -> Node:
        v = self.expr(tree, scope)
        if not isinstance(v.value, Node):
            raise PatternError(f"expected a pattern, got {_describe(v.value)}", v.span,
                               "a pattern is built from primitives such as causal, window(w), sink(n)")
        return v.value

    def number(self, v: _Val, what: str) -> Term:
        if not isinstance(v.value, Term) or (v.value.is_const and isinstance(v.value.value, bool)):
            raise PatternError(f"expected {what} (an integer), got {_describe(v.value)}", v.span)
        return v.value

    def const_int(self, tree, scope, what) -> int:
        v = self.expr(tree, scope)
        t = self.number(v, what)
        if not t.is_const:
            raise PatternError(f"{what} must be a constant, got '{t}'", v.span)
        if t.value < 0:
            raise PatternError(f"{what} must be >= 0, got {t.value}", v.span)
        return t.value

    def expr(self, tree, scope) -> _Val:
        if isinstance(tree, Token):  # NAME or NUMBER left bare by ?rules
            return self.name(tree, scope) if tree.type == "NAME" else self.integer(tree)
        if tree.data in _BINARY:
            return self.chain(tree, scope)
        return getattr(self, "e_" + tree.data)(tree, scope)

    def integer(self, tok: Token) -> _Val:
        value = int(tok.replace("_", ""))
        if value > MAX_INT:
            raise PatternError(f"integer {tok} is too large", self.span(tok), "integers are at most 2**62 - 1")
        return _Val(Term.const(value), self.span(tok))

    def e_number(self, tree, scope):
        return self.integer(tree.children[0])

    def e_decimal(self, tree, scope):
        tok = tree.children[0]
        return _Val(float(tok.replace("_", "")), self.span(tok))

    def chain(self, tree, scope) -> _Val:
        """A left-deep run of binary operators (`a | b | c ...`), walked without recursion."""
        spine = []
        while isinstance(tree, Tree) and tree.data in _BINARY:
            spine.append(tree)
            tree = tree.children[0]
        value = self.expr(tree, scope)
        for node in reversed(spine):
            value = self._binary(node, value, self.expr(node.children[1], scope), _BINARY[node.data])
        return value

    def e_true(self, tree, scope):
        return _Val(Term.const(True), self.span(tree.meta))

    def e_false(self, tree, scope):
        return _Val(Term.const(False), self.span(tree.meta))

    def e_name(self, tree, scope):
        return self.name(tree.children[0], scope)

    def name(self, tok: Token, scope) -> _Val:
        name, span = str(tok), self.span(tok)
        if name in scope:
            return _Val(scope[name].value, span)
        if name in BUILTIN_NAMES:
            return _Val(Term.var(name), span)
        if name in REGISTRY:
            return _Val(REGISTRY[name].from_call([], {}, span), span)
        if name in self.patterns:
            p = self.patterns[name]
            if isinstance(p.body, tuple) or p.grid is not None:
                raise PatternError(f"pattern '{name}' has per-head sections or a grid and can't be used inside another",
                                   span)
            return _Val(p.expr, span)
        known = set(scope) | set(BUILTIN_NAMES) | set(REGISTRY) | set(self.patterns)
        guess = closest(name, known)
        raise PatternError(f"unknown name '{name}'", span,
                           f"did you mean '{guess}'?" if guess else
                           "names are primitives, lets, the pattern's parameters, N, M and h")

    def e_call(self, tree, scope):
        name_tok, args_tree = tree.children
        name, span = str(name_tok), self.span(tree.meta)
        primitive = REGISTRY.get(name)
        args, kwargs = [], {}
        for a in (args_tree.children if args_tree is not None else []):
            if a is None:
                continue
            if isinstance(a, Tree) and a.data in ("kwarg", "kwarg_range"):
                key = a.children[0]
                choice = primitive is not None and primitive.takes_name(str(key)) and _bare_name(a.children[1])
                if a.data == "kwarg_range":
                    value = self.e_range(Tree("range", a.children[1:], a.meta), scope)
                elif choice:  # `shared=group`: the name itself, not looked up
                    value = _Val(Term.var(str(choice)), self.span(a.meta))
                else:
                    value = self.expr(a.children[1], scope)
                if str(key) in kwargs:
                    raise PatternError(f"{name}() got parameter '{key}' twice", self.span(key))
                kwargs[str(key)] = (value.value, self.span(a.meta))  # `name=value`: errors point at the name
            else:
                if kwargs:
                    v = self.expr(a, scope)
                    raise PatternError("positional argument after a keyword argument", v.span,
                                       "put positional arguments first")
                v = self.expr(a, scope)
                args.append((v.value, v.span))
        for value, sp in args + list(kwargs.values()):
            if isinstance(value, Node):
                raise PatternError(f"{name}() takes numbers, not a pattern", sp)
        if name in FUNCTIONS:
            if kwargs or len(args) != 2:
                raise PatternError(f"{name}() takes two numbers", span, f"usage: {name}(a, b)")
            a, b = (self.number(_Val(v, s), f"an argument of {name}()") for v, s in args)
            return _Val(FUNCTIONS[name](Sym(a), Sym(b)).term, span)
        if name not in REGISTRY:
            guess = closest(name, set(REGISTRY) | set(FUNCTIONS))
            raise PatternError(f"unknown primitive '{name}'", self.span(name_tok),
                               f"did you mean '{guess}'?" if guess else f"primitives: {', '.join(sorted(REGISTRY))}")
        return _Val(REGISTRY[name].from_call(args, kwargs, span), span)

    def e_range(self, tree, scope):
        lo, hi = (self.expr(c, scope) for c in tree.children)
        return _Val(("range", self.number(lo, "a range bound"), self.number(hi, "a range bound")),
                    self.span(tree.meta))

    def e_tuple(self, tree, scope):
        vals = [self.expr(c, scope) for c in tree.children if c is not None]
        for v in vals:
            if not isinstance(v.value, Term):
                raise PatternError(f"tuples hold integers, got {_describe(v.value)}", v.span)
        return _Val(tuple(v.value for v in vals), self.span(tree.meta))

    def e_neg(self, tree, scope):
        signs = 0
        while isinstance(tree, Tree) and tree.data == "neg":  # `- - x` without recursion
            signs, span, tree = signs + 1, self.span(tree.meta), tree.children[0]
        v = self.expr(tree, scope)
        if isinstance(v.value, float):  # -0.5: a decimal parameter's range check says more than a type error
            return _Val(-v.value if signs % 2 else v.value, span)
        t = self.number(v, "a number after unary -")
        return _Val((-Sym(t)).term if signs % 2 else t, span)

    def _binary(self, tree, a: _Val, b: _Val, op: str):
        span = self.span(tree.meta)
        if isinstance(a.value, Node) and isinstance(b.value, Node):
            nodes = {"|": Union, "&": Intersect, "-": Difference}
            if op not in nodes:
                raise PatternError(f"'{op}' doesn't combine patterns", span, "patterns combine with |, & and -")
            return _Val(nodes[op](a.value, b.value, span=span), span)
        numbers = (Term, float)  # decimals reach here only to be refused: arithmetic is on integers
        if isinstance(a.value, numbers) and isinstance(b.value, numbers) and op not in ("|", "&"):
            for v in (a, b):
                self.number(v, f"a number around '{op}'")
            if op in ("//", "%") and b.value.is_const and b.value.value == 0:
                raise PatternError("division by zero", b.span)
            try:
                term = Sym(a.value)._op(op, Sym(b.value)).term
            except ZeroDivisionError:
                raise PatternError("division by zero", b.span) from None
            if term.is_const and abs(term.value) > MAX_INT:
                raise PatternError(f"integer overflow: {term.value} is too large", span,
                                   "integers are at most 2**62 - 1")
            return _Val(term, span)
        bad = b if isinstance(a.value, Node) else a
        if op in ("|", "&"):
            raise PatternError(f"'{op}' combines patterns, got {_describe(bad.value)}", bad.span,
                               "use a primitive such as window(w) or causal here")
        raise PatternError(f"can't apply '{op}' to {_describe(a.value)} and {_describe(b.value)}", span,
                           "patterns combine with |, & and -; numbers with + - * // %")


def _bare_name(tree) -> Token | None:
    """The NAME token if the expression is just a name (`group` in `shared=group`)."""
    if isinstance(tree, Tree) and tree.data == "name":
        tree = tree.children[0]
    return tree if isinstance(tree, Token) and tree.type == "NAME" else None


_BINARY = {"union": "|", "intersect": "&", "add": "+", "sub": "-", "mul": "*", "floordiv": "//",
           "mod": "%"}
MAX_INT = 2 ** 62 - 1


def parse_text(text: str, filename: str = "<pattern>") -> tuple[dict[str, Pattern], Pattern | None]:
    """Parse a file (`let`s and `pattern`s) or a bare pattern body.

    Returns (named patterns, the bare body's pattern or None)."""
    if not isinstance(text, str):
        raise PatternError(f"pattern text must be a str, got {type(text).__name__}")
    source = Source(text, filename)
    # a file defines patterns; anything else (lets and a body included) is a bare body. The text
    # may be indented as a whole (a triple-quoted string): its top level is its first line's indentation.
    lines = [line for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    top = lines[0][:len(lines[0]) - len(lines[0].lstrip())] if lines else ""
    is_file = any(line.split()[:1] == ["pattern"] or line.lstrip().startswith("pattern:")
                  for line in lines if line[len(top):len(top) + 1] not in (" ", "\t"))
    start = "file" if is_file else "body_file"
    if all(not line.strip() or line.strip().startswith("#") for line in text.splitlines()):
        raise PatternError("empty pattern", Span(source, 1, 1), "write an expression such as causal & window(1024)")
    tree = parse_tree(source, start)
    builder = _Builder(source)
    if start == "file":
        return builder.file(tree), None
    span = Span(source, 1, 1)
    body, grid = builder.body(tree.children, {}, span)
    if body is None or body == ():
        raise PatternError("empty pattern", span, "write an expression such as causal & window(1024)")
    return {}, Pattern(body, None, (), grid, source, span)
