"""`neighborhood(size, stride, dilation, causal)`: NATTEN/GNA neighborhood attention over the
grid, per dimension, against NATTEN itself: an independent restatement of its rule in numpy
(`natten_keys`), and NATTEN's own mask code, run from its source distribution (the oracle)."""
from __future__ import annotations

import math
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import examples
from hypothesis import example, given, settings
from hypothesis import strategies as st
from reference import mask_of, same
from test_kernels import check
from test_layout import check_block_map, check_csr, computed_set

import patternc

# the rule holds only on its grid (M == N == prod(grid)), so the generic any-length tests can't
# use it: test_neighborhood_matches_natten below draws grids and parameters together
case = None

# the NATTEN release whose mask code (src/natten/backends/flex.py, get_na_flex_mask) patternc follows
NATTEN_VERSION = "0.21.7"


def natten_start(i, L, K, r):
    """NATTEN's CPU window start (natten_cpu_commons.h get_window_start), for odd K."""
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


def natten_keys(L, K, s, r, causal, x):
    """Coordinates of the keys coordinate x sees along one dimension, NATTEN's rule: within x's
    dilation group, position i = x // r among Lg; the stride group's leader places the window."""
    g, i = x % r, x // r
    Lg = len(range(g, L, r))
    if causal:  # the leader is the group's last query; keys up to the query, < K before the leader
        lead = min(i // s * s + s - 1, Lg - 1)
        return {g + r * j for j in range(Lg) if j <= i and lead - j < K}
    lead = min(i // s * s + s // 2, Lg - 1)  # the centre, right of it for even s
    if K % 2:  # odd K: the CPU kernels' formula on the leader's token
        start = natten_start(g + r * lead, L, K, r)
        return {start + j * r for j in range(K)}
    left, right = K // 2, K // 2 - 1  # even K: one key more on the left, the centre kept inside
    centre = min(max(lead, left), Lg - 1 - right)
    return {g + r * j for j in range(centre - left, centre + right + 1)}


def neighborhood_reference(grid, K, s, r, causal):
    allowed = []
    for i, L in enumerate(grid):
        a = np.zeros((L, L), bool)
        for x in range(L):
            a[x, sorted(natten_keys(L, K[i], s[i], r[i], causal[i], x))] = True
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
    causal = tuple(draw(st.booleans()) for _ in grid)
    return tuple(grid), tuple(K), tuple(s), tuple(r), causal


def neighborhood_text(grid, K, s, r, causal, scalar_ok=True):
    def fmt(v):
        words = [str(x).lower() for x in v]  # True -> true
        if scalar_ok and len(set(v)) == 1:
            return words[0]
        return "(" + ", ".join(words) + ("," if len(v) == 1 else "") + ")"
    args = [fmt(K)]
    if set(s) != {1}:
        args.append(f"stride={fmt(s)}")
    if set(r) != {1}:
        args.append(f"dilation={fmt(r)}")
    if any(causal):
        args.append(f"causal={fmt(causal)}")
    expr = f"neighborhood({', '.join(args)})"
    if len(grid) == 1:
        return expr
    return f"pattern nb:\n    grid({', '.join(map(str, grid))})\n    {expr}\n"


# the issue's cases (11, item 3): causal in time only (video); causal with stride (leader rule)
ISSUE_CASES = [
    ((4, 5, 6), (2, 3, 3), (1, 1, 1), (1, 1, 1), (True, False, False)),
    ((6, 4, 5), (2, 3, 3), (2, 2, 3), (1, 1, 1), (True, False, False)),
    ((5, 8, 4), (3, 2, 2), (2, 2, 1), (1, 2, 2), (True, False, False)),
    ((7,), (3,), (2,), (1,), (True,)),
    ((23,), (5,), (3,), (2,), (True,)),
    ((9, 10), (4, 3), (3, 2), (2, 3), (True, True)),
    ((11, 7), (3, 3), (3, 2), (3, 2), (False, True)),
]


@pytest.mark.parametrize("ndim,max_tokens", [(1, 150), (2, 200), (3, 200)])
@settings(max_examples=examples(200))
@given(data=st.data())
def test_neighborhood_matches_natten(ndim, max_tokens, data):
    grid, K, s, r, causal = data.draw(neighborhood_case(ndim, max_tokens))
    text = neighborhood_text(grid, K, s, r, causal, scalar_ok=data.draw(st.booleans()))
    P = math.prod(grid)
    got = mask_of(text, P, P)[0]
    same(got, neighborhood_reference(grid, K, s, r, causal), text)
    if not any(causal):
        assert (got.sum(1) == math.prod(K)).all(), "exactly prod(size) keys per query"
    assert got.diagonal().all(), "every query sees itself (stride <= size)"


@pytest.mark.parametrize("grid,K,s,r,causal", ISSUE_CASES)
def test_the_issue_cases(grid, K, s, r, causal):
    text = neighborhood_text(grid, K, s, r, causal, scalar_ok=False)
    P = math.prod(grid)
    same(mask_of(text, P, P)[0], neighborhood_reference(grid, K, s, r, causal), text)


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
    # causal, stride 2: the group's last query leads ({0,1} at 1, {2,3} at 3, ...); each query's
    # window starts where its leader's does and ends at the query itself
    m = mask_of("neighborhood(3, stride=2, causal=true)", 7)[0].astype(int)
    assert m.tolist() == [[1, 0, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0], [0, 1, 1, 0, 0, 0, 0],
                          [0, 1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1, 0],
                          [0, 0, 0, 0, 1, 1, 1]]
    # 2-D: the corner token sees the 3x3 block in the corner
    m = mask_of("pattern g:\n    grid(4, 5)\n    neighborhood((3, 3))\n", 20)[0]
    assert sorted(np.flatnonzero(m[0]).tolist()) == [0, 1, 2, 5, 6, 7, 10, 11, 12]
    assert (m.sum(1) == 9).all()
    # causal in time only: frame t sees frames t-1 and t, a full 3-wide window in space
    m = mask_of("grid(3, 4)\nneighborhood((2, 3), causal=(true, false))", 12)[0]
    assert sorted(np.flatnonzero(m[5]).tolist()) == [0, 1, 2, 4, 5, 6]  # frame 1, column 1
    assert sorted(np.flatnonzero(m[3]).tolist()) == [1, 2, 3]  # frame 0, the last column


def test_neighborhood_scalar_broadcasts_over_the_grid():
    a = mask_of("pattern g:\n    grid(6, 7)\n    neighborhood(3, dilation=2)\n", 42)
    b = mask_of("pattern g:\n    grid(6, 7)\n    neighborhood((3, 3), dilation=(2, 2))\n", 42)
    assert a.any() and np.array_equal(a, b)
    c = mask_of("grid(6, 7)\nneighborhood(3, causal=true)", 42)
    d = mask_of("grid(6, 7)\nneighborhood((3, 3), causal=(true, true))", 42)
    assert c.any() and np.array_equal(c, d)


@pytest.mark.parametrize("text,P", [
    ("grid(4, 3, 4)\nneighborhood((2, 3, 3), stride=(2, 1, 2), causal=(true, false, false))", 48),
    ("grid(6, 8)\nneighborhood((3, 4), stride=(3, 2), dilation=(2, 1), causal=(false, true))", 48),
    ("neighborhood(5, stride=3, dilation=2, causal=true)", 45),
])
def test_layouts_and_kernels(interpret, text, P):
    """Per-dimension causal and causal strides through the layout (exact tiles) and the kernel."""
    pattern = patternc.compile(text)
    mask = pattern.mask(P).numpy()
    for bm, bn in ((16, 16), (12, 24), (8, 8)):
        layout = pattern.layout(P, block_m=bm, block_n=bn)
        got = check_block_map(layout, mask, f"{text!r} tiles {bm}x{bn}")
        check_csr(layout, got, text)
        assert np.array_equal(computed_set(layout, got, mask), mask), text
    check(text, P, P, 2, 1, 16, torch.float32, {"block_m": 16, "block_n": 16, "num_warps": 4, "num_stages": 1})


# --------------------------------------------------------------------------- NATTEN's own code


PIP_DOWNLOAD = ["pip", "download", f"natten=={NATTEN_VERSION}", "--no-deps", "--no-binary", ":all:",
                "--no-build-isolation"]  # the sdist only (NATTEN ships no pure wheel); no build


def _natten_src(cache: Path) -> Path | str:
    """NATTEN's `src` folder, or why it can't be had: from $PATTERNC_NATTEN_SRC (its sdist or its
    unpacked tree), else from an earlier run's copy in `cache`, else by `pip download` (180 s at most)."""
    def src_in(root: Path):
        hits = sorted(root.glob("natten*/src/natten/backends/flex.py")) + sorted(root.glob("src/natten/backends/flex.py"))
        return hits[0].parents[2] if hits else None

    def unpack(archive: Path, target: Path):  # only the Python sources
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if "/src/natten/" in m.name and m.name.endswith(".py")]
            tar.extractall(target, members=members, filter="data")
        return src_in(target) or f"{archive} holds no src/natten/backends/flex.py"

    given_path = os.environ.get("PATTERNC_NATTEN_SRC")
    if given_path:
        path = Path(given_path)
        if path.is_dir():
            return src_in(path) or f"$PATTERNC_NATTEN_SRC={path} holds no src/natten/backends/flex.py"
        if not path.is_file() or not tarfile.is_tarfile(path):
            return f"$PATTERNC_NATTEN_SRC={path} is neither NATTEN's source tree nor its sdist"
        return unpack(path, cache / "given" / path.name)
    if found := src_in(cache / NATTEN_VERSION):
        return found
    with tempfile.TemporaryDirectory(prefix="natten-sdist-") as download:
        try:
            run = subprocess.run([sys.executable, "-m", *PIP_DOWNLOAD, "-d", download],
                                 capture_output=True, text=True, timeout=180)
        except subprocess.TimeoutExpired:
            return f"`{' '.join(PIP_DOWNLOAD)}` took over 180 s"
        archives = sorted(Path(download).glob("natten-*.tar.gz"))
        if not archives:
            last = (run.stderr or run.stdout).strip().splitlines()[-1:] or ["no output"]
            return f"`{' '.join(PIP_DOWNLOAD)}` failed: {last[0]}"
        return unpack(archives[0], cache / NATTEN_VERSION)


@pytest.fixture(scope="module")
def natten_mask(request):
    """NATTEN's mask for (grid, size, stride, dilation, causal): its own `get_na_flex_mask` (the
    FlexAttention backend's mask_mod) evaluated by torch's `create_mask`, with NATTEN's compiled
    extension stubbed out (NATTEN then imports its own Python stubs for the kernels)."""
    cache = getattr(request.config, "cache", None)  # none under -p no:cacheprovider
    src = _natten_src(cache.mkdir("natten-sdist") if cache else Path(tempfile.gettempdir()) / "patternc-natten")
    if isinstance(src, str):
        pytest.skip(f"NATTEN {NATTEN_VERSION}'s source can't be obtained ({src}); set PATTERNC_NATTEN_SRC "
                    f"to its sdist (`{' '.join(PIP_DOWNLOAD)}`)")
    if "natten" in sys.modules:
        pytest.skip("another natten is imported already; run the oracle test on its own")
    from torch.nn.attention.flex_attention import create_mask

    sys.modules["natten.libnatten"] = None  # the compiled extension: `from natten import libnatten` fails
    sys.path.insert(0, str(src))
    try:
        from natten.backends.flex import get_na_flex_mask
    finally:
        sys.path.remove(str(src))
    assert Path(sys.modules["natten"].__file__).is_relative_to(src)

    def mask(grid, K, s, r, causal):
        P = math.prod(grid)
        block_mask = get_na_flex_mask("cpu", len(grid), grid, K, s, r, causal)
        return create_mask(block_mask.mask_mod, None, None, P, P, device="cpu")[0, 0].numpy()

    return mask


@pytest.mark.parametrize("ndim,max_tokens", [(1, 120), (2, 200), (3, 200)])
@settings(max_examples=examples(60))
@given(data=st.data())
@example(data=None)  # the issue's cases first
def test_natten_oracle(natten_mask, ndim, max_tokens, data):
    """patternc's mask and the numpy restatement against NATTEN's own mask code."""
    cases = [c for c in ISSUE_CASES if len(c[0]) == ndim] if data is None else \
        [data.draw(neighborhood_case(ndim, max_tokens))]
    for grid, K, s, r, causal in cases:
        text = neighborhood_text(grid, K, s, r, causal, scalar_ok=False)
        want = natten_mask(grid, K, s, r, causal)
        P = math.prod(grid)
        same(mask_of(text, P, P)[0], want, f"{text} (NATTEN {NATTEN_VERSION})")
        same(neighborhood_reference(grid, K, s, r, causal), want, f"the restatement of {text}")
