"""Errors users see: where (line, column), what (message) and how to fix it (hint).

A table of malformed or invalid inputs, each with its expected location and message; the
report format (`file:line:col: error: ...`, the source line, a caret run, `hint: ...`); and a
fuzz test that feeds random text and random token sequences to the compiler, where only a
`PatternError` may ever escape.
"""
from __future__ import annotations

import re

import pytest
import torch
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st

import patternc
from patternc import PatternError
from patternc.primitives import REGISTRY

MIXED = "pattern mixed:\n    heads 0..1: causal\n    heads 2..3: full\n"

# (text, how to trigger it, line, column, message substring, hint substring or None)
# how: "compile", or ("mask", M, N, heads) to compile and then build the reference mask
CASES = [
    # ---- syntax, taught by example
    ("causal window(8)", "compile", 1, 8, "an operator is missing", "join patterns with |"),
    ("causal & window(8) sink(4)", "compile", 1, 20, "an operator is missing", None),
    ("causal & (window(8)", "compile", 1, 20, "unbalanced parentheses", "every ( needs a matching )"),
    ("window(8))", "compile", 1, 10, "unbalanced parentheses", None),
    ("causal &", "compile", 1, 9, "an expression is missing", "write a primitive"),
    ("pattern p\n    causal\n", "compile", 1, 10, "a colon is missing", "pattern name:"),
    ("pattern p(w = 4)\n    window(w)\n", "compile", 1, 17, "a colon is missing", None),
    ("pattern p:\n", "compile", 1, 11, "a pattern body is missing", None),
    ("causal & window(8) $", "compile", 1, 20, "unexpected character '$'", None),
    ("window(1.)", "compile", 1, 9, "unexpected character '.'", "numbers are integers or decimals"),
    ("topk(2, block=4, threshold=1e-3)", "compile", 1, 29, "unexpected 'e'", None),
    ("window(3) ^ causal", "compile", 1, 11, "unexpected character '^'", None),
    ("let = 3\npattern p: causal\n", "compile", 1, 5, "unexpected '='", "a name"),
    ("pattern 3: causal\n", "compile", 1, 9, "unexpected '3'", None),
    ("causal\n  & window(3)", "compile", 2, 3, "unexpected indentation", "inside ( )"),
    ("pattern p:\n    causal\n    window(3)\n", "compile", 3, 5, "a pattern body is one expression", "join the lines"),
    ("pattern p:\n    causal\n  full\n", "compile", 3, 3, "inconsistent indentation", "same amount"),
    ("", "compile", 1, 1, "empty pattern", None),
    ("   # only a comment\n", "compile", 1, 1, "empty pattern", None),
    # ---- names
    ("windw(8)", "compile", 1, 1, "unknown primitive 'windw'", "did you mean 'window'?"),
    ("causal & blockd(64)", "compile", 1, 10, "unknown primitive 'blockd'", "did you mean 'blocked'?"),
    ("causal & windo", "compile", 1, 10, "unknown name 'windo'", "did you mean 'window'?"),
    ("pattern p(width = 8): window(widht)\n", "compile", 1, 30, "unknown name 'widht'", "did you mean 'width'?"),
    ("foo", "compile", 1, 1, "unknown name 'foo'", None),
    ("let N = 3\npattern p: full\n", "compile", 1, 5, "'N' is a built-in name", None),
    ("pattern p(w = 4):\n    let w = 5\n    window(w)\n", "compile", 2, 9, "'w' is already defined (line 1)", None),
    ("let A = 1\nlet A = 2\npattern p: sink(A)\n", "compile", 2, 5, "'A' is already defined", None),
    ("pattern a: causal\npattern a: full\n", "compile", 2, 9, "pattern 'a' is defined twice", "line 1"),
    ("pattern p(w = 4, w = 5): window(w)\n", "compile", 1, 18, "parameter 'w' is declared twice", None),
    # ---- arguments
    ("window(8, foo=2)", "compile", 1, 11, "window() has no parameter 'foo'", "usage: window(w)"),
    ("window(8, dilatoin=2)", "compile", 1, 11, "no parameter 'dilatoin'", "did you mean 'dilation'?"),
    ("window(8, dilation=2, dilation=3)", "compile", 1, 23, "got parameter 'dilation' twice", None),
    ("window(dilation=2, 8)", "compile", 1, 20, "positional argument after a keyword argument", None),
    ("pow2(3)", "compile", 1, 6, "pow2() takes at most 0 positional", "usage: pow2(block=b)"),
    ("window((1, 2))", "compile", 1, 8, "'left' must be an integer, got a tuple", None),
    ("window(3, dilation=(1, 2))", "compile", 1, 11, "'dilation' must be an integer, got a tuple", None),
    ("window(causal)", "compile", 1, 8, "takes numbers, not a pattern", None),
    ("sink(false)", "compile", 1, 6, "'count' must be an integer, got a boolean", None),
    ("neighborhood(3, causal=1)", "compile", 1, 17, "'causal' must be true or false", None),
    ("global(1, seed=3)", "compile", 1, 11, "takes no keyword argument 'seed', only block=", None),
    ("global(block=3)", "compile", 1, 1, "needs at least one token", None),
    ("global()", "compile", 1, 1, "global() needs at least one", None),
    ("topk(4)", "compile", 1, 1, "needs block=b", "topk(4, block=512)"),
    ("topk(block=512)", "compile", 1, 1, "topk() needs k or threshold=...", "topk(threshold=0.9, block=512)"),
    ("topk(2, block=4, shared=grop)", "compile", 1, 18, "'shared' must be one of head, group, got the name 'grop'",
     "did you mean 'group'?"),
    ("topk(2, block=4, query=1)", "compile", 1, 18, "'query' must be one of block, token, got an integer",
     "usage: topk("),
    ("topk(2, block=4, query=xyz)", "compile", 1, 18, "'query' must be one of block, token", "usage: topk("),
    ("topk(threshold=N // 2, block=4)", "compile", 1, 6, "must be a constant number such as 0.9, got 'N // 2'",
     None),
    ("topk(threshold=true, block=4)", "compile", 1, 6, "'threshold' must be a constant number", None),
    # ---- decimals where integers are expected
    ("window(1.5)", "compile", 1, 8, "window(): 'left' must be an integer, got 1.5", "usage: window"),
    ("causal & window(0.5)", "compile", 1, 17, "'left' must be an integer, got 0.5", None),
    ("let w = 1.5\npattern p: window(w)\n", "compile", 2, 19, "'left' must be an integer, got 1.5", None),
    ("window(2 * 0.5)", "compile", 1, 12, "expected a number around '*' (an integer), got 0.5", None),
    ("window(-0.5)", "compile", 1, 8, "'left' must be an integer, got -0.5", None),
    ("topk(2, block=0.5)", "compile", 1, 9, "'block' must be an integer, got 0.5", None),
    ("topk(0.5, block=4)", "compile", 1, 6, "'count' must be an integer, got 0.5", None),
    ("neighborhood((3, 0.5))", "compile", 1, 18, "tuples hold integers, got 0.5", None),
    ("global(0.5)", "compile", 1, 8, "expected a token index or a range a..b, got 0.5", None),
    ("sink(min(0.5, 2))", "compile", 1, 10, "expected an argument of min() (an integer), got 0.5", None),
    ("causal & 0.5", "compile", 1, 10, "'&' combines patterns, got 0.5", None),
    ("pattern p(t = 0.9): causal\n", "compile", 1, 15, "expected a parameter default (an integer), got 0.9", None),
    ("pattern p:\n    heads 0.5: causal\n", "compile", 2, 11, "expected a head index (an integer), got 0.5", None),
    ("min(3)", "compile", 1, 1, "min() takes two numbers", None),
    ("causal & 3", "compile", 1, 10, "'&' combines patterns, got a number", None),
    ("window(8) * 2", "compile", 1, 1, "can't apply '*' to a pattern and a number", None),
    ("window(8) + causal", "compile", 1, 1, "'+' doesn't combine patterns", "|, & and -"),
    ("3", "compile", 1, 1, "expected a pattern, got a number", None),
    ("window(3, block=h)", "compile", 1, 11, "'block' can't depend on the head index h", "per-head sections"),
    ("random(1 + h, block=4)", "compile", 1, 8, "'count' can't depend on the head index h", None),
    # ---- values
    ("window(0)", "compile", 1, 8, "size must be >= 1, got 0", "w-1 keys"),
    ("blocked(-4)", "compile", 1, 9, "size must be >= 1, got -4", None),
    ("window(2, -1)", "compile", 1, 11, "right must be >= 0, got -1", None),
    ("window(3, dilation=0)", "compile", 1, 11, "dilation must be >= 1, got 0", None),
    ("causal & sink(0)", "compile", 1, 15, "count must be >= 1, got 0", None),
    ("random(0, block=4)", "compile", 1, 8, "count must be >= 1, got 0", None),
    ("topk(0, block=4)", "compile", 1, 6, "topk: count must be >= 1, got 0", None),
    ("topk(2, block=4, threshold=1.5)", "compile", 1, 18, "topk: threshold must be in (0, 1], got 1.5",
     "threshold=0.9"),
    ("topk(threshold=0, block=4)", "compile", 1, 6, "threshold must be in (0, 1], got 0.0", None),
    ("topk(threshold=-0.25, block=4)", "compile", 1, 6, "threshold must be in (0, 1], got -0.25", None),
    ("window(3, block=0)", "compile", 1, 11, "block must be >= 1, got 0", None),
    ("global(3, block=0)", "compile", 1, 11, "global: block must be >= 1, got 0", None),
    ("sink(99999999999999999999)", "compile", 1, 6, "integer 99999999999999999999 is too large", "2**62"),
    ("sink(4611686018427387903 * 4)", "compile", 1, 6, "integer overflow", None),
    ("pattern p:\n    " + " | ".join(["causal"] * 150) + "\n", "compile", 2, 5, "nested too deeply", None),
    ("pattern p(heads = 0): causal\n", "compile", 1, 19, "number of heads must be a constant >= 1", None),
    ("pattern p(heads = N): causal\n", "compile", 1, 19, "got 'N'", None),
    ("columns(4, phase=5)", "compile", 1, 12, "phase must be in 0..3, got 5", "h % s"),
    ("global(1, 5..2)", "compile", 1, 11, "empty range 5..2", "a <= b"),
    ("global(-1)", "compile", 1, 8, "token indices must be >= 0", None),
    ("window(N // 0)", "compile", 1, 13, "division by zero", None),
    ("neighborhood(3, stride=4)", "compile", 1, 17, "stride 4 > window size 3", None),
    ("pattern g:\n    grid(8, 8)\n    neighborhood((5, 5), stride=(2, 7))\n", "compile", 3, 26,
     "stride 7 > window size 5 in dimension 1", None),
    ("pattern g:\n    grid(0, 4)\n    neighborhood((3, 3))\n", "compile", 2, 10, "grid dimensions must be >= 1", None),
    ("pattern g:\n    grid(4, h)\n    full\n", "compile", 2, 13, "grid can't depend on the head index", None),
    ("pattern g:\n    grid(4, 4)\n    grid(4, 4)\n    full\n", "compile", 3, 5, "grid is declared twice", None),
    # ---- heads
    ("pattern p:\n    heads 0..3: causal\n    heads 2..5: full\n", "compile", 3, 11, "overlap the section above",
     "start this section at head 4"),
    ("pattern p:\n    heads 0..3: causal\n    heads 5..7: full\n", "compile", 3, 11,
     "heads 4..4 are not covered", "start this section at head 4"),
    ("pattern p:\n    heads 1..3: causal\n", "compile", 2, 11, "heads 0..0 are not covered", None),
    ("pattern p:\n    heads 3..1: causal\n", "compile", 2, 11, "empty head range 3..1", None),
    ("pattern p:\n    heads N: causal\n", "compile", 2, 11, "a head index must be a constant", None),
    # ---- at mask time: lengths, grids, parameters
    ("neighborhood(5, dilation=2)", ("mask", 9, 9, None), 1, 14, "window 5 x dilation 2 = 10 exceeds the length 9",
     "smaller window"),
    ("pattern g:\n    grid(4, 4)\n    neighborhood((3, 3, 3))\n", ("mask", 16, 16, None), 3, 18,
     "3-D window on a 2-D grid", None),
    ("pattern g:\n    grid(4, 4)\n    neighborhood((3, 3))\n", ("mask", 16, 12, None), 3, 5, "needs M == N == 4 * 4",
     None),
    ("neighborhood((3, 3))", ("mask", 16, 16, None), 1, 14, "2-D window on a 1-D grid", "grid(d0, d1, ...)"),
    ("window(N - 20)", ("mask", 7, 7, None), 1, 8, "size must be >= 1, got -13", None),
    ("blocked(N // 8)", ("mask", 7, 7, None), 1, 9, "size must be >= 1, got 0", None),
    ("columns(4, phase=h)", ("mask", 8, 8, 6), 1, 12, "phase must be in 0..3, got 4", None),
    ("window(3, N // h)", ("mask", 8, 8, 2), 1, 11, "division by zero", None),
    ("causal & topk(2, block=4)", ("mask", 16, 16, None), 1, 10, "topk is routed", "pass q= and k="),
    ("pattern p(w): window(w)\n", ("mask", 8, 8, None), 1, 1, "needs a value for parameter 'w'", "bind(w="),
    (MIXED, ("mask", 8, 8, 5), 1, 1, "defines heads 0..3 but 5 heads", "heads=4"),
    ("causal", ("mask", 0, 4, None), 1, 1, "length M must be a positive integer", None),
]


def trigger(text, how):
    p = patternc.compile(text)
    if how != "compile":
        _, M, N, heads = how
        p.mask(M, N, heads)
    return p


@pytest.mark.parametrize("text,how,line,column,message,hint", CASES,
                         ids=[f"{i}-{c[4][:30]}" for i, c in enumerate(CASES)])
def test_error(text, how, line, column, message, hint):
    with pytest.raises(PatternError) as info:
        trigger(text, how)
    e = info.value
    assert message in e.message, e.message
    assert (e.line, e.column) == (line, column), str(e)
    if hint is not None:
        assert e.hint and hint in e.hint, e.hint
    check_report(e)


def test_there_are_enough_cases():
    assert len(CASES) >= 25
    assert len({c[0] for c in CASES}) == len(CASES), "no case twice"


def test_report_format():
    with pytest.raises(PatternError) as info:
        patternc.compile("let W = 1024\n\npattern swa(w = W):\n    causal & windw(w)\n")
    assert str(info.value) == (
        "<pattern>:4:14: error: unknown primitive 'windw'\n"
        "        causal & windw(w)\n"
        "                 ^~~~~\n"
        "hint: did you mean 'window'?")
    e = info.value
    assert (e.filename, e.line, e.column, e.hint) == ("<pattern>", 4, 14, "did you mean 'window'?")
    assert isinstance(e, ValueError)


def test_errors_without_a_location():
    with pytest.raises(PatternError) as info:
        patternc.compile("pattern a: causal\npattern b: full\n")
    assert str(info.value).startswith("error: the text defines 2 patterns (a, b)")
    assert info.value.line is None and "hint: " in str(info.value)
    with pytest.raises(PatternError, match="no pattern named 'c'"):
        patternc.compile("pattern a: causal\npattern b: full\n", name="c")
    with pytest.raises(PatternError, match="pass both q= and k="):
        patternc.compile("causal & topk(2, block=4)").mask(8, q=torch.zeros(1, 8, 4))
    with pytest.raises(PatternError, match="q has 2 heads but the mask has 3"):
        patternc.compile("topk(2, block=4)").mask(8, heads=3, q=torch.ones(2, 8, 4), k=torch.ones(2, 8, 4))


REPORT = re.compile(r"^(?P<file>[^\n]+):(?P<line>\d+):(?P<col>\d+): error: (?P<msg>[^\n]+)\n"
                    r" {4}(?P<src>[^\n]*)\n {4}(?P<caret> *\^~*)(\nhint: [^\n]+)?$")


def check_report(e: PatternError):
    """`str(e)` is `file:line:col: error: msg`, the source line, a caret line (and `hint: ...`)."""
    text = str(e)
    assert text == e.format()
    if e.span is None:
        assert text.startswith("error: ")
        return
    source_line = e.span.source.line(e.line)
    if not source_line:  # nothing to quote (e.g. the error is on an empty line)
        assert text.startswith(f"{e.filename}:{e.line}:{e.column}: error: {e.message}")
        return
    m = REPORT.match(text)
    assert m, text
    assert (m["file"], int(m["line"]), int(m["col"]), m["msg"]) == (e.filename, e.line, e.column, e.message)
    assert m["src"] == source_line
    assert m["caret"].index("^") == e.column - 1
    assert e.column <= len(source_line) + 1


# --------------------------------------------------------------------------- fuzzing

WORDS = sorted(REGISTRY) + ["pattern", "let", "heads", "grid", "true", "false", "N", "M", "h", "min", "max",
                            "w", "x", "windw", "dilation", "block", "phase", "seed", "stride", "causal", "size",
                            "threshold", "shared", "query", "group", "token"]
PUNCT = ["(", ")", ",", ":", "=", "|", "&", "-", "+", "*", "//", "%", "..", "#", "\\\n", "\n", "\n    ", "\n  ",
         "\t", " ", "(", ")", "$", "^", "'", ".", "/", "<", "1.5", "0.5"]
TOKENS = st.one_of(st.sampled_from(WORDS), st.sampled_from(PUNCT),
                   st.integers(-3, 300).map(str), st.just(" "))


def only_pattern_errors(text, also_mask=True):
    """compile() (and a small mask of what compiles) may raise PatternError and nothing else."""
    try:
        p = patternc.compile(text)
    except PatternError as e:
        check_report(e)
        return
    except Exception as e:  # noqa: BLE001 - any other exception is the bug being hunted
        pytest.fail(f"compile({text!r}) raised {type(e).__name__}: {e}")
    if not also_mask:
        return
    try:
        str(p)
        kw = {}
        if p.is_routed:
            kw = dict(q=torch.randn(p.default_heads, 12, 4), k=torch.randn(p.default_heads, 12, 4))
        m = p.mask(12, 12, **kw)
        assert m.dtype == torch.bool and m.shape[1:] == (12, 12)
    except PatternError as e:
        check_report(e)
    except Exception as e:  # noqa: BLE001
        pytest.fail(f"compile({text!r}).mask(12) raised {type(e).__name__}: {e}")


@settings(max_examples=examples(1200))
@given(tokens=st.lists(TOKENS, max_size=14))
def test_fuzz_token_sequences(tokens):
    only_pattern_errors("".join(t if t in PUNCT else f" {t}" for t in tokens).strip(" "))


@settings(max_examples=examples(600))
@given(body=st.lists(TOKENS, min_size=1, max_size=10), name=st.sampled_from(["p", "swa", "causal"]),
       params=st.sampled_from(["", "(w = 4)", "(w)", "(heads = 4, w = N // 2)"]), sections=st.booleans())
def test_fuzz_inside_a_pattern(body, name, params, sections):
    expr = " ".join(body)
    lines = ["let x = 3", f"pattern {name}{params}:"]
    lines += [f"    heads 0..1: {expr}", "    heads 2..3: causal"] if sections else [f"    {expr}"]
    only_pattern_errors("\n".join(lines) + "\n")


@settings(max_examples=examples(600))
@given(text=st.text(alphabet=st.sampled_from(list("causlwindo()[]{},:=|&-+*/%.#\n\t 0123456789hNMkpt_\\\"'$^é\x00")),
                    max_size=40))
def test_fuzz_random_text(text):
    only_pattern_errors(text)


@settings(max_examples=examples(300))
@given(data=st.data())
def test_fuzz_calls(data):
    """Every primitive with random argument lists: type and value errors, never a crash."""
    name = data.draw(st.sampled_from(sorted(REGISTRY)))
    value = st.one_of(st.integers(-3, 20).map(str), st.sampled_from(["N", "h", "N // 2", "h % 4", "true", "(2, 3)",
                                                                      "(1,)", "causal", "1..4", "M - 30", "x",
                                                                      "0.5", "group", "token", "head", "block"]))
    args = data.draw(st.lists(value, max_size=3))
    keys = ["block", "dilation", "stride", "seed", "phase", "causal", "size", "left", "right", "count", "period",
            "tokens", "threshold", "shared", "query", "bogus"]
    kwargs = data.draw(st.dictionaries(st.sampled_from(keys), value, max_size=3))
    call = f"{name}({', '.join(args + [f'{k}={v}' for k, v in kwargs.items()])})"
    only_pattern_errors(f"let x = 2\npattern p:\n    {call}\n")
    only_pattern_errors(f"pattern g:\n    grid(3, 4)\n    {call}\n")


SEEDS = [
    "causal & window(1024)",
    "causal & (window(N // 8 + 1) | sink(4)) - (strided(3) & columns(5, phase=h % 5))",
    "let W = 16\n\npattern swa(w = W):   # a comment\n    causal & (window(w) | sink(4))\n",
    "pattern s2(heads = 16):\n    causal & (window(256) | columns(16, phase = h % 16))\n",
    "pattern video:\n    grid(4, 3, 1)\n    neighborhood((3, 3, 1), dilation = (1, 1, 1))\n",
    "pattern mixed:\n    heads 0..7:  causal & window(512)\n"
    "    heads 8..15: causal & (window(256) | pow2(block = 128) | sink(128))\n",
    "causal & (window(5, block=2) | pow2(block=2) | sink(1, block=2))",
    "global(0, 3..5, N - 1) | random(2, block=4, seed=7) - blocked(N // 3 + 1)",
    "causal & topk(2, block=4)",
    "causal & topk(threshold=0.5, block=4, shared=group, query=token)",
    "neighborhood(3, stride=2, dilation=2, causal=true) & strided(2)",
    "pattern p(a = 2, b = N // 4):\n    let c = min(a, b)\n    window(c, max(a, 1), dilation = 1 + h % 2)\n",
]
_TOKEN_RE = re.compile(r"\s+|[A-Za-z_][A-Za-z_0-9]*|\d+\.\d+|\d+|//|\.\.|.", re.S)


@settings(max_examples=examples(800))
@given(seed=st.sampled_from(SEEDS), edits=st.lists(st.tuples(st.sampled_from(["delete", "insert", "replace", "swap"]),
                                                             st.integers(0, 200), TOKENS), min_size=1, max_size=3))
def test_fuzz_mutated_patterns(seed, edits):
    """Valid patterns with a few tokens deleted, inserted, replaced or swapped."""
    toks = _TOKEN_RE.findall(seed)
    for kind, at, tok in edits:
        i = at % (len(toks) + (kind == "insert"))
        if kind == "delete" and toks:
            del toks[i]
        elif kind == "insert":
            toks.insert(i, tok)
        elif kind == "replace" and toks:
            toks[i] = tok
        elif kind == "swap" and i + 1 < len(toks):
            toks[i], toks[i + 1] = toks[i + 1], toks[i]
    only_pattern_errors("".join(toks))


def test_seeds_are_valid():
    for text in SEEDS:
        p = patternc.compile(text, w=4) if "(w)" in text else patternc.compile(text)
        assert p is not None
