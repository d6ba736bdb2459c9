"""The reference semantics (`Pattern.mask`) against independent definitions.

Every primitive of the registry gets a plain-numpy definition written here from DESIGN.md's
language table (and, for neighborhood, NATTEN's window formulas), compared with
`Pattern.mask(M, N, heads)` for random parameters and lengths. Routed `topk` is compared with a
plain torch MoBA selection, `random` with its contract (count, determinism, variation).
Compositions `| & -`, per-head sections and default heads are checked on top.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import examples
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import patternc
from patternc.primitives import REGISTRY

MAXLEN = 96


def mask_of(text, M, N=None, heads=None, **kw) -> np.ndarray:
    return patternc.compile(text).mask(M, N, heads, **kw).numpy()


def idx(M, N):
    return np.arange(M)[:, None], np.arange(N)[None, :]


def per_head(f, H):
    """[H, M, N] from a function of the head index."""
    return np.stack([f(h) for h in range(H)])


def cdiv(a, b):
    return -(-a // b)


def on_blocks(ref, b):
    """A reference applied to block indices: `ref` over ceil(M/b) x ceil(N/b) blocks, expanded."""
    def go(M, N, H):
        blocks = ref(cdiv(M, b), cdiv(N, b), H)
        q, k = idx(M, N)
        return blocks[:, q // b, k // b]
    return go


def same(got, want, text):
    want = np.broadcast_to(want, got.shape)
    if not np.array_equal(got, want):
        bad = np.argwhere(got != want)[:5].tolist()
        raise AssertionError(f"{text}: {int((got != want).sum())} entries differ, e.g. [h, q, k] = {bad} "
                             f"(got {[bool(got[tuple(i)]) for i in bad]})")


# --------------------------------------------------------------------------- the 1-D primitives
# Each strategy draws (text, reference(M, N, H) -> bool [H, M, N]) straight from the language table.

lengths = st.integers(1, MAXLEN)


def full_case():
    return st.just(("full", lambda M, N, H: np.ones((H, M, N), bool)))


def causal_case():
    def ref(M, N, H):
        q, k = idx(M, N)
        return np.broadcast_to(k <= q + N - M, (H, M, N))  # bottom-right aligned
    return st.just(("causal", ref))


@st.composite
def window_case(draw):
    form = draw(st.sampled_from(["w", "lr"]))
    r = draw(st.sampled_from([1, 1, 2, 3, 4, 7]))
    if form == "w":
        w = draw(st.integers(1, 40))
        left = right = w - 1
        text = f"window({w}" + (f", dilation={r})" if r != 1 else ")")
    else:
        left, right = draw(st.integers(0, 40)), draw(st.integers(0, 40))
        text = f"window({left}, {right}" + (f", dilation={r})" if r != 1 or draw(st.booleans()) else ")")

    def ref(M, N, H):
        q, k = idx(M, N)
        d = q - k
        return np.broadcast_to((q - left * r <= k) & (k <= q + right * r) & (d % r == 0), (H, M, N))
    return text, ref


@st.composite
def blocked_case(draw):
    b = draw(st.integers(1, 40))

    def ref(M, N, H):
        q, k = idx(M, N)
        return np.broadcast_to(q // b == k // b, (H, M, N))
    return f"blocked({b})", ref


@st.composite
def strided_case(draw):
    s = draw(st.integers(1, 30))

    def ref(M, N, H):
        q, k = idx(M, N)
        return np.broadcast_to((q - k) % s == 0, (H, M, N))
    return f"strided({s})", ref


@st.composite
def columns_case(draw):
    s = draw(st.integers(1, 20))
    kind = draw(st.sampled_from(["default", "const", "head"]))
    if kind == "default":
        text, phase = f"columns({s})", lambda h: s - 1
    elif kind == "const":
        c = draw(st.integers(0, s - 1))
        text, phase = f"columns({s}, phase={c})", lambda h: c
    else:  # S2-Attention: every head its own column
        text, phase = f"columns({s}, phase=h % {s})", lambda h: h % s

    def ref(M, N, H):
        q, k = idx(M, N)
        return per_head(lambda h: np.broadcast_to(k % s == phase(h), (M, N)), H)
    return text, ref


def pow2_case():
    def ref(M, N, H):
        q, k = idx(M, N)
        D = q - k
        powers = np.isin(D, [2 ** i for i in range(12)])
        return np.broadcast_to((D == 0) | powers, (H, M, N))
    return st.just(("pow2", ref))


@st.composite
def sink_case(draw):
    n = draw(st.integers(1, 40))

    def ref(M, N, H):
        q, k = idx(M, N)
        return np.broadcast_to(k < n, (H, M, N))
    return f"sink({n})", ref


@st.composite
def global_case(draw):
    items = draw(st.lists(st.one_of(st.integers(0, 100).map(lambda i: (i, i, False)),
                                    st.tuples(st.integers(0, 100), st.integers(0, 30)).map(
                                        lambda t: (t[0], t[0] + t[1], True))), min_size=1, max_size=4))
    tokens = sorted({t for lo, hi, _ in items for t in range(lo, hi + 1)})
    text = "global(" + ", ".join(f"{lo}..{hi}" if rng else str(lo) for lo, hi, rng in items) + ")"

    def ref(M, N, H):
        q, k = idx(M, N)
        return np.broadcast_to(np.isin(q, tokens) | np.isin(k, tokens), (H, M, N))
    return text, ref


ONE_D = {"full": full_case, "causal": causal_case, "window": window_case, "blocked": blocked_case,
         "strided": strided_case, "columns": columns_case, "pow2": pow2_case, "sink": sink_case,
         "global": global_case}
BLOCKABLE = ["full", "causal", "window", "blocked", "strided", "columns", "pow2", "sink", "global"]  # block=b


def with_block(text, b):
    if "(" not in text:
        return f"{text}(block={b})"
    return f"{text[:-1]}, block={b})"


@st.composite
def leaf_case(draw, allow_block=True):
    """(text, reference) of any 1-D primitive, possibly on blocks."""
    name = draw(st.sampled_from(sorted(ONE_D)))
    text, ref = draw(ONE_D[name]())
    if allow_block and name in BLOCKABLE and draw(st.integers(0, 3)) == 0:
        b = draw(st.integers(1, 12))
        return with_block(text, b), on_blocks(ref, b)
    return text, ref


def test_every_registered_primitive_has_a_reference_here():
    covered = set(ONE_D) | {"random", "topk", "neighborhood"}
    textual = {name for name, cls in REGISTRY.items() if getattr(cls, "textual", True)}  # not jit's predicate
    assert textual == covered, f"primitives without an independent reference: {textual - covered}"


@pytest.mark.parametrize("name", sorted(ONE_D))
@settings(max_examples=examples(200))
@given(data=st.data(), M=lengths, N=lengths, H=st.integers(1, 3))
def test_primitive_matches_its_definition(name, data, M, N, H):
    text, ref = data.draw(ONE_D[name]())
    same(mask_of(text, M, N, H), ref(M, N, H), text)


@pytest.mark.parametrize("name", BLOCKABLE)
@settings(max_examples=examples(120))
@given(data=st.data(), M=lengths, N=lengths, b=st.integers(1, 16))
def test_block_applies_the_rule_to_block_indices(name, data, M, N, b):
    text, ref = data.draw(ONE_D[name]())
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
    # causal on blocks with M != N: bottom-right in block space (lengths ceil(M/b), ceil(N/b))
    m = mask_of("causal(block=4)", 5, 13)[0]
    assert m.sum(1).tolist() == [12, 12, 12, 12, 13]


def test_causal_is_bottom_right_aligned():
    m = mask_of("causal", 3, 5)[0]
    assert m.tolist() == [[True, True, True, False, False],
                          [True, True, True, True, False],
                          [True, True, True, True, True]]
    m = mask_of("causal", 5, 3)[0]
    assert m.sum(1).tolist() == [0, 0, 1, 2, 3]  # more queries than keys: the first see nothing


def test_dilated_window_from_the_table():
    # window(w, dilation=r): d % r == 0 and abs(d) <= (w-1)*r
    for w, r in [(1, 3), (3, 2), (4, 5)]:
        q, k = idx(60, 60)
        d = q - k
        same(mask_of(f"window({w}, dilation={r})", 60)[0], (d % r == 0) & (abs(d) <= (w - 1) * r),
             f"window({w}, dilation={r})")


@settings(max_examples=examples(100))
@given(M=st.integers(4, MAXLEN), N=st.integers(4, MAXLEN), s=st.integers(1, 12), H=st.integers(1, 5))
def test_symbolic_parameters(M, N, s, H):
    q, k = idx(M, N)
    same(mask_of("window(N // 4 + 1)", M, N), abs(q - k) <= N // 4, "window(N // 4 + 1)")
    same(mask_of("sink(M // 2)", M, N), k < M // 2, "sink(M // 2)")
    same(mask_of("blocked(N // 3 + 1)", M, N), q // (N // 3 + 1) == k // (N // 3 + 1), "blocked(N // 3 + 1)")
    same(mask_of("window(1 + h, 0)", M, N, H), per_head(lambda h: (q - k >= 0) & (q - k <= 1 + h), H),
         "window(1 + h, 0)")
    same(mask_of(f"columns({s}, phase=h % {s})", M, N, H), per_head(lambda h: k % s == h % s, H), "columns h")
    same(mask_of("global(0, N - 1)", M, N), np.isin(q, [0, N - 1]) | np.isin(k, [0, N - 1]), "global(0, N - 1)")


# --------------------------------------------------------------------------- random

@settings(max_examples=examples(100))
@given(M=st.integers(1, MAXLEN), N=st.integers(1, MAXLEN), b=st.integers(1, 9), count=st.integers(1, 6),
       seed=st.integers(0, 2 ** 31), H=st.integers(1, 3))
def test_random_picks_count_distinct_key_blocks(M, N, b, count, seed, H):
    text = f"random({count}, block={b}, seed={seed})"
    m = mask_of(text, M, N, H)
    nQ, nK = cdiv(M, b), cdiv(N, b)
    for h in range(H):
        for Q in range(nQ):
            rows = m[h, Q * b:(Q + 1) * b]
            assert (rows == rows[0]).all(), "every query of a block sees the same keys"
            blocks = [rows[0, K * b:(K + 1) * b] for K in range(nK)]
            assert all(x.all() or not x.any() for x in blocks), "key blocks are taken whole"
            assert sum(bool(x.all()) for x in blocks) == min(count, nK)
    same(mask_of(text, M, N, H), m, "deterministic")


def test_random_differs_across_seeds_and_heads():
    a = mask_of("random(3, block=4, seed=1)", 64, 64, 2)
    b = mask_of("random(3, block=4, seed=2)", 64, 64, 2)
    assert a.any() and b.any()
    assert not np.array_equal(a[0], b[0]), "seeds give different blocks"
    assert not np.array_equal(a[0], a[1]), "heads give different blocks"
    assert np.array_equal(a, mask_of("random(3, block=4, seed=1)", 64, 64, 2))
    # the default seed is 0 and is deterministic too
    assert np.array_equal(mask_of("random(2, block=8)", 64), mask_of("random(2, block=8, seed=0)", 64))


# --------------------------------------------------------------------------- topk (MoBA)

def moba_reference(q, k, count, b, causal):
    """Plain MoBA: per query block, the own block plus the best count-1 others by fp32 mean-pooled
    scores (earlier blocks only under causal), ties to the lower block index; as a token mask."""
    H, M, _ = q.shape
    Hkv, N, _ = k.shape
    nQ, nK = cdiv(M, b), cdiv(N, b)
    qbar = torch.stack([q[:, i * b:(i + 1) * b].float().mean(1) for i in range(nQ)], 1)
    kbar = torch.stack([k[:, j * b:(j + 1) * b].float().mean(1) for j in range(nK)], 1)
    kbar = kbar.repeat_interleave(H // Hkv, 0)
    scores = qbar @ kbar.transpose(1, 2)
    blocks = np.zeros((H, nQ, nK), bool)
    for h in range(H):
        for Q in range(nQ):
            own = Q + nK - nQ
            others = [K for K in range(nK) if (K < own if causal else K != own)]
            ranked = sorted(others, key=lambda K: (-float(scores[h, Q, K]), K))
            for K in ranked[:count - 1] + ([own] if 0 <= own < nK else []):
                blocks[h, Q, K] = True
    qi, ki = idx(M, N)
    out = blocks[:, qi // b, ki // b]
    return out & (ki <= qi + N - M) if causal else out


@settings(max_examples=examples(100))
@given(M=st.integers(1, 80), extra=st.integers(0, 40), b=st.integers(1, 12), count=st.integers(1, 6),
       causal=st.booleans(), gqa=st.booleans(), seed=st.integers(0, 10 ** 6))
def test_topk_matches_moba(M, extra, b, count, causal, gqa, seed):
    N = M + extra
    H, Hkv, D = 4, (2 if gqa else 4), 8
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(H, M, D, generator=g), torch.randn(Hkv, N, D, generator=g)
    text = f"causal & topk({count}, block={b})" if causal else f"topk({count}, block={b})"
    got = mask_of(text, M, N, H, q=q, k=k)
    same(got, moba_reference(q, k, count, b, causal), text)


def test_topk_ties_go_to_the_lower_block():
    b, nK, D = 4, 8, 4
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, nK * b, D, generator=g).abs() + 0.5
    block = torch.randn(b, D, generator=g).abs() + 1.0
    k = block.repeat(nK, 1)[None].clone()  # every key block identical: every score ties
    m = mask_of(f"topk(3, block={b})", nK * b, q=q, k=k)[0]
    for Q in range(nK):
        chosen = [K for K in range(nK) if m[Q * b, K * b]]
        lower = [K for K in range(nK) if K != Q][:2]
        assert chosen == sorted({Q, *lower}), (Q, chosen)
    # under causal, ties among earlier blocks also go to the lowest
    m = mask_of(f"causal & topk(3, block={b})", nK * b, q=q, k=k)[0]
    for Q in range(nK):
        chosen = [K for K in range(nK) if m[Q * b + b - 1, K * b]]
        assert chosen == sorted({Q, *list(range(Q))[:2]}), (Q, chosen)
    # a strictly better later block beats the lower-index tie
    k2 = k.clone()
    k2[0, 6 * b:7 * b] *= 3
    m = mask_of(f"topk(2, block={b})", nK * b, q=q, k=k2)[0]
    assert [K for K in range(nK) if m[0, K * b]] == [0, 6]


def test_topk_keeps_own_block_and_never_looks_ahead_under_causal():
    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(2, 96, 16, generator=g), torch.randn(2, 96, 16, generator=g)
    k[:, 80:] += 5 * q.mean(1, keepdim=True)  # the last blocks would win every vote
    m = mask_of("causal & topk(3, block=16)", 96, q=q, k=k)
    qi, ki = idx(96, 96)
    assert not (m & (ki > qi)).any()
    for Q in range(6):
        rows = m[:, Q * 16 + 15]
        assert rows[:, Q * 16:Q * 16 + 16].all(), "own block kept"
        assert (rows.reshape(2, 6, 16).any(-1).sum(-1) == min(3, Q + 1)).all()
    free = mask_of("topk(3, block=16)", 96, q=q, k=k)
    assert free[:, 0, 80:].any(), "without causal the late blocks are chosen"


# --------------------------------------------------------------------------- neighborhood (NATTEN / GNA)

def natten_start(i, L, K, r):
    """NATTEN's window start (natten_cpu_commons.h get_window_start), for odd K."""
    ns = K // 2
    if r <= 1:
        return max(i - ns, 0) + (i + ns >= L) * (L - i - ns - 1)
    ni = i - ns * r
    if ni < 0:
        return i % r
    if i + ns * r >= L:
        imodd = i % r
        a = (L // r) * r
        b = L - a
        if imodd < b:
            return L - b + imodd - 2 * ns * r
        return a + imodd - K * r
    return ni


def window_keys(L, K, s, r, causal, x):
    """Coordinates of the keys coordinate x sees along one dimension."""
    g, pos = x % r, x // r
    Lg = len(range(g, L, r))  # positions of x's dilation group
    if s > 1:  # strided: the group of s positions shares its leader's window
        first = pos // s * s
        pos = first if causal else min(first + s // 2, Lg - 1)
    lead = g + r * pos
    if causal:
        return {lead - j * r for j in range(K) if lead - j * r >= 0}
    if K % 2:
        start = natten_start(lead, L, K, r)
        return {start + j * r for j in range(K)}
    start = min(max(pos - K // 2, 0), Lg - K)  # even K: the documented clamp
    return {g + r * (start + j) for j in range(K)}


def neighborhood_reference(grid, K, s, r, causal):
    allowed = []
    for i, L in enumerate(grid):
        a = np.zeros((L, L), bool)
        for x in range(L):
            a[x, sorted(window_keys(L, K[i], s[i], r[i], causal, x))] = True
        allowed.append(a)
    coords = np.unravel_index(np.arange(math.prod(grid)), grid)
    out = np.ones((len(coords[0]), len(coords[0])), bool)
    for i, a in enumerate(allowed):
        out &= a[coords[i][:, None], coords[i][None, :]]
    return out


@st.composite
def neighborhood_case(draw, ndim, max_tokens):
    grid = []
    for i in range(ndim):
        budget = max_tokens // math.prod(grid) if grid else max_tokens
        rest = 2 ** (ndim - i - 1)  # leave room for the later dimensions
        grid.append(draw(st.integers(1, max(1, min(budget // rest, 40)))))
    K, s, r = [], [], []
    for L in grid:
        K.append(draw(st.integers(1, L)))
        r.append(draw(st.integers(1, L // K[-1])))
        s.append(draw(st.integers(1, K[-1])))
    causal = draw(st.booleans())
    return tuple(grid), tuple(K), tuple(s), tuple(r), causal


def neighborhood_text(grid, K, s, r, causal, scalar_ok=True):
    def fmt(v):
        if scalar_ok and len(set(v)) == 1:
            return str(v[0])
        return "(" + ", ".join(map(str, v)) + ("," if len(v) == 1 else "") + ")"
    args = [fmt(K)]
    if set(s) != {1}:
        args.append(f"stride={fmt(s)}")
    if set(r) != {1}:
        args.append(f"dilation={fmt(r)}")
    if causal:
        args.append("causal=true")
    expr = f"neighborhood({', '.join(args)})"
    if len(grid) == 1:
        return expr
    return f"pattern nb:\n    grid({', '.join(map(str, grid))})\n    {expr}\n"


@pytest.mark.parametrize("ndim,max_tokens", [(1, 150), (2, 200), (3, 200)])
@settings(max_examples=examples(200))
@given(data=st.data())
def test_neighborhood_matches_natten(ndim, max_tokens, data):
    grid, K, s, r, causal = data.draw(neighborhood_case(ndim, max_tokens))
    text = neighborhood_text(grid, K, s, r, causal, scalar_ok=data.draw(st.booleans()))
    P = math.prod(grid)
    got = mask_of(text, P, P)[0]
    same(got, neighborhood_reference(grid, K, s, r, causal), text)
    if not causal:
        assert (got.sum(1) == math.prod(K)).all(), "exactly prod(size) keys per query"


def test_neighborhood_examples_by_hand():
    m = mask_of("neighborhood(3)", 6)[0].astype(int)
    assert m.tolist() == [[1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0], [0, 1, 1, 1, 0, 0],
                          [0, 0, 1, 1, 1, 0], [0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1]]
    m = mask_of("neighborhood(3, dilation=2)", 6)[0].astype(int)
    assert m.tolist() == [[1, 0, 1, 0, 1, 0], [0, 1, 0, 1, 0, 1]] * 3
    m = mask_of("neighborhood(3, causal=true)", 5)[0].astype(int)
    assert m.tolist() == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 1, 1, 1]]
    # stride 2: positions {0,1} lead at 1, {2,3} at 3, {4,5} at 5, {6} clipped to 6
    m = mask_of("neighborhood(3, stride=2)", 7)[0].astype(int)
    rows = [[1, 1, 1, 0, 0, 0, 0]] * 2 + [[0, 0, 1, 1, 1, 0, 0]] * 2 + [[0, 0, 0, 0, 1, 1, 1]] * 3
    assert m.tolist() == rows
    # 2-D: the corner token sees the 3x3 block in the corner
    m = mask_of("pattern g:\n    grid(4, 5)\n    neighborhood((3, 3))\n", 20)[0]
    assert sorted(np.flatnonzero(m[0]).tolist()) == [0, 1, 2, 5, 6, 7, 10, 11, 12]
    assert (m.sum(1) == 9).all()


def test_neighborhood_scalar_broadcasts_over_the_grid():
    a = mask_of("pattern g:\n    grid(6, 7)\n    neighborhood(3, dilation=2)\n", 42)
    b = mask_of("pattern g:\n    grid(6, 7)\n    neighborhood((3, 3), dilation=(2, 2))\n", 42)
    assert a.any() and np.array_equal(a, b)


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


@settings(max_examples=examples(100))
@given(M=st.integers(4, 64), count=st.integers(1, 3), seed=st.integers(0, 99), b=st.integers(1, 8),
       other=leaf_case())
def test_combinators_with_random_blocks(M, count, seed, b, other):
    r = f"random({count}, block={b}, seed={seed})"
    text, _ = other
    R, O = mask_of(r, M, M, 2), mask_of(text, M, M, 2)
    same(mask_of(f"{r} | {text}", M, M, 2), R | O, "|")
    same(mask_of(f"{r} & ({text})", M, M, 2), R & O, "&")
    same(mask_of(f"{r} - ({text})", M, M, 2), R & ~O, "-")


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
