"""`topk` (routed, MoBA): `Pattern.mask` against a plain torch MoBA selection, and its options
(`threshold=`, `shared=group`, `query=token`): the reference selection `select_blocks` against
plain loops, its causal and tie rules, `Pattern.mask` and layouts on the choice, and the
language surface (printing, equality, errors)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import cdiv, idx, mask_of, same

import patternc
from patternc import PatternError
from patternc.primitives.topk import TopK, select_blocks

# routed: the mask depends on q and k, so no reference of the lengths alone; moba_reference and
# routed_reference below take q and k
case = None


# --------------------------------------------------------------------------- Pattern.mask (MoBA)

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


# --------------------------------------------------------------------------- options: plain loops


def routed_reference(q, k, count, block, causal, threshold=None, shared="head", query="block"):
    """Plain loops in fp64, q [H, M, D], k [Hkv, N, D]: per query head (or GQA group) and query
    block (or token), the own block plus the best eligible blocks by mean-pooled dot product,
    ties to the lower index: count-1 of them, or the fewest whose softmax mass (scores scaled by
    D**-0.5) reaches threshold, or the fewer of both."""
    H, M, D = q.shape
    Hkv, N = k.shape[:2]
    group = H // Hkv
    nq, nk = -(-M // block), -(-N // block)
    rows = nq if query == "block" else M
    out = torch.zeros(H, rows, nk, dtype=torch.bool)
    for h in range(H):
        kh = h // group
        kbar = [k[kh, j * block:(j + 1) * block].double().mean(0) for j in range(nk)]
        heads = range(kh * group, (kh + 1) * group) if shared == "group" else [h]
        for i in range(rows):
            if query == "block":
                tokens, own = slice(i * block, (i + 1) * block), i + nk - nq
            else:
                tokens, own = slice(i, i + 1), (i + N - M) // block
            rep = sum(q[g, tokens].double().mean(0) for g in heads) / len(heads)
            others = [j for j in range(nk) if (j < own if causal else j != own)]
            score = {j: float(rep @ kbar[j]) for j in others}
            ranked = sorted(others, key=lambda j: (-score[j], j))
            n = len(ranked) if count is None else count - 1
            if threshold is not None and ranked:
                weights = [math.exp((score[j] - score[ranked[0]]) * D ** -0.5) for j in ranked]
                mass, needed = 0.0, 0
                while needed < len(ranked) and mass < threshold:
                    mass += weights[needed] / sum(weights)
                    needed += 1
                n = min(n, needed)
            for j in ranked[:n] + ([own] if 0 <= own < nk else []):
                out[h, i, j] = True
    return out


def inputs(H, Hkv, M, N, seed, D=16):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(H, M, D, generator=g), torch.randn(Hkv, N, D, generator=g)


@st.composite
def options(draw):
    """(count, threshold, shared, query): count or threshold or both."""
    count = draw(st.one_of(st.none(), st.integers(1, 5)))
    thresholds = [0.3, 0.5, 0.8, 0.95, 1.0]
    threshold = draw(st.sampled_from(thresholds) if count is None else st.sampled_from([None] + thresholds))
    return count, threshold, draw(st.sampled_from(["head", "group"])), draw(st.sampled_from(["block", "token"]))


def topk_text(count, block, threshold, shared, query, causal):
    args = ([str(count)] if count is not None else []) + [f"block={block}"]
    args += [f"threshold={threshold}"] if threshold is not None else []
    args += [f"shared={shared}", f"query={query}"]
    return f"{'causal & ' if causal else ''}topk({', '.join(args)})"


# --------------------------------------------------------------------------- select_blocks


@settings(max_examples=60, deadline=None)
@given(group=st.sampled_from([(1, 1), (2, 1), (2, 2), (4, 2)]), M=st.integers(1, 70), extra=st.integers(-30, 30),
       block=st.sampled_from([4, 8, 16]), opts=options(), causal=st.booleans(), seed=st.integers(0, 2**16))
def test_selection_matches_loop_reference(group, M, extra, block, opts, causal, seed):
    count, threshold, shared, query = opts
    N = max(1, M + extra)
    q, k = inputs(*group, M, N, seed)
    got = select_blocks(q, k, count, block, causal, threshold=threshold, shared=shared, query=query)
    want = routed_reference(q, k, count, block, causal, threshold, shared, query)
    assert got.shape == want.shape == (group[0], -(-M // block) if query == "block" else M, -(-N // block))
    assert torch.equal(got, want)


def test_positional_call_keeps_its_meaning():
    q, k = inputs(4, 2, 40, 56, seed=1)
    old = select_blocks(q, k, 3, 8, True)
    assert torch.equal(old, select_blocks(q, k, 3, 8, True, threshold=None, shared="head", query="block"))
    assert torch.equal(old, routed_reference(q, k, 3, 8, True))


@pytest.mark.parametrize("shared", ["head", "group"])
def test_ties_go_to_the_lower_block(shared):
    q, k = torch.ones(2, 64, 8), torch.ones(1, 64, 8)  # every block scores the same
    by_count = select_blocks(q, k, 3, 8, True, shared=shared, query="token")
    by_mass = select_blocks(q, k, None, 8, True, threshold=0.3, shared=shared, query="token")
    for t in range(64):
        own = t // 8
        assert set(torch.nonzero(by_count[0, t]).flatten().tolist()) == {own} | set(range(min(own, 2)))
        # uniform over the own earlier blocks: the first ceil(0.3 * own) of them reach 0.3
        assert set(torch.nonzero(by_mass[1, t]).flatten().tolist()) == {own} | set(range(math.ceil(0.3 * own)))


@settings(max_examples=25, deadline=None)
@given(M=st.integers(1, 90), extra=st.integers(-40, 40), opts=options(), seed=st.integers(0, 2**16))
def test_causal_rules_for_tokens(M, extra, opts, seed):
    count, threshold, shared, _ = opts
    N = max(1, M + extra)
    q, k = inputs(4, 2, M, N, seed)
    chosen = select_blocks(q, k, count, 8, True, threshold=threshold, shared=shared, query="token")
    nk = -(-N // 8)
    own = torch.div(torch.arange(M) + N - M, 8, rounding_mode="floor")[:, None]  # floor: negative when M > N
    K = torch.arange(nk)[None, :]
    assert not (chosen & (K > own)).any(), "never a block in the future"
    assert torch.equal(chosen & (K == own), (K == own).expand_as(chosen)), "the own block is always kept (if any)"
    earlier = (chosen & (K < own)).sum(-1)
    available = own.clamp(min=0).squeeze(1)
    if count is not None:
        assert (earlier <= count - 1).all()
    if threshold is None:
        assert torch.equal(earlier, torch.clamp(available, max=count - 1).expand_as(earlier))
    elif count != 1:
        assert torch.equal(earlier >= 1, (available >= 1).expand_as(earlier)), "at least one block when any is eligible"


def test_threshold_and_count_are_two_caps_on_one_ranking():
    q, k = inputs(4, 2, 96, 128, seed=5)
    for query in ("block", "token"):
        for shared in ("head", "group"):
            kw = {"shared": shared, "query": query}
            lower = select_blocks(q, k, None, 8, True, threshold=0.2, **kw)
            for t in (0.4, 0.7, 0.9):
                higher = select_blocks(q, k, None, 8, True, threshold=t, **kw)
                assert not (lower & ~higher).any(), "a higher threshold keeps every block a lower one kept"
                lower = higher
                for count in (1, 2, 4):
                    assert torch.equal(select_blocks(q, k, count, 8, True, threshold=t, **kw),
                                       select_blocks(q, k, count, 8, True, **kw) & higher)
            assert torch.equal(select_blocks(q, k, None, 8, True, threshold=1.0, **kw),
                               select_blocks(q, k, None, 8, True, **kw)), "threshold=1 keeps every eligible block"
            assert torch.equal(select_blocks(q, k, 1, 8, True, threshold=0.5, **kw),
                               select_blocks(q, k, 1, 8, True, **kw)), "k=1 keeps the own block only"


def test_groups_share_one_choice():
    q, k = inputs(6, 2, 50, 70, seed=3)
    for query in ("block", "token"):
        chosen = select_blocks(q, k, 3, 8, False, shared="group", query=query)
        assert torch.equal(chosen, chosen[::3].repeat_interleave(3, dim=0))
        per_head = select_blocks(q, k, 3, 8, False, shared="head", query=query)
        assert not torch.equal(chosen, per_head)
    q1, k1 = inputs(2, 2, 50, 70, seed=3)  # groups of one head: shared=group is per head
    for query in ("block", "token"):
        assert torch.equal(select_blocks(q1, k1, 3, 8, True, shared="group", query=query),
                           select_blocks(q1, k1, 3, 8, True, query=query))


# --------------------------------------------------------------------------- masks and layouts


def expand(selection, block, M, N, query, causal):
    """The token mask [H, M, N] of a block choice (rows: query blocks or tokens)."""
    rows = torch.arange(M) // block if query == "block" else torch.arange(M)
    mask = selection[:, rows][:, :, torch.arange(N) // block]
    if causal:
        mask &= torch.arange(N)[None, :] <= torch.arange(M)[:, None] + N - M
    return mask


@settings(max_examples=25, deadline=None)
@given(group=st.sampled_from([(2, 1), (4, 2), (3, 3)]), M=st.integers(1, 60), extra=st.integers(-20, 20),
       block=st.sampled_from([4, 8]), opts=options(), causal=st.booleans(), seed=st.integers(0, 2**16))
def test_mask_is_the_choice_expanded_to_tokens(group, M, extra, block, opts, causal, seed):
    count, threshold, shared, query = opts
    N = max(1, M + extra)
    q, k = inputs(*group, M, N, seed)
    p = patternc.compile(topk_text(count, block, threshold, shared, query, causal))
    selection = select_blocks(q, k, count, block, causal, threshold=threshold, shared=shared, query=query)
    assert torch.equal(p.mask(M, N, q=q, k=k), expand(selection, block, M, N, query, causal))
    assert torch.equal(p.mask(M, N, q=q[None], k=k[None]), p.mask(M, N, q=q, k=k)), "a batch of 1"


@pytest.mark.parametrize("text", [
    "causal & topk(3, block=8, shared=group, query=token)",
    "topk(block=8, threshold=0.6, query=token)",
    "causal & (window(5) | topk(2, block=8, threshold=0.5))",
    "causal & topk(2, block=16, query=token) - sink(3)",
])
@pytest.mark.parametrize("tile", [(8, 8), (4, 16), (16, 8)])
def test_layout_tiles_match_the_mask(text, tile):
    M, N, H = 40, 56, 4
    q, k = inputs(H, 2, M, N, seed=0)
    p = patternc.compile(text)
    mask = p.mask(M, N, q=q, k=k)
    bm, bn = tile
    layout = p.layout(M, N, heads=H, q=q, k=k, block_m=bm, block_n=bn, order="natural")
    Mt, Nt = -(-M // bm), -(-N // bn)
    padded = torch.zeros(H, Mt * bm, Nt * bn, dtype=torch.bool)
    inside = torch.zeros_like(padded)
    padded[:, :M, :N], inside[:, :M, :N] = mask, True
    tiles, real = (x.view(H, Mt, bm, Nt, bn).transpose(2, 3).flatten(3) for x in (padded, inside))
    want = torch.where(tiles.any(-1), torch.where((tiles | ~real).all(-1), 2, 1), 0).to(torch.int8)
    assert torch.equal(torch.as_tensor(layout.block_map()), want)


# --------------------------------------------------------------------------- the language


def test_fields_and_defaults():
    t = patternc.compile("topk(threshold=0.9, block=512)").primitives()[0]
    assert isinstance(t, TopK)
    assert (t.count, t.threshold, t.shared, t.query) == (None, 0.9, "head", "block")
    t = patternc.compile("topk(4, block=512, threshold=1, shared=group, query=token)").primitives()[0]
    assert (t.count.value, t.threshold, t.shared, t.query) == (4, 1.0, "group", "token")
    assert set(TopK.head_invariant) == {"block", "count", "threshold", "shared", "query"}


@pytest.mark.parametrize("text,printed", [
    ("topk(4, block=512)", "topk(4, block=512)"),
    ("topk(4, block=512, shared=head, query=block)", "topk(4, block=512)"),
    ("topk(threshold=0.9, block=512)", "topk(block=512, threshold=0.9)"),
    ("topk(query=token, shared=group, threshold=0.50, block=64, count=8)",
     "topk(8, block=64, threshold=0.5, shared=group, query=token)"),
    ("causal & topk(2, block=8, threshold=1)", "causal & topk(2, block=8, threshold=1.0)"),
    ("topk(block=8, threshold=0.000_01)", "topk(block=8, threshold=0.00001)"),
    ("let t = 0.25\npattern p: causal & topk(block=8, threshold=t)\n",
     "pattern p:\n    causal & topk(block=8, threshold=0.25)"),
    ("pattern p(group = 3): topk(group, block=8, shared=group)\n",  # a choice is a name, not looked up
     "pattern p(group = 3):\n    topk(group, block=8, shared=group)"),
    ("global(1..5) | topk(2, block=4)", "global(1..5) | topk(2, block=4)"),
])
def test_printing_round_trips(text, printed):
    p = patternc.compile(text)
    assert str(p) == printed
    again = patternc.compile(printed)
    assert again == p and hash(again) == hash(p) and str(again) == printed
    assert {p: "cached"}[again] == "cached"  # patterns are lru_cache keys


def test_equality_follows_the_options():
    same = ["topk(2, block=8)", "topk(2, block=8, shared=head)", "topk(count=2, query=block, block=8)"]
    assert len({patternc.compile(t) for t in same}) == 1
    assert patternc.compile("topk(2, block=8, threshold=1)") == patternc.compile("topk(2, block=8, threshold=1.0)")
    different = ["topk(2, block=8)", "topk(2, block=8, threshold=0.9)", "topk(2, block=8, threshold=0.8)",
                 "topk(2, block=8, shared=group)", "topk(2, block=8, query=token)", "topk(block=8, threshold=0.9)"]
    assert len({patternc.compile(t) for t in different}) == len(different)


@pytest.mark.parametrize("text,line,column,message,hint", [
    ("pattern moba:\n    causal & topk(threshold=1.5, block=64)\n", 2, 19, "threshold must be in (0, 1], got 1.5",
     "threshold=0.9"),
    ("pattern moba:\n    causal & topk(threshold=0.0, block=64)\n", 2, 19, "threshold must be in (0, 1], got 0.0",
     None),
    ("pattern moba:\n    causal & topk(4, block=64, shared=grop)\n", 2, 32,
     "topk(): 'shared' must be one of head, group, got the name 'grop'", "did you mean 'group'?"),
    ("pattern moba:\n    causal & topk(4, block=64, query=tokens)\n", 2, 32,
     "topk(): 'query' must be one of block, token, got the name 'tokens'", "did you mean 'token'?"),
    ("pattern moba:\n    causal & topk(block=64)\n", 2, 14, "topk() needs k or threshold=...", "threshold=0.9"),
    ("pattern moba:\n    causal & topk(2.5, block=64)\n", 2, 19, "'count' must be an integer, got 2.5", None),
    ("let b = 0.5\npattern moba:\n    causal & topk(4, block=b * 64)\n", 3, 28,
     "expected a number around '*' (an integer), got 0.5", None),
    ("pattern moba:\n    causal & topk(4, block=64, threshold=M)\n", 2, 32,
     "'threshold' must be a constant number such as 0.9, got 'M'", None),
])
def test_errors_point_at_the_argument(text, line, column, message, hint):
    with pytest.raises(PatternError) as info:
        patternc.compile(text)
    e = info.value
    assert message in e.message and (e.line, e.column) == (line, column), str(e)
    assert hint is None or hint in e.hint
    assert str(e).startswith(f"<pattern>:{line}:{column}: error: ")
