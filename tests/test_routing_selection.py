"""The routing kernels (`patternc/runtime/routing.py`) against plain Python: the index tables one
call writes equal, entry for entry and in order, the tables built by loops from the plan and the
reference choice (`runtime.routed.select`); the choice itself equals the reference's. Also: a
call is two kernel launches and a few allocations, with no host synchronisation, and the
kernels compile for sm_90 (offline, no GPU needed). Runs under TRITON_INTERPRET=1."""
from __future__ import annotations

import pytest
import torch

import patternc
from patternc.layout import FULL, PARTIAL
from patternc.layout.routed import static_variants
from patternc.runtime.routed import SELECTED_BIT, routed_plan, select


@pytest.fixture
def routing(interpret):
    """patternc.runtime.routing, its kernels in Triton's interpreter (imported, like patternc
    does, on first use: Triton decides when a kernel is defined whether it is interpreted)."""
    from patternc.runtime import routing

    return routing


def tables_reference(plan, chosen, M, block):
    """(full, partial) lists per [batch x head][tile row], as the kernels must write them: the
    static part's candidates classed by their key block's choice, then the candidates of the
    chosen key blocks (with query=token: chosen by any query row of the tile) the static part
    lacks, ascending. `chosen`: bool [B, H, rows, nK] (query blocks, or tokens)."""
    B, H = chosen.shape[:2]
    Mt, per_head = plan.static_ptr.shape[1] - 1, plan.cand_kt.shape[0] > 1
    static_ptr, static_kt, static_cls = plan.static_ptr.tolist(), plan.static_kt.tolist(), plan.static_cls.tolist()
    block_ptr, cand_kt, cand_cls = plan.block_ptr.tolist(), plan.cand_kt.tolist(), plan.cand_cls.tolist()
    token = plan.query == "token"
    out = []
    for b in range(B):
        for h in range(H):
            ph, rows = (h if per_head else 0), []
            for row in range(Mt):
                if token:  # any | all << 1 over the tile's query rows
                    tile = chosen[b, h, row * plan.block_m:min((row + 1) * plan.block_m, M)]
                    route = (tile.any(0).int() | (tile.all(0).int() << 1)).tolist()
                else:
                    route = chosen[b, h, row * plan.block_m // block].int().tolist()
                full, part = [], []

                def add(kt, cls, r):
                    mine, other = cls & 3, cls >> 2
                    if token:
                        mixed = FULL if mine == FULL and other == FULL else (PARTIAL if mine or other else 0)
                        kind, entry = (mine if r >= 2 else other if r == 0 else mixed), kt
                    else:
                        kind, entry = (mine if r else other), kt | (SELECTED_BIT if r else 0)
                    if kind == FULL:
                        full.append(kt)
                    elif kind == PARTIAL:
                        part.append(entry)

                for c in range(static_ptr[ph][row], static_ptr[ph][row + 1]):
                    kt = static_kt[ph][c]
                    add(kt, static_cls[ph][c], route[kt * plan.block_n // block])
                for j, r in enumerate(route):
                    for c in range(block_ptr[ph][row][j], block_ptr[ph][row][j + 1]) if r else ():
                        if cand_cls[ph][c] >> 2 == 0:  # the static part has the others
                            add(cand_kt[ph][c], cand_cls[ph][c], r)
                rows.append((full, part))
            out.append(rows)
    return out


def written(layout):
    """The same lists from a call's tables (entries past a row's count are unwritten)."""
    full = [[t[:n] for t, n in zip(tab.tolist(), num.tolist())]
            for tab, num in zip(layout["full_kv_indices"], layout["full_kv_num_blocks"])]
    part = [[t[:n] for t, n in zip(tab.tolist(), num.tolist())]
            for tab, num in zip(layout["kv_indices"], layout["kv_num_blocks"])]
    return [list(zip(f, p)) for f, p in zip(full, part)]


CASES = [  # text, B, H, Hkv, M, N, tiles, head_dim
    ("causal & topk(3, block=32)", 1, 2, 2, 200, 200, (16, 16), 16),  # the first blocks take all: not pooled
    ("causal & topk(2, block=32)", 2, 4, 2, 96, 160, (32, 16), 32),  # M < N, GQA
    ("causal & topk(3, block=32)", 1, 2, 1, 160, 96, (16, 32), 16),  # M > N: some query blocks own none
    ("topk(2, block=16)", 1, 2, 2, 80, 100, (16, 16), 16),
    ("topk(4, block=16)", 1, 2, 2, 40, 48, (16, 16), 16),  # every block chosen: nothing competes
    ("causal & topk(2, block=64)", 1, 2, 2, 48, 48, (16, 16), 16),  # one key block: nothing to pool
    ("causal & topk(1, block=16)", 1, 2, 2, 64, 64, (16, 16), 16),  # the own block only
    ("causal & (window(20) | topk(2, block=32) | sink(4))", 1, 2, 2, 128, 128, (16, 16), 16),  # a static part
    ("causal & topk(2, block=32) - sink(8)", 1, 2, 2, 100, 100, (16, 32), 16),
    ("causal & topk(threshold=0.5, block=16)", 1, 2, 2, 100, 100, (16, 16), 16),
    ("topk(3, block=16, threshold=0.3, shared=group)", 1, 4, 2, 64, 80, (16, 16), 16),
    ("causal & (topk(3, block=32) | random(1, block=16, seed=2))", 1, 2, 2, 128, 128, (32, 16), 16),
    ("pattern p(heads=2):\n    causal & (window(8 + 24 * h) | topk(2, block=32))", 1, 2, 2, 128, 128, (16, 16), 16),
    ("window(3, block=16) | topk(2, block=48)", 1, 2, 2, 144, 144, (16, 16), 16),  # 3 tiles per block
    ("causal & topk(3, block=16, query=token)", 1, 2, 2, 64, 80, (16, 16), 16),
    ("causal & (window(20) | topk(2, block=32, query=token, threshold=0.6, shared=group))", 1, 4, 2, 96, 96,
     (16, 32), 16),
    ("full - topk(2, block=16, query=token)", 1, 2, 1, 48, 64, (16, 16), 16),
]


@pytest.mark.parametrize("text, B, H, Hkv, M, N, tiles, D", CASES)
def test_tables_match_the_plan_and_the_reference_choice(routing, text, B, H, Hkv, M, N, tiles, D):
    pattern = patternc.compile(text)
    block = static_variants(pattern)[3]
    g = torch.Generator().manual_seed(M * 7 + N)
    q, k = torch.randn(B, H, M, D, generator=g), torch.randn(B, Hkv, N, D, generator=g)
    plan = routed_plan(pattern, M, N, H, *tiles, "cpu")
    layout = routing.route(plan, q, k)
    chosen = select(q, k, pattern)
    if plan.query == "block":
        assert torch.equal(layout["block_choice"], chosen)
    else:
        bits = (layout["choice_words"][..., None] >> torch.arange(32)) & 1
        assert torch.equal(bits.flatten(-2)[..., :chosen.shape[-1]].bool().view(chosen.shape), chosen)
    assert written(layout) == tables_reference(plan, chosen, M, block)


def test_one_query_block_per_program_beyond_the_product(routing, monkeypatch):
    """Past DOT_KEY_BLOCKS key blocks a program scores one query block by sums of products."""
    monkeypatch.setattr(routing, "DOT_KEY_BLOCKS", 8)
    for text in ("causal & topk(3, block=16)", "topk(threshold=0.4, block=16)"):
        pattern = patternc.compile(text)
        g = torch.Generator().manual_seed(5)
        q, k = torch.randn(1, 2, 160, 16, generator=g), torch.randn(1, 2, 160, 16, generator=g)
        plan = routed_plan(pattern, 160, 160, 2, 16, 16, "cpu")
        layout = routing.route(plan, q, k)
        chosen = select(q, k, pattern)
        assert torch.equal(layout["block_choice"], chosen)
        assert written(layout) == tables_reference(plan, chosen, 160, 16)


def test_ties_go_to_the_lower_block(routing):
    q = torch.ones(1, 1, 128, 16)
    k = torch.ones(1, 1, 128, 16)  # every block scores the same
    pattern = patternc.compile("causal & topk(3, block=16)")
    layout = routing.route(routed_plan(pattern, 128, 128, 1, 16, 16, "cpu"), q, k)
    for i in range(8):
        assert torch.nonzero(layout["block_choice"][0, 0, i]).flatten().tolist() == sorted({i, *range(min(i, 2))})


class _Launches:
    """Records launches of a routing kernel instead of running them (patched into the module
    for one test)."""

    def __init__(self, name, log):
        self.name, self.log = name, log

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.log.append(self.name)


@pytest.mark.parametrize("text", ["causal & topk(4, block=32)", "causal & topk(2, block=32, query=token)"])
def test_a_call_is_two_launches_and_no_host_synchronisation(routing, monkeypatch, text):
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(func.__name__)
            return func(*args, **(kwargs or {}))

    launches = []
    for name in ("pool_blocks", "select_blocks", "select_tokens"):
        monkeypatch.setattr(routing, name, _Launches(name, launches))
    pattern = patternc.compile(text)
    q, k = torch.randn(1, 2, 128, 16), torch.randn(1, 2, 128, 16)
    plan = routed_plan(pattern, 128, 128, 2, 16, 16, "cpu")
    with Ops() as ops:  # the host's part of a call
        routing.route(plan, q, k)
    assert launches == ["pool_blocks", "select_blocks" if "token" not in text else "select_tokens"]
    # means, tables, counts, the choice (per token: words and tile states) and a scratch list
    assert ops.ops.count("empty.memory_format") == (6 if "token" in text else 5), ops.ops
    # no copies, no synchronisation (detach: the dispatch mode's own, around a view)
    assert set(ops.ops) <= {"empty.memory_format", "select.int", "view.dtype", "detach.default"}, ops.ops


COMPILE = """
import sys, torch, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import patternc
from patternc.runtime import routing
from patternc.runtime.routed import routed_plan

launches = []
class Capture:
    def __init__(self, kernel):
        self.kernel = kernel
    def __getitem__(self, grid):
        return lambda *args, **kwargs: launches.append((self.kernel, args, kwargs))

for name in ("pool_blocks", "select_blocks"):
    setattr(routing, name, Capture(getattr(routing, name)))
plan = routed_plan(patternc.compile("causal & topk(4, block=512)"), 8192, 8192, 16, 128, 128, "cpu")
q = torch.empty(1, 16, 8192, 128, dtype=torch.bfloat16, device="meta")
routing.route(plan, q, q)
types = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.int32: "i32", torch.uint8: "u8", torch.int8: "i8"}
assert len(launches) == 2
for kernel, args, kwargs in launches:
    options = {key: kwargs.pop(key) for key in ("num_warps", "num_stages") if key in kwargs}
    signature, attrs = {}, {}
    for i, (name, value) in enumerate(zip(kernel.arg_names, args)):
        if isinstance(value, torch.Tensor):
            signature[name] = "*" + types[value.dtype]
        else:
            signature[name] = "fp32" if isinstance(value, float) else "i32"
        if isinstance(value, torch.Tensor) or (isinstance(value, int) and value % 16 == 0):
            attrs[(i,)] = [["tt.divisibility", 16]]  # as Triton's launcher specialises them
    signature.update({name: "constexpr" for name in kwargs})
    compiled = triton.compile(ASTSource(kernel, signature, kwargs, attrs), target=GPUTarget("cuda", 90, 32),
                              options=options)
    print(kernel.__name__, compiled.metadata.shared)
"""


def test_the_kernels_compile_for_hopper(tmp_path):
    """Both kernels of a MoBA call at 8k tokens (bf16, 16 heads, D 128, 128x128 tiles) through
    Triton's sm_90 compiler, with the arguments `route` passes: no GPU needed. In a process of
    its own: Triton's language is set up for the interpreter in this one."""
    import os
    import subprocess
    import sys

    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.compiler import ASTSource  # noqa: F401
    except ImportError as e:  # pragma: no cover - another triton
        pytest.skip(f"triton's compiler API is not there: {e}")
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    done = subprocess.run([sys.executable, "-c", COMPILE], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    shared = dict(line.split() for line in done.stdout.split("\n") if line.strip())
    assert set(shared) == {"pool_blocks", "select_blocks"}
    assert all(int(v) <= 227 * 1024 for v in shared.values()), shared  # what one Hopper program may have
