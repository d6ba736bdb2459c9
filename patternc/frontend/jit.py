"""`@patternc.jit`: a Python predicate `(q, k, h) -> bool expression`, traced once into a Pattern.

    @patternc.jit
    def swa(q, k, h, M, N):
        p = q + N - M    # the query's position
        return (k <= p) & (p - k < 1024)

    swa.pattern          # Pattern: causal & window(1024)
    swa.mask(8)          # bool [1, 8, 8], as Pattern.mask
    out = swa(q, k, v)   # patternc.attention(q, k, v, swa.pattern)

The function is called once with symbolic `q`, `k`, `h` (`patternc.ir.expr.Sym`); it may use
`+ - * // % & | ^ ~`, comparisons, `abs` and `patternc.where(cond, a, b)`. `q` and `k` are raw
token indices, as in FlexAttention's `mask_mod`: `q` is the row `0..M-1`, while primitives read
the query's position `q + N - M` (see `recognize` for how the two meet). Extra parameters after
`(q, k, h)` become pattern parameters: `def f(q, k, h, w=1024)` can be rebound with
`f.bind(w=2048)`; parameters named `M` and `N` without a default are the query and key lengths.
`@jit(heads=16)` sets the default head count. Parts of the predicate that are exactly a
primitive family become that primitive (which lowers analytically); the rest is a `predicate`
node.
"""
from __future__ import annotations

import ast
import functools
import inspect
import linecache
import os
import sysconfig

from ..errors import PatternError, Source, Span
from ..ir.expr import COMPARISONS, Sym, Term, TraceError
from ..ir.pattern import Pattern, delegate
from .predicate import Predicate
from .recognize import PROBES, recognize

INDEX_NAMES = ("q", "k", "h")
LENGTH_NAMES = ("M", "N")
GENERIC_HINT = "predicates use + - * // % & | ^ ~, comparisons, abs() and patternc.where(cond, a, b)"


def jit(fn=None, **params):
    """Decorator: `@jit` or `@jit(heads=16, w=2048)` on `def f(q, k, h, ...)`; see the module doc."""
    if fn is None:
        return lambda f: JitPattern(f, params)
    if not callable(fn):
        raise PatternError(f"@patternc.jit decorates a function (q, k, h) -> bool, got {type(fn).__name__}",
                           None, "write @patternc.jit or @patternc.jit(heads=16) above a def")
    return JitPattern(fn, params)


class JitPattern:
    """A traced predicate: `.pattern` is the `Pattern`; the Pattern API is forwarded to it and
    calling it runs attention, `f(q, k, v, **kw) == patternc.attention(q, k, v, f.pattern, **kw)`."""

    def __init__(self, fn, params: dict):
        self.fn = fn
        self.pattern = trace(fn, **params)
        functools.update_wrapper(self, fn)

    def __call__(self, q, k, v, **kw):
        return delegate("attention")(q, k, v, self.pattern, **kw)

    def mask(self, *args, **kw):
        """`Pattern.mask`: bool [heads, M, N]."""
        return self.pattern.mask(*args, **kw)

    def layout(self, *args, **kw):
        """`Pattern.layout`."""
        return self.pattern.layout(*args, **kw)

    def bind(self, **values) -> JitPattern:
        """This predicate with other parameter defaults (`f.bind(w=2048)`); still callable."""
        out = object.__new__(JitPattern)
        out.__dict__.update(self.__dict__)
        out.pattern = self.pattern.bind(**values)
        return out

    def __getattr__(self, name):  # the rest of the Pattern API: sections, expr, primitives, ...
        if name == "pattern":  # not traced yet (failed __init__): don't recurse
            raise AttributeError(name)
        return getattr(self.pattern, name)

    def __or__(self, other):
        return self.pattern | _pattern_of(other)

    def __and__(self, other):
        return self.pattern & _pattern_of(other)

    def __sub__(self, other):
        return self.pattern - _pattern_of(other)

    def __ror__(self, other):
        return _pattern_of(other) | self.pattern

    def __rand__(self, other):
        return _pattern_of(other) & self.pattern

    def __rsub__(self, other):
        return _pattern_of(other) - self.pattern

    def __eq__(self, other):
        return isinstance(other, (JitPattern, Pattern)) and self.pattern == _pattern_of(other)

    def __hash__(self):
        return hash(self.pattern)

    def __str__(self):
        return str(self.pattern)

    def __repr__(self):
        return f"<patternc.jit {self.fn.__qualname__}: {str(self.pattern.body)}>"


def _pattern_of(x) -> Pattern:
    return x.pattern if isinstance(x, JitPattern) else x


# --------------------------------------------------------------------------- tracing


def trace(fn, **params) -> Pattern:
    """Trace `fn(q, k, h, *extra)` once into a Pattern (what `@jit` does)."""
    where = _def_span(fn)
    names, extra = _signature(fn, params, where)
    args = [Sym(n) for n in INDEX_NAMES[: len(names)]] + [Sym(n) for n in extra]
    try:
        result = fn(*args)
    except (TraceError, TypeError, AttributeError, ZeroDivisionError) as e:
        raise _trace_error(e, fn, where) from None
    if isinstance(result, Sym):
        term = result.term
    elif isinstance(result, bool) or type(result).__name__ == "bool_":
        term = Term.const(bool(result))
    else:
        got = "None (no return?)" if result is None else f"{type(result).__name__} {result!r}"
        raise PatternError(f"the predicate {fn.__name__} must return a boolean expression, got {got}", where,
                           "return a comparison such as (q >= k) & (q - k < 1024)")
    if _kind(term, where) != "bool":
        raise PatternError(f"the predicate {fn.__name__} returns a number ({_show(term)}), not a boolean", where,
                           "compare it: e.g. q - k < 1024")
    term = _normalize(term)
    pattern_params = tuple((n, v) for n, v in extra.items() if n not in LENGTH_NAMES)
    if "heads" in params:
        pattern_params += (("heads", _int_term(params["heads"], "heads", where)),)
    pattern = Pattern(recognize(term), fn.__name__, pattern_params, None, where.source if where else None, where)
    return _checked(pattern, Pattern(Predicate(term, span=where), fn.__name__, pattern_params, None,
                                     where.source if where else None, where))


def _signature(fn, params: dict, where):
    """The index parameters (q, k[, h]) and the extra ones {name: Term default or Term var}."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        raise PatternError(f"can't read the parameters of {fn!r}", where) from None
    positional = [p for p in sig.parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    n_index = 0  # the leading (q, k[, h]): required parameters, or ones with those very names
    for p in positional[:3]:
        if p.kind != p.KEYWORD_ONLY and (p.default is p.empty and p.name not in LENGTH_NAMES
                                         or p.name in INDEX_NAMES):
            n_index += 1
        else:
            break
    if n_index < 2:
        raise PatternError(f"the predicate {fn.__name__} must take (q, k) or (q, k, h)", where,
                           "def f(q, k, h): return q >= k")
    index = [p.name for p in positional[:n_index]]
    extra = {}
    for p in positional[n_index:]:
        if p.name in INDEX_NAMES:
            raise PatternError(f"parameter '{p.name}' of {fn.__name__} clashes with the index names q, k, h", where,
                               "rename it")
        if p.name in params:
            extra[p.name] = _int_term(params[p.name], p.name, where)
        elif p.name in LENGTH_NAMES and p.default is p.empty:
            extra[p.name] = Term.var(p.name)
        elif p.default is not p.empty:
            extra[p.name] = _int_term(p.default, p.name, where)
        else:
            extra[p.name] = None  # required: bind it later
    unknown = set(params) - set(extra) - {"heads"}
    if unknown:
        raise PatternError(f"@jit got unknown parameter(s) {', '.join(sorted(unknown))} for {fn.__name__}", where,
                           f"its parameters: {', '.join(extra) or 'none'} (and heads=)")
    return index, extra


def _int_term(value, name, where) -> Term:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PatternError(f"parameter '{name}' must be an integer, got {value!r}", where)
    return Term.const(value)


def _checked(recognized: Pattern, general: Pattern) -> Pattern:
    """Recognition is exact by construction; as a safety net, compare both masks on a few small
    shapes (M != N included) and keep the general predicate if they ever differ."""
    if recognized.body == general.body or any(d is None for _, d in recognized.params):
        return recognized
    try:
        for M, N in PROBES:
            heads = 3
            if not bool((recognized.mask(M, N, heads) == general.mask(M, N, heads)).all()):
                return general
    except Exception:  # noqa: BLE001 - e.g. a window whose check fails where the predicate is just empty
        return general
    return recognized


# --------------------------------------------------------------------------- checking the traced term


def _kind(t: Term, where) -> str:
    """'bool' or 'int'; raises for mixes that would mean different things in different domains."""
    if t.op == "const":
        return "bool" if isinstance(t.value, bool) else "int"
    if t.op == "var":
        return "int"
    kinds = [_kind(a, where) for a in t.args]
    if t.op in COMPARISONS:
        if len(set(kinds)) > 1:
            raise PatternError(f"comparing a boolean with a number in {_show(t)}", where, GENERIC_HINT)
        return "bool"
    if t.op in ("&", "|", "^"):
        if len(set(kinds)) > 1:
            raise PatternError(f"'{t.op}' mixes a boolean and a number in {_show(t)}", where,
                               "parenthesise comparisons: (q >= k) & (q - k < 8)")
        return kinds[0]
    if t.op == "~":
        if kinds[0] != "bool":
            raise PatternError(f"'~' on a number in {_show(t)}", where, "~ negates conditions; for numbers use -x - 1")
        return "bool"
    if t.op == "where":
        if kinds[0] != "bool" or kinds[1] != kinds[2]:
            raise PatternError(f"where(cond, a, b) needs a boolean cond and two branches of one kind in {_show(t)}",
                               where)
        return kinds[1]
    if "bool" in kinds:
        raise PatternError(f"arithmetic on a boolean in {_show(t)}", where, "use patternc.where(cond, 1, 0)")
    return "int"


def _normalize(t: Term) -> Term:
    """Boolean `==`/`!=` as `~(a ^ b)`/`a ^ b`: tile truth values (intervals) have no `==`."""
    if t.op in ("const", "var"):
        return t
    args = tuple(_normalize(a) for a in t.args)
    if t.op in ("==", "!=") and all(_is_bool(a) for a in args):
        x = Term("^", args)
        return Term("~", (x,)) if t.op == "==" else x
    return Term(t.op, args)


def _is_bool(t: Term) -> bool:
    return t.op in COMPARISONS or t.op in ("&", "|", "^", "~") and _is_bool(t.args[0]) or \
        t.op == "const" and isinstance(t.value, bool) or t.op == "where" and _is_bool(t.args[1])


def _show(t: Term) -> str:
    from .predicate import python_text

    return python_text(t)


# --------------------------------------------------------------------------- errors in user code


def _source_of(filename: str) -> Source | None:
    lines = linecache.getlines(filename)
    return Source("".join(lines), filename) if lines else None


def _def_span(fn) -> Span | None:
    """The `def` line of `fn` (after its decorators), or its `lambda`."""
    code = getattr(fn, "__code__", None)
    if code is None:
        return None
    source = _source_of(code.co_filename) or Source("", code.co_filename)
    lines = source.text.splitlines()
    first = code.co_firstlineno
    for i in range(first, min(first + 50, len(lines)) + 1):
        text = lines[i - 1]
        stripped = text.lstrip()
        if stripped.startswith(("def ", "async def ")):
            col = len(text) - len(stripped)
            return Span(source, i, col + 1, i, len(text.rstrip()) + 1)
    text = source.line(first)
    col = text.find("lambda") if "lambda" in text else len(text) - len(text.lstrip())
    return Span(source, first, col + 1)


_LIBRARY_DIRS = tuple(os.path.realpath(p) + os.sep for p in {
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),  # patternc itself
    *(sysconfig.get_paths().get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")),
} if p)


def _user_frame(exc, fn):
    """The innermost traceback frame in the user's code (not patternc, the stdlib or packages)."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    user = [f for f in frames if not os.path.realpath(f.filename).startswith(_LIBRARY_DIRS)]
    own = [f for f in frames if f.filename == getattr(getattr(fn, "__code__", None), "co_filename", None)]
    return (own or user or [None])[-1]


def _trace_error(exc: Exception, fn, where: Span | None) -> PatternError:
    frame = _user_frame(exc, fn)
    span = where
    node_hint = None
    if frame is not None and frame.lineno:
        source = _source_of(frame.filename) or Source("", frame.filename)
        col = (frame.colno or 0) + 1
        end_line = frame.end_lineno or frame.lineno
        end_col = (frame.end_colno + 1) if frame.end_colno is not None else None
        span = Span(source, frame.lineno, col, end_line, end_col)
        node_hint = _explain(source.text, frame)
    if node_hint is not None:
        message, hint = node_hint
    elif "integers and booleans only" in str(exc):
        message, hint = str(exc), "token indices are integers: scale instead (2 * q < k rather than q < k * 0.5)"
    elif isinstance(exc, TraceError):
        message, hint = "a symbolic index was used as a Python bool or int while tracing", GENERIC_HINT
    else:
        message, hint = f"can't trace the predicate: {exc}", GENERIC_HINT
    return PatternError(f"{message} (in @patternc.jit {fn.__name__})", span, hint)


def _explain(text: str, frame):
    """(message, hint) from the Python construct at the failing position, or None."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return None
    start = (frame.lineno, frame.colno or 0)
    end = (frame.end_lineno or frame.lineno, frame.end_colno if frame.end_colno is not None else 10**9)
    enclosing = []
    for node in ast.walk(tree):
        if not hasattr(node, "lineno") or node.end_lineno is None:
            continue
        if (node.lineno, node.col_offset) <= start and (node.end_lineno, node.end_col_offset) >= end:
            enclosing.append(node)
    # innermost first: the smallest span that contains the failing instruction
    enclosing.sort(key=lambda n: (n.end_lineno - n.lineno, n.end_col_offset - n.col_offset
                                  if n.end_lineno == n.lineno else 10**9))
    for node in enclosing:
        found = _explain_node(node)
        if found is not None:
            return found
    return None


def _explain_node(node):
    if isinstance(node, ast.BoolOp):
        word = "and" if isinstance(node.op, ast.And) else "or"
        return (f"Python's `{word}` needs a concrete truth value and can't be traced",
                "use & and | instead of and/or, with parentheses: (q >= k) & (q - k < 1024)")
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return "Python's `not` can't be traced", "use ~ instead of not: ~(k < 4)"
    if isinstance(node, ast.Compare) and len(node.ops) > 1:
        return ("a chained comparison (a < b < c) can't be traced",
                "write it as (a < b) & (b < c)")
    if isinstance(node, ast.Compare) and isinstance(node.ops[0], (ast.In, ast.NotIn, ast.Is, ast.IsNot)):
        return "`in` / `is` can't be traced", "compare with == and combine with |"
    if isinstance(node, (ast.If, ast.IfExp, ast.While, ast.Assert)):
        return ("a Python `if` on a symbolic value can't be traced",
                "use patternc.where(cond, a, b) instead of if")
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        return "true division `/` isn't supported in a pattern predicate", "use // for integer division"
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        return "`**` isn't supported in a pattern predicate", "multiply instead: x * x"
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.LShift, ast.RShift, ast.MatMult)):
        return "shifts and @ aren't supported in a pattern predicate", "use * and // by powers of two"
    if isinstance(node, ast.Call):
        name = ast.unparse(node.func)
        if name in ("min", "max"):
            return (f"Python's {name}() compares with a concrete truth value and can't be traced",
                    f"use patternc.where: {name}(a, b) is where(a {'<' if name == 'min' else '>'} b, a, b)")
        if name in ("int", "bool", "float", "range", "len", "round"):
            return (f"{name}() needs a concrete value; q, k and h are symbolic while tracing",
                    GENERIC_HINT)
        root = name.split(".")[0]
        if root in ("torch", "np", "numpy", "math", "triton", "tl"):
            return (f"{name}() can't be traced: q, k and h are symbolic, not tensors",
                    f"write it with operators: {GENERIC_HINT}")
    return None
