"""Context parallelism (`patternc.distributed`) on CPU: 2 and 4 processes over gloo, each holding a
shard of the sequence (ragged, zigzag, layout-balanced), against the single-process fp64
reference (`patternc.reference_attention` and autograd of it): outputs, LSE, and the gradients of
q, k and v gathered from every rank. The exchange plan against the tiles `Pattern.mask` implies,
computed here from the mask. Workers are forked (no re-import of torch per process) and write
their shards to files the test process compares."""
from __future__ import annotations

import math
import os
import sys

import numpy as np
import pytest
import torch
from reference import assert_close, reference_grads

import patternc
from patternc.distributed import Sharding, plan, shard, unshard
from patternc.errors import PatternError

# (name, pattern, length, heads, kv_heads, batch): fp32 at the dense path's 64 x 32 tiles (shards on 64s)
CASES = [
    ("window", "window(20)", 300, 2, 2, 1),
    ("sinks", "causal & (window(40) | sink(4))", 300, 2, 1, 1),  # GQA: 2 query heads per kv head
    ("dilated", "causal & window(12, dilation=5)", 300, 2, 2, 2),
    ("strided", "causal & (window(16) | strided(48))", 300, 2, 2, 1),
    ("blocked", "blocked(96)", 300, 2, 2, 1),
    ("causal", "causal", 300, 2, 2, 1),
    ("heads", "causal & (window(24) | columns(4, phase=h % 4, block=32))", 300, 3, 3, 1),
    ("grid", "grid(16, 20)\nneighborhood((3, 5))", 320, 2, 2, 1),
    ("sections", "pattern mixed:\n    heads 0..0: causal & window(70)\n    heads 1..2: causal & (window(12) | sink(8))",
     300, 3, 3, 1),
]
SHARDS = {2: [128, 172], 4: [64, 128, 64, 44]}  # ragged: unequal, and the last one ends inside a tile
GRID_SHARDS = {2: [192, 128], 4: [64, 128, 64, 64]}


def _inputs(name, N, H, Hkv, B, D=16):
    g = torch.Generator().manual_seed(sum(map(ord, name)) + N)
    q = torch.randn(B, H, N, D, generator=g)
    k, v = (torch.randn(B, Hkv, N, D, generator=g) for _ in range(2))
    dout, dlse = torch.randn(B, H, N, D, generator=g), torch.randn(B, H, N, generator=g)
    return q, k, v, dout, dlse


def _jobs(world, interpret=False):
    """(name, pattern, N, H, Hkv, B, sharding spec, with dlse) per run."""
    if interpret:  # the generated kernels in Triton's interpreter: 16 x 16 tiles, tiny sizes
        return [("i-window", "causal & window(20)", 72, 2, 2, 1, [32, 40], True),
                ("i-zigzag", "causal & (window(24) | sink(3))", 80, 2, 1, 1, "zigzag16", False),
                ("i-dilated", "causal & window(6, dilation=2)", 128, 2, 2, 1, [64, 64], True)]  # own blocks by class
    jobs = []
    for name, text, N, H, Hkv, B in CASES:
        lengths = (GRID_SHARDS if name == "grid" else SHARDS)[world]
        jobs.append((name, text, N, H, Hkv, B, lengths, name == "sinks"))
    jobs.append(("causal-zigzag", "causal", 596, 4, 2, 1, "zigzag", True))  # its own shapes (the lengths cache)
    jobs.append(("sinks-balanced", "causal & (window(40) | sink(4))", 596, 2, 1, 1, "balanced", False))
    if world == 4:  # a rank holding nothing
        jobs.append(("empty-rank", "window(20) | sink(2)", 300, 2, 2, 3, [128, 0, 128, 44], False))
    return jobs


def _sharding(spec, text, N, world, H):
    if spec.startswith("zigzag") if isinstance(spec, str) else False:
        return Sharding.zigzag(N, world, int(spec[6:] or 64))
    if spec == "balanced":
        return Sharding.balanced(patternc.compile(text), N, world, 64, heads=H)
    return Sharding.contiguous(spec)


def _worker(rank, world, jobs, out_dir, interpret):
    import torch.distributed as dist

    from patternc.distributed import context_parallel_attention, gather

    torch.set_num_threads(1)
    if interpret:
        os.environ["TRITON_INTERPRET"] = "1"
        os.environ["PATTERNC_CACHE_DIR"] = os.path.join(out_dir, f"cache{rank}")
    if interpret:
        from patternc.runtime.blocks import _dense

        assert not _dense(), "the interpreter run must run the generated kernels"
    rendezvous = f"file://{os.path.join(out_dir, 'rendezvous')}"  # a fresh file per run: no port to race for
    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=world)
    try:
        results = {}
        for name, text, N, H, Hkv, B, spec, with_lse in jobs:
            sharding = _sharding(spec, text, N, world, H)
            q, k, v, dout, dlse = (shard(x, sharding, rank) for x in _inputs(name, N, H, Hkv, B))
            q, k, v = (x.clone().requires_grad_() for x in (q, k, v))
            # shard lengths learned by the all_gather (cached per local shape: the grid's shards would
            # hit shapes of the other cases' on some ranks, so it names its lengths), or given
            if isinstance(spec, str):
                how = sharding if spec == "balanced" else "zigzag"
            else:
                how = spec if name in ("grid", "empty-rank") else None
            out, lse = context_parallel_attention(q, k, v, text, sharding=how, return_lse=True)
            loss = (out * dout).sum() + ((torch.where(torch.isinf(lse), 0.0, lse) * dlse).sum() if with_lse else 0)
            loss.backward()
            results[name] = {"out": out.detach(), "lse": lse.detach(), "dq": q.grad, "dk": k.grad, "dv": v.grad,
                             "gathered": gather(out.detach(), sharding)}  # every rank: the whole output
        # a shard boundary off the tiles, and a routed pattern: clear errors, raised on every rank alike
        errors = []
        x = torch.randn(1, 2, 40 if rank == 0 else 60, 16)
        for bad in ("causal & window(8)", "causal & topk(2, block=16)"):
            try:
                context_parallel_attention(x, x, x, bad)
            except PatternError as e:
                errors.append(str(e))
        results["errors"] = errors
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _run(world, tmp_path, interpret=False):
    jobs = _jobs(world, interpret)
    torch.multiprocessing.start_processes(_worker, args=(world, jobs, str(tmp_path), interpret),
                                          nprocs=world, start_method="fork" if sys.platform != "win32" else "spawn")
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    for name, text, N, H, Hkv, B, spec, with_lse in jobs:
        sharding = _sharding(spec, text, N, world, H)
        q, k, v, dout, dlse = _inputs(name, N, H, Hkv, B)
        got = {key: unshard([r[name][key] for r in results], sharding) for key in ("out", "lse", "dq", "dk", "dv")}
        assert all(torch.equal(r[name]["gathered"], got["out"]) for r in results), f"{name}: gather"
        pattern = patternc.compile(text)
        want, want_lse = patternc.reference_attention(q.double(), k.double(), v.double(), pattern, return_lse=True)
        assert_close(got["out"], want, 1e-5, f"{name} ({world} ranks) out")
        assert_close(got["lse"], want_lse, 1e-5, f"{name} ({world} ranks) lse")
        dq, dk, dv = reference_grads(q, k, v, pattern, dout, dlse if with_lse else None)
        for key, ref in (("dq", dq), ("dk", dk), ("dv", dv)):
            assert_close(got[key], ref, 1e-5, f"{name} ({world} ranks) {key}")
    return results


@pytest.mark.parametrize("world", [2, 4])
def test_context_parallel_equals_one_process(world, tmp_path):
    results = _run(world, tmp_path)
    errors = results[0]["errors"]
    assert "not on a multiple of the 64 x 32 kernel tiles" in errors[0] and "shard lengths [40, 60" in errors[0]
    assert "routed patterns" in errors[1]


def test_context_parallel_in_the_interpreter(tmp_path):
    """The same through the generated kernels (Triton's interpreter), forward and backward; the
    dilated rule's own blocks run class by class (residue order), the others in natural order."""
    from patternc.layout.blocks import block_layout

    dilated = patternc.compile("causal & window(6, dilation=2)")
    assert block_layout(dilated, 128, 2, 16, 16, 64, 64, 64, 64, "cpu", "auto").permutation.modulus == 2
    assert block_layout(dilated, 128, 2, 16, 16, 48, 16, 32, 32, "cpu", "auto").permutation is None  # not diagonal
    _run(2, tmp_path, interpret=True)


# ------------------------------------------------------------------------------ the plan


def _tiles_needed(text, sharding, H, bm, bn):
    """{(src, dst): set of key tokens} from the mask: the key tiles of src's shard in which any of
    dst's queries sees any key, on any head, as token sets."""
    N = sharding.length
    mask = patternc.compile(text).mask(N, heads=H).numpy().any(0)  # [N, N]
    owner = np.empty(N, int)
    for rank, a, b, _ in sharding.segments():
        owner[a:b] = rank
    need = {}
    for dst in range(sharding.world):
        rows = mask[owner == dst]
        for kt in range(-(-N // bn)):
            cols = slice(kt * bn, min((kt + 1) * bn, N))
            src = owner[kt * bn]
            if src != dst and rows[:, cols].any():
                need.setdefault((int(src), dst), set()).update(range(cols.start, cols.stop))
    return need


@pytest.mark.parametrize("text", [text for _, text, *_ in CASES] + ["causal & (window(40) | sink(4)) - blocked(128)"])
@pytest.mark.parametrize("shards", ["ragged4", "zigzag2", "zigzag4", "balanced3"])
def test_plan_moves_what_the_mask_needs(text, shards):
    N = 320 if "grid" in text else 300
    H, bm, bn = 3, 64, 32
    sharding = {"ragged4": Sharding.contiguous(GRID_SHARDS[4] if "grid" in text else SHARDS[4]),
                "zigzag2": Sharding.zigzag(N, 2, 64), "zigzag4": Sharding.zigzag(N, 4, 64),
                "balanced3": Sharding.balanced(patternc.compile(text), N, 3, 64, heads=H)}[shards]
    p = plan(text, sharding, heads=H, head_dim=16, dtype=torch.float32, tiles=(bm, bn))
    need = _tiles_needed(text, sharding, H, bm, bn)
    got = {}
    for t in p.transfers:
        tokens = [tok for r in t.runs for tok in range(r.start, r.stop)]
        assert len(tokens) == len(set(tokens)) == t.tokens, "a run sent twice"
        got[(t.src, t.dst)] = set(tokens)
        for r in t.runs:  # each run is contiguous in the sender's shard, where the plan says
            local = sharding.order_index()[sum(sharding.lengths[:t.src]) + r.src_offset:][:r.tokens]
            assert local.tolist() == list(range(r.start, r.stop))
    assert got == need
    token_bytes = 2 * H * 16 * 4
    for r in range(sharding.world):
        received = sum(len(s) for (src, dst), s in need.items() if dst == r)
        assert p.bytes_received(r) == received * token_bytes
        assert p.bytes_sent(r) == sum(len(s) for (src, dst), s in need.items() if src == r) * token_bytes
    # the blocks' tiles add up to the layout's visited tiles
    assert sum(p.tiles(r) for r in range(sharding.world)) == int((patternc.compile(text).layout(
        N, heads=H, block_m=bm, block_n=bn, order="natural").block_map() > 0).sum())


def test_sliding_window_moves_only_neighbour_tiles():
    N, world, tile = 64 * 64, 8, 64
    p = plan("causal & window(50)", [N // world] * world, heads=4, head_dim=128, dtype="bfloat16", tiles=(tile, tile))
    assert {(t.src, t.dst) for t in p.transfers} == {(r, r + 1) for r in range(world - 1)}
    assert all(t.tokens == tile and t.runs[0].start == (t.dst * N // world) - tile for t in p.transfers)
    both = plan("window(50)", [N // world] * world, heads=4, head_dim=128, dtype="bfloat16", tiles=(tile, tile))
    assert {(t.src, t.dst) for t in both.transfers} == {(r, r + 1) for r in range(world - 1)} | {
        (r + 1, r) for r in range(world - 1)}
    assert max(both.bytes_received(r) for r in range(world)) == 2 * tile * 2 * 4 * 128 * 2
    # against the ring: every other shard's keys and values
    assert both.ring_bytes_received(1) == (N - N // world) * 2 * 4 * 128 * 2
    sinks = plan("causal & (window(50) | sink(4))", [N // world] * world, heads=4, tiles=(tile, tile))
    assert [sinks.tokens_received(r) for r in range(world)] == [0] + [2 * tile] * (world - 1)  # a sink tile, a window tile


def test_sharding_helpers():
    x = torch.randn(2, 3, 300, 4)
    for s in (Sharding.contiguous([64, 128, 64, 44]), Sharding.zigzag(300, 2, 64), Sharding.zigzag(1000, 4, 64),
              Sharding.balanced(patternc.compile("causal"), 300, 3, 64)):
        y = x if s.length == 300 else torch.randn(1, 1, s.length, 2)
        parts = [shard(y, s, r) for r in range(s.world)]
        assert sum(p.shape[2] for p in parts) == s.length
        assert torch.equal(unshard(parts, s), y)
        assert torch.equal(torch.cat(parts, 2), y[:, :, torch.as_tensor(s.order_index())])
        s.check(64, 32)
    z = Sharding.zigzag(1024, 4, 64)
    assert z.ranges[0] == ((0, 128), (896, 1024)) and z.ranges[3] == ((384, 640),)  # the middle chunks joined
    with pytest.raises(PatternError, match="not on a multiple of the 64 x 64 kernel tiles"):
        Sharding.contiguous([100, 100]).check(64, 64)
    with pytest.raises(PatternError, match="routed patterns"):
        plan("causal & topk(2, block=64)", [128, 128], heads=2)
    # causal: zigzag evens the visited tiles out where contiguous shards don't
    causal = patternc.compile("causal")
    tiles = {name: [plan(causal, s, heads=1, tiles=(64, 64)).tiles(r) for r in range(4)]
             for name, s in (("contiguous", Sharding.contiguous([1024] * 4)), ("zigzag", Sharding.zigzag(4096, 4, 64)),
                             ("balanced", Sharding.balanced(causal, 4096, 4, 64, heads=1)))}
    assert max(tiles["contiguous"]) / min(tiles["contiguous"]) > 6
    assert max(tiles["zigzag"]) / min(tiles["zigzag"]) < 1.1
    assert max(tiles["balanced"]) / min(tiles["balanced"]) < 1.2
    assert math.isclose(sum(tiles["zigzag"]), sum(tiles["contiguous"]))


# ------------------------------------------------------------------------------ the simulator


def test_simulator_predicts_the_exchange_and_the_order():
    from patternc.distributed import choose_sharding
    from patternc.sim.distributed import LINK_GBPS, compare_shardings, simulate_context_parallel

    swa = simulate_context_parallel("causal & window(1024)", 32768, 2, heads=4, head_dim=128, dtype="bfloat16")
    token = 2 * 4 * 128 * 2  # keys and values, 4 heads, D 128, bf16
    assert [r.bytes_received for r in swa.ranks] == [0, 1024 * token]  # the window's reach into rank 0, nothing else
    assert swa.ring_bytes_received == 16384 * token
    assert swa.ranks[1].exchange_ms * 1e3 > 1024 * token / (LINK_GBPS * 1e3)  # the link time, and a latency
    assert swa.ranks[1].exchange_ms < swa.ranks[1].own_ms  # hidden behind the own block
    assert 0.6 < swa.efficiency <= 1.0 and swa.ms < swa.single_ms
    d = swa.to_dict()
    assert d["ranks"][1]["bytes_received"] == 1024 * token and "sharding" not in d
    # causal: contiguous shards leave rank 0 idle for half the time; zigzag or the balanced cut fix it
    causal = compare_shardings("causal", 16384, 2, heads=16)
    assert next(iter(causal)) in ("zigzag", "balanced")
    assert causal["contiguous"].ms > 1.3 * min(p.ms for p in causal.values())
    assert choose_sharding("causal", 16384, 4, heads=2).order in ("zigzag", "balanced")
    assert choose_sharding("causal & window(512)", 16384, 2, heads=2).order != "zigzag"


@pytest.mark.parametrize("kernel", [False, True], ids=["torch", "triton"])
def test_merge_by_lse(request, kernel):
    """The LSE merge (a Triton kernel on GPUs and in the interpreter) against the formula, with
    rows that only one side, both or neither has seen."""
    from patternc.distributed.merge import merge_into

    if kernel:
        request.getfixturevalue("interpret")
    g = torch.Generator().manual_seed(5)
    out, part = torch.randn(2, 3, 40, 16, generator=g), torch.randn(2, 3, 24, 16, generator=g)
    lse, part_lse = torch.randn(2, 3, 40, generator=g), torch.randn(2, 3, 24, generator=g)
    lse[:, :, 10:14] = part_lse[:, :, 0:2] = part_lse[:, :, 4:6] = float("-inf")  # rows 10, 11: neither side
    out[:, :, 10:14] = 0
    want_lse = torch.logaddexp(lse[:, :, 10:34], part_lse)
    w = torch.exp(lse[:, :, 10:34] - want_lse).nan_to_num(0), torch.exp(part_lse - want_lse).nan_to_num(0)
    want = w[0][..., None] * out[:, :, 10:34] + w[1][..., None] * part
    before = out.clone(), lse.clone()
    merge_into(out, lse, 10, 34, part, part_lse)
    assert torch.allclose(out[:, :, 10:34], want, atol=1e-6) and torch.allclose(lse[:, :, 10:34], want_lse, atol=1e-6)
    assert torch.equal(out[:, :, :10], before[0][:, :, :10]) and torch.equal(lse[:, :, 34:], before[1][:, :, 34:])
    assert not out.isnan().any() and (out[:, :, 10:12] == 0).all()
