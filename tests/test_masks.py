"""The reference semantics (`Pattern.mask`) against independent definitions.

Every textual primitive of the registry has its own file, tests/test_primitive_<name>.py, with a
plain-numpy definition written from DESIGN.md's language table (`case`, see tests/reference.py)
and its own edge cases. Here the generic checks run over every such definition, found by
file name: the primitive alone for random parameters and lengths, on blocks (`block=b`),
combined with `| & -`, in per-head sections; and the default heads.
"""
from __future__ import annotations

import numpy as np
import pytest
from conftest import examples
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from reference import (idx, leaf_case, mask_of, on_blocks, per_head, positions, primitive_tests, references, same,
                       with_block)

import patternc
from patternc.primitives import REGISTRY

MAXLEN = 96
CASES = references()  # primitive name -> case(), from tests/test_primitive_<name>.py

lengths = st.integers(1, MAXLEN)


def test_every_registered_primitive_has_a_reference_file():
    files = primitive_tests()
    textual = {name for name, cls in REGISTRY.items() if cls.textual}  # not jit's predicate
    missing = sorted(textual - files.keys())
    assert not missing, (
        f"primitives without an independent reference: {missing}; add tests/test_primitive_<name>.py defining "
        "case(), a hypothesis strategy of (text, reference(M, N, H) -> numpy bool [H, M, N]) written from the "
        "language table, not from patternc (or `case = None` with a comment why, and tests of its own)")
    stray = sorted(files.keys() - textual)
    assert not stray, f"tests/test_primitive_<name>.py for names that are no registered primitive: {stray}"
    for name, module in files.items():
        assert hasattr(module, "case"), f"{module.__file__}: define case() (or `case = None` with a comment why)"
        if module.case is None:
            assert any(n.startswith("test_") for n in vars(module)), \
                f"{module.__file__}: `case = None` needs tests of its own that compare {name} with a reference"


@pytest.mark.parametrize("name", sorted(CASES))
@settings(max_examples=examples(200))
@given(data=st.data(), M=lengths, N=lengths, H=st.integers(1, 3))
def test_primitive_matches_its_definition(name, data, M, N, H):
    text, ref = data.draw(CASES[name]())
    same(mask_of(text, M, N, H), ref(M, N, H), text)


@pytest.mark.parametrize("name", sorted(n for n in CASES if REGISTRY[n].blockable))
@settings(max_examples=examples(120))
@given(data=st.data(), M=lengths, N=lengths, b=st.integers(1, 16))
def test_block_applies_the_rule_to_block_indices(name, data, M, N, b):
    text, ref = data.draw(CASES[name]())
    text = with_block(text, b)
    same(mask_of(text, M, N, 2), on_blocks(ref, b)(M, N, 2), text)


def test_block_examples_by_hand():
    # window(2, block=2): blocks 0..3 of 2 tokens, block distance <= 1
    m = mask_of("window(2, block=2)", 8)[0]
    want = np.array([[abs(q // 2 - k // 2) <= 1 for k in range(8)] for q in range(8)])
    same(m, want, "window(2, block=2)")
    # columns(4, phase=h % 4, block=3): head h sees key blocks K with K % 4 == h % 4
    m = mask_of("columns(4, phase=h % 4, block=3)", 30, 30, 5)
    for h in range(5):
        assert m[h, 7].tolist() == [(k // 3) % 4 == h % 4 for k in range(30)]
    # causal on blocks of positions with M != N: queries at positions 8..12 are in blocks 2, 2, 2, 2, 3
    m = mask_of("causal(block=4)", 5, 13)[0]
    assert m.sum(1).tolist() == [12, 12, 12, 12, 13]
    # ... and where 4 doesn't divide N - M: positions 7..9 are in blocks 1, 2, 2 (not one block)
    m = mask_of("causal(block=4)", 3, 10)[0]
    assert m.sum(1).tolist() == [8, 10, 10]


@settings(max_examples=examples(100))
@given(M=st.integers(4, MAXLEN), N=st.integers(4, MAXLEN), s=st.integers(1, 12), H=st.integers(1, 5))
def test_symbolic_parameters(M, N, s, H):
    p, k = positions(M, N)
    same(mask_of("window(N // 4 + 1)", M, N), abs(p - k) <= N // 4, "window(N // 4 + 1)")
    same(mask_of("sink(M // 2)", M, N), k < M // 2, "sink(M // 2)")
    same(mask_of("blocked(N // 3 + 1)", M, N), p // (N // 3 + 1) == k // (N // 3 + 1), "blocked(N // 3 + 1)")
    same(mask_of("window(1 + h, 0)", M, N, H), per_head(lambda h: (p - k >= 0) & (p - k <= 1 + h), H),
         "window(1 + h, 0)")
    same(mask_of(f"columns({s}, phase=h % {s})", M, N, H), per_head(lambda h: k % s == h % s, H), "columns h")
    same(mask_of("global(0, N - 1)", M, N), np.isin(p, [0, N - 1]) | np.isin(k, [0, N - 1]), "global(0, N - 1)")


# --------------------------------------------------------------------------- composition

@st.composite
def expression(draw, depth=3):
    """(tree, reference) where tree is ('leaf', text) or (op, left, right)."""
    if depth == 0 or draw(st.integers(0, 2)) == 0:
        text, ref = draw(leaf_case())
        return ("leaf", text), ref
    op = draw(st.sampled_from("|&-"))
    (ta, ra), (tb, rb) = draw(expression(depth - 1)), draw(expression(depth - 1))
    f = {"|": np.logical_or, "&": np.logical_and, "-": lambda x, y: x & ~y}[op]
    return (op, ta, tb), lambda M, N, H: f(ra(M, N, H), rb(M, N, H))


PREC = {"|": 1, "&": 2, "-": 3, "leaf": 9}


def render(tree, parens):
    """Pattern text for a tree: fully parenthesised, or with the fewest parentheses the
    language's precedence (| loosest, then &, then -, all left-associative) needs."""
    if tree[0] == "leaf":
        return tree[1]
    op, a, b = tree
    sa, sb = render(a, parens), render(b, parens)
    if parens or PREC[a[0]] < PREC[op]:
        sa = f"({sa})" if a[0] != "leaf" else sa
    if parens or PREC[b[0]] <= PREC[op]:
        sb = f"({sb})" if b[0] != "leaf" else sb
    return f"{sa} {op} {sb}"


def leaves(tree):
    return [tree[1]] if tree[0] == "leaf" else leaves(tree[1]) + leaves(tree[2])


def evaluate(tree, masks):
    if tree[0] == "leaf":
        return masks[tree[1]]
    a, b = evaluate(tree[1], masks), evaluate(tree[2], masks)
    return {"|": a | b, "&": a & b, "-": a & ~b}[tree[0]]


@settings(max_examples=examples(300))
@given(case=expression(), M=st.integers(1, 64), N=st.integers(1, 64), H=st.integers(1, 3), parens=st.booleans())
def test_combinators_are_boolean_ops_of_the_operands(case, M, N, H, parens):
    tree, ref = case
    text = render(tree, parens)
    got = mask_of(text, M, N, H)
    operand = {t: mask_of(t, M, N, H) for t in leaves(tree)}
    same(got, evaluate(tree, operand), text)
    same(got, ref(M, N, H), text)


def test_precedence_by_hand():
    q, k = idx(40, 40)
    c, w, s = k <= q, abs(q - k) <= 3, k < 2
    same(mask_of("causal & window(4) | sink(2)", 40)[0], c & w | s, "& binds tighter than |")
    same(mask_of("sink(2) | causal & window(4)", 40)[0], s | c & w, "& binds tighter than |")
    same(mask_of("causal - window(4) & sink(2)", 40)[0], (c & ~w) & s, "- binds tighter than &")
    same(mask_of("full - causal - sink(2)", 40)[0], ~c & ~s, "- is left-associative")
    same(mask_of("full - (causal - sink(2))", 40)[0], ~(c & ~s), "parentheses")


# --------------------------------------------------------------------------- heads

@settings(max_examples=examples(100))
@given(cut=st.integers(0, 6), H=st.integers(2, 8), M=st.integers(1, 48), N=st.integers(1, 48),
       a=leaf_case(), b=leaf_case())
def test_head_sections_give_their_heads(cut, H, M, N, a, b):
    assume(cut < H - 1)
    (ta, ra), (tb, rb) = a, b
    text = f"pattern p:\n    heads 0..{cut}: {ta}\n    heads {cut + 1}..{H - 1}: {tb}\n"
    got = mask_of(text, M, N)
    assert got.shape == (H, M, N), "the sections fix the number of heads"
    # `h` is the head's global index inside every section
    same(got[:cut + 1], ra(M, N, H)[:cut + 1], ta)
    same(got[cut + 1:], rb(M, N, H)[cut + 1:], tb)
    same(got[cut + 1:], mask_of(tb, M, N, H)[cut + 1:], tb)


def test_design_mixed_heads():
    text = ("pattern mixed:\n    heads 0..7:  causal & window(512)\n"
            "    heads 8..15: causal & (window(256) | pow2(block = 128) | sink(128))\n")
    p = patternc.compile(text)
    assert p.default_heads == 16
    m = p.mask(600).numpy()
    q, k = idx(600, 600)
    d, D = q - k, q // 128 - k // 128
    want_lo = (d >= 0) & (d <= 511)
    want_hi = (d >= 0) & ((d <= 255) | (D == 0) | np.isin(D, [1, 2, 4, 8]) | (k < 128))
    same(m[:8], want_lo, "heads 0..7")
    same(m[8:], want_hi, "heads 8..15")
    assert not np.array_equal(m[0], m[8])
    with pytest.raises(patternc.PatternError, match="defines heads 0..15 but 4 heads"):
        p.mask(64, heads=4)


def test_default_heads_parameter():
    text = "pattern s2(heads = 16):\n    causal & (window(256) | columns(16, phase = h % 16))\n"
    p = patternc.compile(text)
    assert p.default_heads == 16
    m = p.mask(300).numpy()
    assert m.shape == (16, 300, 300)
    q, k = idx(300, 300)
    same(m, per_head(lambda h: (k <= q) & ((q - k <= 255) | (k % 16 == h % 16)), 16), "s2")
    assert patternc.compile(text, heads=4).mask(40).shape[0] == 4
    assert p.mask(40, heads=3).shape[0] == 3
    assert patternc.compile("causal").default_heads == 1
