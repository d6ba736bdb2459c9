"""Pattern text -> lark syntax tree, and syntax errors taught by example.

lark parses with the grammar in `pattern.lark` (LALR, an indenter for pattern bodies); a
failure becomes a located `PatternError`: lark matches the failing parser state against
`SYNTAX_EXAMPLES`, and bad indentation or absurd nesting get their own messages.
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken
from lark.indenter import DedentError, Indenter

from ..errors import PatternError, Source, Span


class _Indenter(Indenter):
    NL_type = "_NL"
    OPEN_PAREN_types = ["LPAR"]
    CLOSE_PAREN_types = ["RPAR"]
    INDENT_type = "_INDENT"
    DEDENT_type = "_DEDENT"
    tab_len = 8

    def handle_NL(self, token: Token):
        levels = list(self.indent_level)
        try:
            yield from super().handle_NL(token)
        except DedentError:
            raise _BadDedent(token, levels) from None


class _BadDedent(Exception):
    """A line indented less than its block but more than the block around it."""

    def __init__(self, token: Token, levels: list[int]):
        super().__init__()
        self.token, self.levels = token, levels


@lru_cache(maxsize=1)
def _lark() -> Lark:
    grammar = resources.files("patternc.grammar").joinpath("pattern.lark").read_text()
    # cache: lark keeps the LALR tables it derives in the temp dir, keyed by grammar, options and its
    # version (a process's first parse: ~60 ms -> ~6 ms)
    return Lark(grammar, parser="lalr", postlex=_Indenter(), start=["file", "body_file"],
                propagate_positions=True, maybe_placeholders=True, cache=True)


# Syntax errors taught by example: lark matches the failing parser state against these.
SYNTAX_EXAMPLES = {
    ("an operator is missing between two terms", "join patterns with | (union), & (intersection) or - (difference)"): [
        "causal window(8)", "causal & window(8) sink(4)", "window(8) 4",
    ],
    ("unbalanced parentheses", "every ( needs a matching )"): [
        "causal & (window(8)", "window(8))", "(causal",
    ],
    ("an expression is missing", "write a primitive such as causal or window(1024), or a number"): [
        "causal &", "causal | ", "window(8) & & causal", "window(, 4)", "window(4 + )",
    ],
    ("a pattern body is missing", "write the body indented below `pattern name:` or after the colon"): [
        "pattern p:\n", "pattern p:\nlet x = 1\n", "let x = 1",
    ],
    ("a colon is missing", "write `pattern name:` or `pattern name(w = 1024):`"): [
        "pattern p\n    causal\n", "pattern p(w = 4)\n    causal\n",
    ],
    ("a pattern body is one expression", "join the lines with | or &, or continue the line inside ( )"): [
        "causal\nwindow(8)", "pattern p:\n    causal\n    window(8)\n", "causal\n(window(8))",
    ],
}
INDENTATION = ("unexpected indentation", "continue a long expression inside ( ) or end the line with \\")
MAX_DEPTH = 100  # nesting levels of the syntax tree: deeper ones would exhaust Python's stack later


def _syntax_error(e: UnexpectedInput, source: Source, start: str) -> PatternError:
    pos = getattr(e, "pos_in_stream", None)
    if isinstance(e, UnexpectedToken) and e.token.type == "_INDENT" and e.token.end_pos is not None:
        at = min(e.token.end_pos, len(source.text))  # the indented line's first character
        span = Span.from_offsets(source, at, at + 1)
    elif isinstance(e, UnexpectedToken) and e.token.type == "$END" or isinstance(e, UnexpectedEOF):
        text = source.text.rstrip()  # just after the last character written
        span = Span.from_offsets(source, len(text), len(text))
    elif isinstance(e, UnexpectedToken) and e.token.type == "_DEDENT" or pos is None:
        line, col = getattr(e, "line", None), getattr(e, "column", None)
        if not isinstance(line, int) or line < 1:
            text = source.text.rstrip("\n")
            line, col = text.count("\n") + 1, len(text) - text.rfind("\n")
        span = Span(source, line, max(col, 1))
    else:
        tok = getattr(e, "token", None)
        end = pos + max(1, len(str(tok))) if tok is not None and tok.type not in ("_NL",) else pos + 1
        span = Span.from_offsets(source, pos, end)
    label = None
    try:
        if isinstance(e, UnexpectedToken) and e.token.type == "_INDENT":
            label = INDENTATION  # the parser state says little here: the token does
        else:
            label = e.match_examples(lambda text: _lark().parse(text + "\n", start=start),
                                     SYNTAX_EXAMPLES, use_accepts=True)
    except Exception:  # noqa: BLE001 - a label is a nicety; the error below stands without it
        label = None
    if isinstance(e, UnexpectedCharacters):
        ch = source.text[e.pos_in_stream] if e.pos_in_stream < len(source.text) else "?"
        if ch == "/":
            return PatternError("unexpected character '/'", span, "integer division is written //, as in N // 8")
        return PatternError(f"unexpected character {ch!r}", span,
                            "names are letters, digits and _; numbers are integers or decimals such as 0.9; "
                            "ranges are written a..b")
    if label is not None:
        return PatternError(f"syntax error: {label[0]}", span, label[1])
    if isinstance(e, UnexpectedToken):
        got = "end of input" if e.token.type == "$END" else "end of line" if e.token.type == "_NL" \
            else "indentation" if e.token.type == "_INDENT" else "end of the block" \
            if e.token.type == "_DEDENT" else repr(str(e.token))
        expected = sorted(_pretty(t) for t in e.expected if not t.startswith("_") and t != "$END")[:8]
        return PatternError(f"syntax error: unexpected {got}", span,
                            f"expected {', '.join(expected)}" if expected else None)
    if isinstance(e, UnexpectedEOF):
        return PatternError("syntax error: unexpected end of input", span)
    return PatternError("syntax error", span)


_LINES = {"let_stmt", "pattern_def", "pattern_body_inline", "body_expr", "section", "grid_stmt", "param"}


def _check_depth(tree: Tree, source: Source):
    """Reject absurdly deep expressions (`a | b | ...` with hundreds of terms) with an error, not a crash."""
    stack = [(tree, 1, tree)]
    while stack:
        node, depth, stmt = stack.pop()
        if depth > MAX_DEPTH:  # located at the start of the statement that holds it
            at = 0 if stmt.meta.empty else stmt.meta.start_pos
            raise PatternError(f"expression nested too deeply (more than {MAX_DEPTH} levels)",
                               Span.from_offsets(source, at, at + 1), "split it into named patterns or lets")
        stack.extend((c, depth + 1, c if c.data in _LINES else stmt) for c in node.children if isinstance(c, Tree))


_TOKEN_NAMES = {"LPAR": "'('", "RPAR": "')'", "COLON": "':'", "COMMA": "','", "EQUAL": "'='", "NAME": "a name",
                "NUMBER": "a number", "DECIMAL": "a decimal", "VBAR": "'|'", "AMPERSAND": "'&'", "MINUS": "'-'",
                "PLUS": "'+'", "STAR": "'*'", "PERCENT": "'%'", "SLASH": "'/'", "__ANON_0": "'//'", "__ANON_1": "'..'"}


def _pretty(t: str) -> str:
    return _TOKEN_NAMES.get(t, t.lower())


def parse_tree(source: Source, start: str) -> Tree:
    """The syntax tree of `source` from rule `start` ("file" or "body_file"), or a PatternError."""
    try:
        tree = _lark().parse(source.text + "\n", start=start)
    except UnexpectedInput as e:
        raise _syntax_error(e, source, start) from None
    except _BadDedent as e:
        at = e.token.end_pos  # the first character of the badly indented line
        span = Span.from_offsets(source, at, at + 1)
        levels = " or ".join(str(n) for n in e.levels)
        raise PatternError(f"inconsistent indentation: this line is indented by {span.column - 1} columns, "
                           f"which matches no enclosing block ({levels})", span,
                           "indent every line of a pattern body by the same amount") from None
    _check_depth(tree, source)
    return tree
