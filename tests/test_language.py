"""The language surface: printing round-trips, compile() and load(), parameters and bind().

`str(pattern)` is canonical pattern text: `patternc.compile(str(p)) == p`, printing is a fixed
point, and the re-parsed pattern has the same mask. Random patterns come from a hypothesis
grammar of the language (symbolic parameters, nested `| & -`, grids, sections, params, lets).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st

import patternc
from patternc import PatternError
from patternc.ir.expr import Term
from patternc.primitives import Context

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# --------------------------------------------------------------------------- a grammar of valid pattern text


def ints(lo, hi):
    return st.integers(lo, hi).map(str)


@st.composite
def nonneg(draw, names=(), depth=2, heads=True):
    """An integer expression that is >= 0 for all lengths >= 1, heads >= 0 and params >= 0
    (`heads=False`: the same on every head, for block sizes and table parameters)."""
    syms = "NMh" if heads else "NM"
    atoms = [ints(0, 12), st.sampled_from(list(syms)),
             st.builds(lambda v, c: f"{v} // {c}", st.sampled_from(syms), st.integers(1, 9)),
             st.builds(lambda v, c: f"{v} % {c}", st.sampled_from(syms), st.integers(1, 9))]
    if names:
        atoms.append(st.sampled_from(sorted(names)))
    if depth == 0 or draw(st.integers(0, 2)):
        return draw(st.one_of(atoms))
    a, b = draw(nonneg(names, depth - 1, heads)), draw(nonneg(names, depth - 1, heads))
    form = draw(st.sampled_from(["+", "*", "min", "max", "paren", "mod"]))
    if form == "+":
        return f"{a} + {b}"
    if form == "*":
        return f"({a}) * {draw(st.integers(0, 3))}"
    if form == "mod":
        return f"({a}) % {draw(st.integers(1, 7))}"
    if form == "paren":
        return f"({a})"
    return f"{form}({a}, {b})"


@st.composite
def positive(draw, names=(), heads=True):
    return f"1 + {draw(nonneg(names, heads=heads))}" if draw(st.booleans()) else draw(ints(1, 40))


@st.composite
def primitive(draw, names=(), routed=True, local=True):
    """A primitive call with random (often symbolic) parameters."""
    kinds = ["full", "causal", "window", "window2", "blocked", "strided", "columns", "pow2", "sink", "global",
             "random"] + (["topk"] if routed else []) + (["neighborhood"] if local else [])
    kind = draw(st.sampled_from(kinds))
    pos, num = (lambda: draw(positive(names))), (lambda: draw(nonneg(names)))
    fixed = (lambda: draw(positive(names, heads=False)))  # the same on every head
    block = (lambda: f", block={fixed()}" if draw(st.integers(0, 3)) == 0 else "")
    if kind in ("full", "pow2"):
        b = block()
        return f"{kind}({b[2:]})" if b else kind
    if kind == "causal":
        b = block()
        return f"causal({b[2:]})" if b else "causal"
    if kind == "window":
        dil = f", dilation={pos()}" if draw(st.booleans()) else ""
        return f"window({pos()}{dil}{block()})"
    if kind == "window2":
        dil = f", dilation={pos()}" if draw(st.booleans()) else ""
        return f"window({num()}, {num()}{dil}{block()})"
    if kind in ("blocked", "strided", "sink"):
        return f"{kind}({pos()}{block()})"
    if kind == "columns":
        s = draw(st.integers(1, 16))
        phase = draw(st.sampled_from(["", f", phase=h % {s}", f", phase={draw(st.integers(0, s - 1))}",
                                      f", phase=({num()}) % {s}"]))
        return f"columns({s}{phase}{block()})"
    if kind == "global":
        items = draw(st.lists(st.one_of(nonneg(names), st.builds(lambda a, c: f"{a}..{a} + {c}", nonneg(names),
                                                                 st.integers(0, 9))), min_size=1, max_size=3))
        return f"global({', '.join(items)})"
    if kind == "random":
        seed = f", seed={draw(st.integers(0, 99))}" if draw(st.booleans()) else ""
        return f"random({fixed()}, block={fixed()}{seed})"
    if kind == "topk":  # k or threshold= (or both), the keywords in any order
        count = [str(draw(st.integers(1, 5)))] if draw(st.integers(0, 2)) else []
        keywords = [f"block={draw(st.integers(1, 9))}"]
        if not count or draw(st.booleans()):
            keywords.append(f"threshold={draw(st.sampled_from(['0.5', '0.9', '1', '0.25', '1.0', '0.333']))}")
        for name, choices in (("shared", ["head", "group"]), ("query", ["block", "token"])):
            if draw(st.booleans()):
                keywords.append(f"{name}={draw(st.sampled_from(choices))}")
        return f"topk({', '.join(count + draw(st.permutations(keywords)))})"
    # 1-D neighborhood: small constants, valid for N >= 8
    K = draw(st.integers(1, 4))
    args = [str(K)]
    if draw(st.booleans()):
        args.append(f"stride={draw(st.integers(1, K))}")
    if draw(st.booleans()):
        args.append(f"dilation={draw(st.integers(1, 2))}")
    if draw(st.booleans()):
        args.append(f"causal={draw(st.sampled_from(['true', 'false']))}")
    return f"neighborhood({', '.join(args)})"


@st.composite
def pattern_expr(draw, names=(), depth=3, routed=True):
    if depth == 0 or draw(st.integers(0, 2)) == 0:
        return draw(primitive(names, routed))
    a, b = draw(pattern_expr(names, depth - 1, routed)), draw(pattern_expr(names, depth - 1, routed))
    op = draw(st.sampled_from("|&-"))
    wrap = draw(st.sampled_from(["none", "left", "right", "both"]))
    if wrap in ("left", "both"):
        a = f"({a})"
    if wrap in ("right", "both") or op == "-" and " " in b:
        b = f"({b})"  # keep `a - (b | c)` what it says; precedence itself is tested in test_masks
    return f"{a} {op} {b}"


@st.composite
def pattern_file(draw):
    """(text, names): lets, then 1-3 patterns with params, defaults, body lets and sections."""
    lines, lets = [], []
    for i in range(draw(st.integers(0, 2))):
        name = f"L{i}"
        lines.append(f"let {name} = {draw(nonneg(tuple(lets), heads=False))}")  # names may size blocks
        lets.append(name)
    names = []
    for i in range(draw(st.integers(1, 3))):
        pname = draw(st.sampled_from(["swa", "mix", "p", "llm_1", f"pat{i}"])) + f"_{i}"
        params = {f"w{j}": draw(nonneg(tuple(lets), heads=False)) for j in range(draw(st.integers(0, 2)))}
        header = f"pattern {pname}"
        if params or draw(st.booleans()):
            header += "(" + ", ".join(f"{n} = {d}" for n, d in params.items()) + ")"
        scope = tuple(lets) + tuple(params)
        body = []
        if draw(st.booleans()):
            body.append(f"let B{i} = {draw(nonneg(scope, heads=False))}")
            scope += (f"B{i}",)
        if draw(st.integers(0, 3)) == 0:
            cut, top = draw(st.integers(0, 3)), draw(st.integers(1, 3))
            body.append(f"heads 0..{cut}: {draw(pattern_expr(scope, 2))}")
            if draw(st.booleans()):
                body.append(f"heads {cut + 1}: {draw(pattern_expr(scope, 2))}")
                cut += 1
            body.append(f"heads {cut + 1}..{cut + top}: {draw(pattern_expr(scope, 2))}")
        else:
            body.append(draw(pattern_expr(scope)))
        if len(body) == 1 and draw(st.booleans()):
            lines.append(f"{header}: {body[0]}")  # the one-line form
        else:
            lines.append(f"{header}:" + ("   # a comment" if draw(st.booleans()) else ""))
            lines += ["    " + b for b in body]
        lines.append("")
        names.append(pname)
    return "\n".join(lines) + "\n", names


# --------------------------------------------------------------------------- checking a round trip


def qk(H, M, N, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(H, M, 8, generator=g), torch.randn(H, N, 8, generator=g)


def mask_or_error(p, M, N, H):
    try:
        kw = dict(zip("qk", qk(H, M, N))) if p.is_routed else {}
        return p.mask(M, N, None if isinstance(p.body, tuple) else H, **kw).numpy()
    except PatternError as e:
        return e.message


def assert_round_trip(p, M, N, H):
    text = str(p)
    again = patternc.compile(text)
    assert again == p, f"{text!r} reads back as {str(again)!r}"
    assert str(again) == text, "printing is a fixed point"
    a, b = mask_or_error(p, M, N, H), mask_or_error(again, M, N, H)
    if isinstance(a, str) or isinstance(b, str):
        assert a == b
    else:
        assert np.array_equal(a, b)
    return a


@settings(max_examples=examples(150))
@given(text=pattern_expr(), M=st.integers(8, 48), extra=st.integers(0, 16), H=st.integers(1, 3))
def test_expression_round_trip(text, M, extra, H):
    p = patternc.compile(text)
    N = M if "neighborhood" in text else M + extra
    assert_round_trip(p, M, N, H)


@settings(max_examples=examples(80))
@given(case=pattern_file(), M=st.integers(8, 40), H=st.integers(1, 3))
def test_file_round_trip(case, M, H):
    text, names = case
    for name in names:
        p = patternc.compile(text, name=name)
        assert p.name == name
        assert_round_trip(p, M, M, H)
    # whole files also round-trip pattern by pattern through one text
    joined = "\n\n".join(str(patternc.compile(text, name=n)) for n in names) + "\n"
    for name in names:
        assert patternc.compile(joined, name=name) == patternc.compile(text, name=name)


@settings(max_examples=examples(40))
@given(grid=st.lists(st.integers(2, 7), min_size=2, max_size=3), data=st.data())
def test_grid_round_trip(grid, data):
    K = [data.draw(st.integers(1, L)) for L in grid]
    s = [data.draw(st.integers(1, k)) for k in K]
    r = [data.draw(st.integers(1, L // k)) for L, k in zip(grid, K)]
    tup = lambda v: "(" + ", ".join(map(str, v)) + ")"
    causal = ", causal=true" if data.draw(st.booleans()) else ""
    text = f"pattern g:\n    grid({', '.join(map(str, grid))})\n" \
           f"    neighborhood({tup(K)}, stride={tup(s)}, dilation={tup(r)}{causal})\n"
    p = patternc.compile(text)
    assert p.grid is not None and len(p.grid) == len(grid)
    P = math.prod(grid)
    m = assert_round_trip(p, P, P, 1)
    assert not isinstance(m, str) and m.any()


def test_printing_examples():
    cases = {
        "causal & window(1024)": "causal & window(1024)",
        "causal&(window(N//4)|sink(4))": "causal & (window(N // 4) | sink(4))",
        "window(3, 3)": "window(4)",
        "window(2, 5, dilation = 1)": "window(2, 5)",
        "columns(16, phase = 15)": "columns(16)",
        "columns(16, phase = h % 16, block = 64)": "columns(16, phase=h % 16, block=64)",
        "random(2, seed=0, block=4)": "random(2, block=4)",
        "random(2, seed=7, block=4)": "random(2, block=4, seed=7)",
        "topk(4, block=512) & causal": "topk(4, block=512) & causal",
        "topk(4, block=512, threshold=0.90, shared=head, query=block)": "topk(4, block=512, threshold=0.9)",
        "topk(query=token, threshold=1, block=64)": "topk(block=64, threshold=1.0, query=token)",
        "topk(count=2, block=8, shared=group)": "topk(2, block=8, shared=group)",
        "topk(threshold=0.000_01, block=8)": "topk(block=8, threshold=0.00001)",
        "topk(threshold=(0.5), block=8)": "topk(block=8, threshold=0.5)",
        "global(0, 5..9, N - 1)": "global(0, 5..9, N - 1)",
        "(full) - (sink(2) | causal)": "full - (sink(2) | causal)",
        "(full - sink(2)) - causal": "full - sink(2) - causal",
        "full - (sink(2) - causal)": "full - (sink(2) - causal)",
        "(causal | sink(1)) & window(4)": "(causal | sink(1)) & window(4)",
        "causal | (sink(1) & window(4))": "causal | sink(1) & window(4)",
        "neighborhood((3,), stride=(1,), dilation = 2)": "neighborhood((3,), stride=(1,), dilation=2)",
        "window(N - 1 - 1 + 2)": "window(N)",
        "window(-(1 - N))": "window(-(1 - N))",
        "sink(2 * (N // 3) - -1)": "sink(2 * (N // 3) - -1)",
        "sink(min(N, 4) + max(1, M % 3))": "sink(min(N, 4) + max(1, M % 3))",
    }
    for text, want in cases.items():
        p = patternc.compile(text)
        assert str(p) == want, (text, str(p))
        assert patternc.compile(want) == p


def test_design_examples_round_trip():
    text = (EXAMPLES / "design.pat").read_text()
    pats = patternc.load(EXAMPLES / "design.pat")
    assert set(pats) == {"swa", "s2", "video", "mixed"}
    for p in pats.values():
        assert patternc.compile(str(p)) == p
    assert str(pats["swa"]) == "pattern swa(w = 1024):\n    causal & (window(w) | sink(4))"
    assert pats["video"].grid is not None and "neighborhood((3, 11, 11), dilation=(1, 2, 2))" in str(pats["video"])
    assert "let W = 1024" in text
    video, S = pats["video"], 16 * 48 * 48
    rows = np.random.default_rng(1).choice(S, 12, replace=False)
    check_neighborhood_rows(rows, rows_of(video, S, rows)[0], (16, 48, 48), (3, 11, 11), (1, 2, 2), (1, 1, 1))
    m = pats["mixed"].mask(700).numpy()
    assert m.shape[0] == 16 and not np.array_equal(m[0], m[15])


# --------------------------------------------------------------------------- compile(), load(), bind()

FILE = """\
let W = 8
# a comment line between statements

pattern swa(w = W):                 # Mistral-style window with StreamingLLM sinks
    causal & (window(w) | sink(2))

pattern bi(left = 2, right = 3): window(left, right)

pattern needs(w):
    window(w)

pattern mixed:
    heads 0..1: causal & window(4)
    heads 2..3: causal & sink(1)
"""


def test_bare_body_and_whole_file_agree():
    bare = patternc.compile("causal & (window(8) | sink(2))")
    named = patternc.compile(FILE, name="swa")
    assert bare.name is None and named.name == "swa"
    assert bare != named  # names count
    assert torch.equal(bare.mask(40), named.mask(40))
    assert patternc.compile("pattern p: causal") == patternc.compile("pattern p:\n    causal\n")
    assert bare == patternc.compile("  causal & (window(8) | sink(2))  # trailing comment\n")
    # a bare body may have lets of its own
    assert torch.equal(patternc.compile("let x = 8\ncausal & (window(x) | sink(2))").mask(40), bare.mask(40))


def test_indented_text_from_triple_quoted_strings():
    body = patternc.compile("""
        causal & (window(8) | sink(2))
    """)
    assert body == patternc.compile("causal & (window(8) | sink(2))")
    text = """
        let W = 8

        pattern swa(w = W):     # a comment
            causal & (window(w) | sink(2))

        pattern other: full
    """
    assert patternc.compile(text, name="swa") == patternc.compile(FILE, name="swa")
    with pytest.raises(PatternError, match="inconsistent indentation") as e:
        patternc.compile("\n    causal\n  & window(3)\n")
    assert (e.value.line, e.value.column) == (3, 3)


def test_name_selection():
    assert patternc.compile(FILE, name="bi").params == (("left", Term.const(2)), ("right", Term.const(3)))
    with pytest.raises(PatternError, match="defines 4 patterns") as e:
        patternc.compile(FILE)
    assert "name=" in e.value.message
    with pytest.raises(PatternError, match="no pattern named 'sw'") as e:
        patternc.compile(FILE, name="sw")
    assert e.value.hint == "did you mean 'swa'?"
    assert patternc.compile("pattern only: causal\n").name == "only"


def test_params_defaults_overrides_and_bind():
    q, k = np.arange(40)[:, None], np.arange(40)[None, :]
    swa = patternc.compile(FILE, name="swa")
    want = lambda w: (k <= q) & ((q - k <= w - 1) | (k < 2))
    assert np.array_equal(swa.mask(40)[0].numpy(), want(8))
    assert np.array_equal(patternc.compile(FILE, name="swa", w=3).mask(40)[0].numpy(), want(3))
    assert swa.bind(w=3) == patternc.compile(FILE, name="swa", w=3)
    assert str(swa.bind(w=3)) == "pattern swa(w = 3):\n    causal & (window(w) | sink(2))"
    assert swa.bind(w=3).bind(w=8) == swa
    bi = patternc.compile(FILE, name="bi", right=0)
    assert np.array_equal(bi.mask(40)[0].numpy(), (q - k <= 2) & (q - k >= 0))
    needs = patternc.compile(FILE, name="needs")
    with pytest.raises(PatternError, match="needs a value for parameter 'w'") as e:
        needs.mask(16)
    assert "bind(w=" in e.value.hint
    assert np.array_equal(needs.bind(w=2).mask(16)[0].numpy(), (abs(np.arange(16)[:, None] - np.arange(16)) <= 1))
    with pytest.raises(PatternError, match="has no parameter 'ww'") as e:
        swa.bind(ww=3)
    assert e.value.hint == "did you mean 'w'?"
    with pytest.raises(PatternError, match="must be an integer"):
        swa.bind(w=True)
    with pytest.raises(PatternError, match="must be an integer"):
        swa.bind(w=2.5)
    with pytest.raises(PatternError, match="no parameter"):
        patternc.compile("causal", w=3)


def test_load_all_example_files():
    files = sorted(EXAMPLES.glob("*.pat"))
    assert {f.name for f in files} >= {"llm.pat", "routed.pat", "vision.pat", "design.pat"}
    for f in files:
        pats = patternc.load(f)
        assert pats, f
        for name, p in pats.items():
            assert p.name == name and p.source.filename == str(f)
            assert patternc.compile(str(p)) == p, name


def test_load_errors_carry_the_file_name(tmp_path):
    bad = tmp_path / "bad.pat"
    bad.write_text("pattern a:\n    causal & windw(8)\n")
    with pytest.raises(PatternError) as e:
        patternc.load(bad)
    assert (e.value.filename, e.value.line, e.value.column) == (str(bad), 2, 14)
    assert str(e.value).startswith(f"{bad}:2:14: error: unknown primitive 'windw'")
    with pytest.raises(PatternError, match="can't read"):
        patternc.load(tmp_path / "missing.pat")
    bare = tmp_path / "bare.pat"
    bare.write_text("causal & window(4)\n")
    assert list(patternc.load(bare)) == ["bare"]


def test_combining_patterns_in_python():
    a, b = patternc.compile("causal"), patternc.compile("window(4)")
    for combined, op in ((a | b, np.logical_or), (a & b, np.logical_and), (a - b, lambda x, y: x & ~y)):
        assert np.array_equal(combined.mask(20).numpy(), op(a.mask(20).numpy(), b.mask(20).numpy()))
        assert patternc.compile(str(combined)) == combined
    with pytest.raises(PatternError, match="per-head sections"):
        patternc.compile(FILE, name="mixed") | a


def test_compile_rejects_non_text():
    with pytest.raises(PatternError, match="must be a str"):
        patternc.compile(b"causal")


# --------------------------------------------------------------------------- the benchmark suite's patterns
# name -> (file, the suite's math column as numpy over q, k [, h], a length that crosses its boundaries)


def _power(q, k, h):
    D = q // 256 - k // 256
    return (q - k >= 0) & ((D < 5) | (D & (D - 1) == 0) | (k < 256))


SUITE = {
    "causal": ("llm.pat", lambda q, k, h: k <= q, 300),
    "swa": ("llm.pat", lambda q, k, h: (q - k >= 0) & (q - k < 1024), 1100),
    "swa_bi": ("llm.pat", lambda q, k, h: abs(q - k) <= 1023, 1100),
    "blocked": ("llm.pat", lambda q, k, h: q // 1024 == k // 1024, 2100),
    "dilated": ("llm.pat", lambda q, k, h: (q - k >= 0) & ((q - k) % 4 == 0) & (q - k <= 4 * 1023), 4200),
    "strided": ("llm.pat", lambda q, k, h: (q - k >= 0) & ((q - k < 256) | ((q - k) % 256 == 0)), 800),
    "power": ("llm.pat", _power, 2600),
    "sinks": ("llm.pat", lambda q, k, h: (q - k >= 0) & ((q - k < 1024) | (k < 4)), 1100),
    "s2": ("llm.pat", lambda q, k, h: (q - k >= 0) & ((q - k < 512) | ((k // 64) % 16 == h % 16)), 640),
}


def rows_of(p, S, rows, heads=1):
    """`p`'s reference rule for some query rows at length S (the full mask would not fit)."""
    ctx = Context(S, S, torch.arange(heads).view(-1, 1, 1), p.grid_shape(S, S))
    q = torch.as_tensor(rows).view(1, -1, 1)
    k = torch.arange(S).view(1, 1, S)
    return torch.as_tensor(p.expr.visible(ctx, q, k)).expand(heads, len(rows), S).numpy()


@pytest.mark.parametrize("name", sorted(SUITE))
def test_suite_pattern_matches_its_math(name):
    file, math_, S = SUITE[name]
    p = patternc.load(EXAMPLES / file)[name]
    H = p.default_heads
    assert H == (16 if name == "s2" else 1)
    m = p.mask(S).numpy()
    q, k = np.arange(S)[:, None], np.arange(S)[None, :]
    want = np.stack([math_(q, k, h) for h in range(H)])
    assert m.any() and not m.all()
    assert np.array_equal(m, want), f"{name}: {int((m != want).sum())} entries differ"
    # and at the suite's own length 8192, on a sample of rows
    rows = np.random.default_rng(0).choice(8192, 24, replace=False)
    got = rows_of(p, 8192, rows, H)
    qk_ = rows[:, None], np.arange(8192)[None, :]
    assert np.array_equal(got, np.stack([math_(*qk_, h) for h in range(H)]))


def test_suite_moba():
    p = patternc.load(EXAMPLES / "routed.pat")["moba"]
    assert p.is_routed
    S, H, b = 3072, 2, 512
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(H, S, 16, generator=g), torch.randn(H, S, 16, generator=g)
    m = p.mask(S, q=q, k=k).numpy()
    qi, ki = np.arange(S)[:, None], np.arange(S)[None, :]
    assert not (m & (ki > qi)).any(), "causal"
    qbar = q.view(H, S // b, b, 16).mean(2)
    kbar = k.view(H, S // b, b, 16).mean(2)
    scores = (qbar @ kbar.transpose(1, 2)).numpy()
    for h in range(H):
        for Q in range(S // b):
            blocks = [K for K in range(S // b) if m[h, Q * b + b - 1, K * b]]
            earlier = sorted(range(Q), key=lambda K: (-scores[h, Q, K], K))[:3]
            assert blocks == sorted([Q, *earlier])  # own block + the top-3 earlier ones


def _box(x, L, K, r=1):
    """NATTEN's window along one axis: coordinates of the keys of x (border-shifted)."""
    g, pos = x % r, x // r
    Lg = len(range(g, L, r))
    start = min(max(pos - K // 2, 0), Lg - K)
    return {g + r * (start + j) for j in range(K)}


def check_neighborhood_rows(rows, got, grid, K, r, stride):
    """Each row: the box of prod(K) keys around the stride group's leader (border-shifted, dilated)."""
    assert (got.sum(1) == math.prod(K)).all(), "exactly prod(size) keys per query"
    for row, x in zip(got, rows):
        cq = np.unravel_index(x, grid)
        # strided: the group's leader, the centre of the stride group, decides the window
        lead = [min(c // s * s + s // 2, L - 1) for c, s, L in zip(cq, stride, grid)]
        want = np.ones(grid, bool)
        for i, L in enumerate(grid):
            axis = np.zeros(L, bool)
            axis[sorted(_box(lead[i], L, K[i], r[i]))] = True
            want &= axis.reshape([-1 if j == i else 1 for j in range(len(grid))])
        assert np.array_equal(row.reshape(grid), want), cq


@pytest.mark.parametrize("name,grid,K,r,stride,small", [
    ("natten2d", (128, 128), (13, 13), (1, 1), (1, 1), (20, 17)),
    ("natten2d_dil", (128, 128), (7, 7), (2, 2), (1, 1), (16, 19)),
    ("gna3d", (16, 32, 32), (8, 16, 16), (1, 1, 1), (4, 8, 8), (9, 17, 18)),
])
def test_suite_vision_patterns(name, grid, K, r, stride, small):
    p = patternc.load(EXAMPLES / "vision.pat")[name]
    S = math.prod(grid)
    assert p.grid_shape(S, S) == grid
    # at the suite's size, on a sample of rows (the corners included)
    rng = np.random.default_rng(0)
    rows = np.array([0, S - 1, grid[-1] - 1, S - grid[-1]] + rng.choice(S, 20, replace=False).tolist())
    check_neighborhood_rows(rows, rows_of(p, S, rows)[0], grid, K, r, stride)
    # the same pattern text on a small grid, every row of the reference mask
    text = str(p).replace(f"grid({', '.join(map(str, grid))})", f"grid({', '.join(map(str, small))})")
    n = math.prod(small)
    m = patternc.compile(text).mask(n)[0].numpy()
    check_neighborhood_rows(np.arange(n), m, small, K, r, stride)
