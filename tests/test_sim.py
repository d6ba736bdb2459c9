"""The simulator on the CPU: the model's invariants, the profile format, the fit, sweeps and the CLI.

Nothing here asserts on wall time or on agreement with a GPU; `benchmarks/validate_sim.py`
compares predictions with measured runs.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import patternc
from patternc.cli import main
from patternc.errors import PatternError
from patternc.sim import Profile, parse_sweep, simulate, sweep
from patternc.sim.fit import Measurement, fit_kernel, nnls, skeleton
from patternc.sim.model import Shape, Workload, dense_ms, memory_floor_us
from patternc.sim.ops import predicate_ops
from patternc.sim.profile import config_name, parse_config
from patternc.sim.schedule import list_schedule, longest_first

from conftest import examples

H100 = Profile.load("h100")
TMA64 = "64x64/w4/s3/tma"
CONFIGS = ("64x64/w4/s3/tma", "128x64/w8/s3/pointers", "128x128/w8/s3/tma")


# --------------------------------------------------------------------------- profiles


def test_shipped_profile_loads_and_round_trips(tmp_path):
    p = Profile.load("h100")
    assert p.sm_count == 132 and p.reference == {"head_dim": 128, "dtype": "bfloat16"}
    assert {c.name for c in p.configs} >= {"64x64/w4/s3/tma", "128x128/w8/s3/pointers"}
    assert all(c.full_tile_us > 0 and c.ctas_per_sm >= 1 for c in p.configs)
    assert p.fit["calibration_patterns"], "the profile says which rows it was fitted on"
    again = Profile.load(p.write(tmp_path / "copy.json"))
    assert again.to_dict() == p.to_dict()


def test_profiles_without_a_tma_table_cost_charge_both_paths_alike(tmp_path):
    """Profiles written before the TMA path's index-table cost was told apart still load: their
    one table cost stands for both memory paths, so they predict what they did."""
    data = H100.to_dict()
    data["kernel"].pop("table_tile_tma_us")
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data))
    old = Profile.load(path)
    assert old.kernel["table_tile_tma_us"] == old.kernel["table_tile_us"]
    assert "table_tile_tma_us" in old.to_dict()["kernel"]


def test_shipped_h200_profile_says_where_it_comes_from():
    p = Profile.load("h200")
    assert p.sm_count == 132 and p.device == "NVIDIA H200" and p.hbm_gbps > H100.hbm_gbps
    env = p.fit["environment"]
    assert env["card"] == "NVIDIA H200" and env["driver"] and env["torch"] and env["triton"] and p.fit["date"]
    assert p.fit["source"] == "patternc calibrate" and "calibrate.txt" in p.fit["refit"]
    assert p.kernel["table_tile_tma_us"] != p.kernel["table_tile_us"]
    assert simulate("causal & window(1024)", 8192, heads=4, device="h200").ms > 0


@pytest.mark.parametrize("change, field", [
    (lambda d: d.pop("sm_count"), "sm_count"),
    (lambda d: d["kernel"].update(program_us=-1), "kernel.program_us"),
    (lambda d: d["configs"][0].update(memory="smem"), "configs[0].memory"),
    (lambda d: d.update(configs=[]), "configs"),
    (lambda d: d["dense"].update(points=[]), "dense.points"),
    (lambda d: d.update(schema=99), "schema"),
])
def test_invalid_profiles_name_the_field(tmp_path, change, field):
    data = H100.to_dict()
    change(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(PatternError) as e:
        Profile.load(path)
    assert field in e.value.message and str(path) in e.value.message


def test_profile_lookup_errors(tmp_path):
    with pytest.raises(PatternError) as e:
        Profile.load("h10")
    assert "no device profile named 'h10'" in e.value.message and "h100" in e.value.hint
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(PatternError, match="not valid JSON"):
        Profile.load(tmp_path / "broken.json")
    with pytest.raises(PatternError, match="no device profile at"):
        Profile.load(tmp_path / "missing.json")


def test_config_text_round_trips():
    for text in CONFIGS + ("64x32/w4/s2/pointers/table",):
        assert config_name(parse_config(text)) == text
    assert parse_config("128x64") == {"block_m": 128, "block_n": 64, "num_warps": 4, "num_stages": 3,
                                      "memory": "pointers"}
    with pytest.raises(PatternError, match="tile config"):
        parse_config("128by64")


# --------------------------------------------------------------------------- predicate cost


def test_predicate_ops_counts_index_operations_once():
    assert predicate_ops("return kv_idx <= q_pos + (KV_LEN - Q_LEN)") == 2  # + and <=; the scalar part is free
    assert predicate_ops("vis_0 = (q_pos - kv_idx <= 7) & (q_pos - kv_idx >= -7)\nreturn vis_0") == 3  # shared q-k
    assert predicate_ops("return kv_idx // 64 % 16 == off_h % 16") == 2 + 2 + 1  # //, % by 2^k; off_h % 16 free
    assert predicate_ops("return floor_mod(q_pos - kv_idx, 3) == 0") == 1 + (2 * 5 + 1) + 1
    assert predicate_ops("return (q_pos >= 0) & (kv_idx >= 0)") == 2


# --------------------------------------------------------------------------- schedule


def test_list_schedule_waves_and_tail():
    assert list_schedule([1.0] * 10, 3) == 4.0  # four waves
    assert list_schedule([3, 1, 2, 2], 2) == 5.0
    assert longest_first([1, 2, 2, 3], 2) == 4.0  # longest first balances: 3+1, 2+2
    span, slot = longest_first(np.array([1.0, 2, 2, 3]), 2, assignment=True)
    loads = np.bincount(slot, weights=[1.0, 2, 2, 3])
    assert span == loads.max() == 4.0


@settings(max_examples=examples(60))
@given(st.lists(st.floats(0.1, 10), min_size=1, max_size=40), st.integers(1, 8), st.data())
def test_longest_first_never_shrinks_when_work_grows(work, slots, data):
    work = np.array(work)
    grown = work.copy()
    i = data.draw(st.integers(0, len(work) - 1))
    grown[i] += data.draw(st.floats(0.01, 5))
    extra = data.draw(st.lists(st.floats(0.1, 10), max_size=3))
    grown = np.concatenate([grown, extra])
    assert longest_first(grown, slots) >= longest_first(work, slots) - 1e-9


# --------------------------------------------------------------------------- the model's invariants


@settings(max_examples=examples(40))
@given(st.integers(1, 4), st.integers(1, 24), st.sampled_from([False, True]), st.data())
def test_more_tiles_never_predict_less_time(heads, rows, table, data):
    """Model level: any row gaining full or partial tiles never lowers the predicted makespan."""
    n = heads * rows
    full = np.array(data.draw(st.lists(st.integers(0, 30), min_size=n, max_size=n)))
    partial = np.array(data.draw(st.lists(st.integers(0, 6), min_size=n, max_size=n)))
    more_full = full + np.array(data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)))
    more_partial = partial + np.array(data.draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)))
    slots = data.draw(st.integers(1, 16))
    ops = data.draw(st.integers(0, 40))

    def span(f, p):
        w = Workload(f, p, slots, table, 2, 4096 * 2, ops)
        return longest_first(w.times(H100.kernel, 1.0), slots)

    assert span(more_full, more_partial) >= span(full, partial) - 1e-9


def test_index_table_cost_follows_the_memory_path():
    """With table iteration a TMA config pays `table_tile_tma_us` per tile and a pointer config
    `table_tile_us`; with runs iteration neither is paid."""
    kernel = {**H100.kernel, "table_tile_us": 0.2, "table_tile_tma_us": 0.7}
    full, partial = np.array([5, 3]), np.array([0, 0])
    for memory, table in (("pointers", 0.2), ("tma", 0.7)):
        w = Workload(full, partial, 4, True, 0, 4096, 3, memory=memory)
        assert w.table_us(kernel) == table
        assert w.times(kernel, 1.0) == pytest.approx(kernel["program_us"] + full * (1.0 + table))
        runs = Workload(full, partial, 4, False, 2, 4096, 3, memory=memory)
        assert runs.table_us(kernel) == 0
        assert runs.times(kernel, 1.0) == pytest.approx(kernel["program_us"] + 2 * kernel["run_slot_us"] + full)


@pytest.mark.parametrize("config", ["64x64/w4/s3/tma/table", "64x64/w4/s3/pointers/table", TMA64])
def test_a_dearer_tma_table_slows_only_tma_configs_with_table_iteration(config):
    import dataclasses

    text = "causal & (window(256) | strided(256))"
    dearer = dataclasses.replace(H100, kernel={**H100.kernel,
                                               "table_tile_tma_us": H100.kernel["table_tile_tma_us"] + 1.0})
    base = simulate(text, 4096, heads=4, config=config)
    other = simulate(text, 4096, heads=4, config=config, device=dearer)
    if config.endswith("tma/table") or (config.endswith("tma") and base.chosen.iteration == "table"):
        assert other.ms > base.ms
    else:
        assert other.ms == base.ms


PATTERNS = ("causal", "causal & window(300)", "window(700)", "causal & (window(256) | strided(256))",
            "causal & (window(256) | sink(64))", "causal & (window(512) | columns(16, phase=h % 16, block=64))",
            "grid(16, 128)\nneighborhood((5, 5))")


@settings(max_examples=examples(12))
@given(st.sampled_from(PATTERNS), st.sampled_from(CONFIGS), st.integers(1, 3), st.sampled_from([1024, 2048]),
       st.sampled_from(["heads", "batch", "length"]))
def test_more_programs_never_predict_less_time(text, config, heads, S, grow):
    """Pattern level: more heads, a larger batch, or a longer sequence (every row of the shorter
    one is still there, with at least its tiles) never predicts less time."""
    if "grid" in text:  # the grid fixes the length
        S = 2048
        grow = "heads" if grow == "length" else grow
    a = simulate(text, S, heads=heads, config=config)
    b = simulate(text, S * (2 if grow == "length" else 1), heads=heads + (grow == "heads"),
                 batch=1 + (grow == "batch"), config=config)
    assert b.ms >= a.ms - 1e-12
    assert b.flex_ms >= a.flex_ms - 1e-12


@pytest.mark.parametrize("config", CONFIGS)
def test_bigger_blocks_never_predict_less_time(config):
    """Block-diagonal at multiples of the tile: all tiles full, more of them per row as b grows."""
    times = [simulate(f"blocked({b})", 4096, heads=4, config=config) for b in (128, 256, 512, 1024, 4096)]
    assert all(t.block_sparse for t in times)
    assert [t.ms for t in times] == sorted(t.ms for t in times)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("S, heads, batch", [(4096, 16, 1), (8192, 4, 2), (1000, 3, 1)])
def test_dense_pattern_predicts_the_dense_formula(config, S, heads, batch):
    """`full` in the profile's own terms: equal rows in ceil(programs / slots) waves."""
    p = simulate("full", S, heads=heads, batch=batch, config=config)
    c = p.chosen
    cfg = parse_config(config)
    entry = H100.tile_config(cfg)
    k = H100.kernel
    Nt, Mt = -(-S // cfg["block_n"]), -(-S // cfg["block_m"])
    row = k["program_us"] + 2 * k["run_slot_us"] + Nt * entry.full_tile_us  # one full run + the empty partial one
    waves = -(-(batch * heads * Mt) // (H100.sm_count * entry.ctas_per_sm))
    floor = memory_floor_us(Shape(S, S, heads, 128, "bfloat16", batch), H100)
    assert c.full == batch * heads * Mt * Nt and c.partial == 0 and c.block_sparse
    assert p.ms == pytest.approx((max(waves * row, floor) + k["launch_us"]) / 1e3, rel=1e-12)
    assert p.density == 1 and p.ideal_speedup == 1 and p.worst_tile_speedup == 1


def test_dense_time_is_the_profiles_measurement():
    for point in H100.dense["points"]:
        shape = Shape(point["M"], point["N"], H100.dense["heads"], 128, "bfloat16", H100.dense["batch"])
        assert dense_ms(shape, H100) == pytest.approx(point["ms"], rel=1e-9)
    # twice the heads, twice the time; in between two measured lengths, in between their times
    pts = H100.dense["points"]
    double = Shape(pts[0]["M"], pts[0]["N"], 2 * H100.dense["heads"], 128, "bfloat16")
    assert dense_ms(double, H100) == pytest.approx(2 * pts[0]["ms"], rel=1e-9)


@settings(max_examples=examples(8))
@given(st.integers(1, 15), st.sampled_from([2048, 4096]), st.sampled_from(CONFIGS))
def test_results_stable_under_head_permutation(shift, S, config):
    a = simulate("causal & (window(256) | columns(16, phase=h % 16, block=64))", S, heads=16, config=config)
    b = simulate(f"causal & (window(256) | columns(16, phase=(h + {shift}) % 16, block=64))", S, heads=16,
                 config=config)
    assert b.ms == pytest.approx(a.ms, rel=1e-12) and b.flex_ms == pytest.approx(a.flex_ms, rel=1e-12)
    assert b.chosen.full == a.chosen.full and b.chosen.partial == a.chosen.partial


def test_per_head_sections_stable_under_permutation(tmp_path):
    one = patternc.compile("pattern p:\n    heads 0..3: causal & window(512)\n    heads 4..7: blocked(256)\n")
    two = patternc.compile("pattern p:\n    heads 0..3: blocked(256)\n    heads 4..7: causal & window(512)\n")
    assert simulate(one, 4096).ms == pytest.approx(simulate(two, 4096).ms, rel=1e-12)


def test_chosen_config_is_the_fastest_candidate_and_bounds_hold():
    p = simulate("causal & window(1024)", 8192, heads=16)
    assert p.ms == min(c.ms for c in p.configs) == p.configs[0].ms
    assert [c.ms for c in p.configs] == sorted(c.ms for c in p.configs)
    import torch

    from patternc.runtime.autotune import candidates

    # one prediction per config the autotuner would time on a Hopper card
    assert len(p.configs) == len(candidates(128, torch.bfloat16, (9, 0))) and p.config_name == p.chosen.name
    assert p.speedup_vs_dense == pytest.approx(p.dense_ms / p.ms)
    assert p.ideal_speedup == pytest.approx(1 / p.chosen.density)
    assert 1 <= p.worst_tile_speedup <= p.ideal_speedup * 1.0001
    parts = p.chosen.full_tiles_ms + p.chosen.partial_tiles_ms + p.chosen.overhead_ms + p.chosen.tail_ms
    assert parts == pytest.approx(p.chosen.compute_ms)
    assert not p.slower_than_dense and not p.warnings


def test_block_sparse_and_slower_than_dense_flags():
    assert simulate("blocked(1024)", 8192, heads=4, config=TMA64).block_sparse
    assert not simulate("causal & window(1000)", 8192, heads=4, config=TMA64).block_sparse
    slow = simulate("causal", 4096, heads=16)  # the generated kernel vs cuDNN on a near-dense problem
    assert slow.ms > 0 and slow.flex_ms > 0
    tiny = simulate("window(64)", 512, heads=1)
    assert tiny.slower_than_dense and "slower than dense" in tiny.warnings[0]
    assert any("pessimistically" in n for n in tiny.notes)


def test_shapes_outside_the_profile_are_extrapolated_and_say_so():
    p = simulate("causal & window(1024)", 4096, heads=8, head_dim=64, dtype="fp16")
    assert any("extrapolated" in n for n in p.notes)
    assert p.config_name in {config_name(c.config) for c in p.configs}
    q = simulate("causal", 2048, heads=4, head_dim=128, dtype="fp32")
    assert any("not in the h100 profile" in n for n in q.notes)
    with pytest.raises(PatternError, match="head_dim 96"):
        simulate("causal", 2048, head_dim=96)
    with pytest.raises(PatternError, match="dtype"):
        simulate("causal", 2048, dtype="int8")
    with pytest.raises(PatternError, match="M must be"):
        simulate("causal", 0)


def test_routed_patterns_are_predicted_with_their_selection():
    p = simulate("causal & topk(4, block=512)", 8192, heads=4, config=TMA64)
    assert p.routed_ms > 0 and p.ms == pytest.approx(p.chosen.ms + p.routed_ms)
    assert any("routed" in n for n in p.notes)


@pytest.mark.parametrize("head_dim", [64, 128])
def test_routed_layouts_select_on_q_k_of_the_problems_head_dim(head_dim):
    """Routed blocks are chosen on random q, k with the problem's head_dim features: how alike
    different queries' choices are (so how many tiles a query tile visits) depends on it."""
    import patternc
    from patternc.sim.predict import _layout

    pattern = patternc.compile("causal & topk(2, block=256, query=token)")
    layout = _layout(pattern, 2048, 2048, 2, 64, 64, "auto", head_dim)
    assert layout.data["q"].shape[-1] == layout.data["k"].shape[-1] == head_dim
    assert _layout(pattern, 2048, 2048, 2, 64, 64, "auto", head_dim) is layout
    p = simulate(pattern, 2048, heads=2, head_dim=head_dim, config=TMA64)
    assert any(f"{head_dim} features" in n for n in p.notes)


def test_routed_kernels_iterate_index_tables():
    """The selection kernels write index tables at run time, so the kernel never loops over runs,
    however few runs the chosen blocks make."""
    for config in (TMA64, "128x128/w8/s3/pointers"):
        p = simulate("causal & topk(2, block=512)", 4096, heads=2, config=config)
        assert p.chosen.iteration == "table"
    assert simulate("causal & window(1024)", 4096, heads=2, config=TMA64).chosen.iteration == "runs"


# --------------------------------------------------------------------------- closed forms


@pytest.mark.parametrize("text, degree", [("causal", 2), ("causal & window(1024)", 1), ("blocked(512)", 1),
                                          ("causal & (window(256) | strided(256))", 2)])
def test_closed_form_agrees_with_simulate(text, degree):
    from patternc.sim import closed_form
    from patternc.sim.formulas import N

    f = closed_form(text, heads=8)
    assert f is not None and sympy_degree(f.time_us, N) == degree
    for n in (f.valid_from, f.valid_from + f.step, 4 * f.valid_from):
        p = simulate(text, n, heads=8, config=f.config)
        # the form is the fluid schedule: the simulation's time minus its last wave's imbalance
        assert f.time_ms(n) == pytest.approx(p.ms - p.chosen.tail_ms, rel=1e-6)
    if f.break_even is not None and f.break_even > f.valid_from:
        assert f.speedup_at(f.break_even) >= 1 > f.speedup_at(f.break_even - f.step)


def sympy_degree(expr, symbol):
    import sympy

    return sympy.Poly(expr, symbol).degree()


def test_no_closed_form_where_counts_are_not_polynomial():
    from patternc.sim import closed_form

    assert closed_form("causal & pow2(block=256)", heads=2) is None  # log N terms
    assert closed_form("grid(64, 64)\nneighborhood((5, 5))") is None  # the grid fixes N


# --------------------------------------------------------------------------- sweeps


def test_parse_sweep_forms_and_errors():
    assert parse_sweep("w=256..4096") == ("w", [256, 512, 1024, 2048, 4096])
    assert parse_sweep("w=256..1024:256") == ("w", [256, 512, 768, 1024])
    assert parse_sweep("block = 64,128") == ("block", [64, 128])
    for bad in ("w", "w=4096..256", "w=a..b", "=1..2", "w=1..10000000:1"):
        with pytest.raises(PatternError) as e:
            parse_sweep(bad)
        assert e.value.hint


SWA = "pattern swa(w = 1024):\n    causal & window(w)\n"


def test_sweep_ranks_points_consistently():
    pattern = patternc.compile(SWA)
    points = sweep(pattern, ["w=256..4096"], 8192, heads=8, config=TMA64)
    assert [p.ms for p in points] == sorted(p.ms for p in points)
    by_w = {p.values["w"]: p.ms for p in points}
    assert list(by_w) == [256, 512, 1024, 2048, 4096]  # wider windows cost more: the ranking is by width
    for w, ms in by_w.items():
        assert ms == simulate(pattern.bind(w=w), 8192, heads=8, config=TMA64).ms
    lengths = sweep(pattern, ["seq_len=2048..16384"], heads=8, config=TMA64)
    assert [p.values["seq_len"] for p in lengths] == [2048, 4096, 8192, 16384]


def test_sweep_errors_are_clear():
    pattern = patternc.compile(SWA)
    with pytest.raises(PatternError, match="not a parameter") as e:
        sweep(pattern, ["x=1..4"], 4096)
    assert "w" in e.value.hint
    with pytest.raises(PatternError, match="sequence length"):
        sweep(pattern, ["w=256..512"])


# --------------------------------------------------------------------------- the fit


def test_nnls_matches_a_known_solution():
    A = np.array([[1.0, 0], [0, 1], [1, 1]])
    assert nnls(A, np.array([1.0, 2, 3])) == pytest.approx([1, 2])
    assert nnls(A, np.array([-1.0, 2, 1])) == pytest.approx([0, 1.5])


def test_fit_recovers_the_costs_that_generated_the_times():
    """Times predicted by a known profile, fitted from scratch, give that profile's predictions back."""
    patterns = ["causal", "blocked(512)", "causal & window(512)", "causal & (window(256) | strided(256))",
                "grid(16, 128)\nneighborhood((7, 7))"]
    configs = [parse_config(c) for c in ("64x64/w4/s3/tma", "128x128/w8/s3/tma")]
    ms = []
    for text in patterns:
        for cfg in configs:
            for S in (2048, 4096) if "grid" not in text else (2048,):
                t = simulate(text, S, heads=4, config=cfg).ms
                ms.append(Measurement(text, S, S, 4, 128, "bfloat16", t, config=cfg))
    base = skeleton("test", "test GPU", 132, 228, 227, 3350)
    fitted, result = fit_kernel(ms, base)
    assert result.rms < 0.02
    for m in ms:
        again = simulate(m.pattern, m.M, heads=4, config=m.config, device=_with_dense(fitted)).ms
        assert again == pytest.approx(m.ms, rel=0.05)


def test_a_memory_path_never_measured_with_tables_gets_the_other_paths_table_cost():
    ms = [Measurement(text, 2048, 2048, 4, 128, "bfloat16", simulate(text, 2048, heads=4, config=cfg).ms,
                      config=parse_config(cfg))
          for text in ("causal", "blocked(512)", "causal & window(512)")
          for cfg in ("64x64/w4/s3/tma", "64x64/w4/s3/pointers", "64x64/w4/s3/pointers/table")]
    fitted, _ = fit_kernel(ms, skeleton("test", "test GPU", 132, 228, 227, 3350))
    assert fitted.kernel["table_tile_tma_us"] == fitted.kernel["table_tile_us"]


def test_calibrate_pipeline_builds_a_profile_from_its_measurements(tmp_path):
    """`patternc calibrate` minus the GPU: its job list, 'measured' here by the h100 model itself,
    fitted into a profile that predicts patterns it never measured."""
    from patternc.sim.calibrate import build_profile, calibration_jobs

    S, heads = 4096, 4
    configs = [parse_config(c) for c in ("128x128/w8/s3/tma", "64x64/w4/s3/tma", "64x64/w4/s3/pointers")]
    ms = [Measurement(text, S, S, heads, 128, "bfloat16", simulate(text, S, heads=heads, config=cfg).ms, config=cfg,
                      label=label) for label, text, cfg in calibration_jobs(configs, S)]
    assert {m.label for m in ms} == {"causal", "blocked", "swa", "natten2d", "causal-table"}
    for n in (S // 2, S, 2 * S):
        shape = Shape(n, n, heads, 128, "bfloat16")
        ms.append(Measurement("full", n, n, heads, 128, "bfloat16", dense_ms(shape, H100), kind="dense", label="sdpa"))
    constants = {"device": "NVIDIA Test GPU", "sm_count": 132, "smem_per_sm_kib": 228, "smem_per_block_kib": 227,
                 "hbm_gbps": 3350}
    profile, fits = build_profile(ms, constants, (9, 0))
    assert profile.name == "test-gpu" and fits["kernel"].rms < 0.03
    assert "scaled from the h100 profile" in profile.fit["flex"]
    path = profile.write(tmp_path / "test-gpu.json")
    for text in ("causal & (window(512) | sink(4))", "window(700)"):
        for cfg in configs:
            mine = simulate(text, S, heads=heads, config=cfg, device=str(path)).ms
            assert mine == pytest.approx(simulate(text, S, heads=heads, config=cfg).ms, rel=0.1)
    with pytest.raises(PatternError, match="multiple of 128"):
        calibration_jobs(configs, 1000)


def test_calibration_measures_the_table_cost_on_each_memory_path():
    from patternc.sim.calibrate import calibration_jobs

    configs = [parse_config(c) for c in ("128x128/w8/s3/tma", "64x64/w4/s3/tma", "128x64/w8/s3/pointers",
                                         "64x64/w4/s3/tma")]
    table = [cfg for label, _, cfg in calibration_jobs(configs, 4096) if label == "causal-table"]
    assert [c["memory"] for c in table] == ["tma", "pointers"] and all(c["iteration"] == "table" for c in table)
    alike = [parse_config(c) for c in ("128x128/w8/s3/pointers", "64x64/w4/s3/pointers")]
    assert len([j for j in calibration_jobs(alike, 4096) if j[0] == "causal-table"]) == 2


def test_refit_from_a_calibrate_log_matches_the_fit_of_its_measurements(tmp_path, capsys):
    """`patternc calibrate --from-log`: the times a calibrate run printed, read back, fit to the
    profile the run itself would have fitted (constants and environment from --base)."""
    from patternc.sim.calibrate import build_profile, calibration_jobs, measurements_from_log, refit_from_log

    S, heads = 4096, 16
    configs = [parse_config(c) for c in ("128x128/w8/s3/tma", "64x64/w4/s3/pointers")]
    lines, ms = [], []
    for label, text, cfg in calibration_jobs(configs, S):
        t = round(simulate(text, S, heads=heads, config=cfg).ms, 3)
        lines.append(f"  {label:13s} {config_name(cfg):24s} {t:8.3f} ms")
        ms.append(Measurement(text, S, S, heads, 128, "bfloat16", t, config=cfg,
                              label=f"{label} {S} {config_name(cfg)}"))
    for n in (S // 2, S, 2 * S):
        t = round(dense_ms(Shape(n, n, heads, 128, "bfloat16"), H100), 3)
        lines.append(f"  dense {n:6d} (cuDNN SDPA) {t:8.3f} ms")
        ms.append(Measurement("full", n, n, heads, 128, "bfloat16", t, kind="dense", label="cuDNN SDPA"))
    log = tmp_path / "calibrate.txt"
    log.write_text("\n".join(["  natten2d 64x64/w4/s3/tma: skipped (OutOfResources: ...)", *lines, "", "wrote x"]))
    (tmp_path / "card.txt").write_text("NVIDIA Test GPU, 123.45\ntorch 9.9 triton 8.8\n")
    read = measurements_from_log(log.read_text())
    assert [(m.label, m.ms, m.kind) for m in read] == [(m.label, m.ms, m.kind) for m in ms]
    constants = {"device": H100.device, "sm_count": H100.sm_count, "smem_per_sm_kib": H100.smem_per_sm_kib,
                 "smem_per_block_kib": H100.smem_per_block_kib, "hbm_gbps": H100.hbm_gbps,
                 "clock_mhz": H100.clock_mhz}
    direct, _ = build_profile(ms, constants, (9, 0), "mine")
    again, _ = refit_from_log(log, "h100", "mine")
    assert again.kernel == direct.kernel and again.configs == direct.configs and again.dense == direct.dense
    assert again.fit["environment"]["card"] == "NVIDIA Test GPU" and again.fit["environment"]["driver"] == "123.45"
    assert again.fit["environment"]["triton"] == "8.8" and again.fit["source"] == "patternc calibrate"
    out = tmp_path / "mine.json"
    code, stdout, err = _run(capsys, "calibrate", "--from-log", str(log), "--base", "h100", "--name", "mine",
                             "-o", str(out))
    assert code == 0 and Profile.load(out).kernel == direct.kernel
    code, stdout, err = _run(capsys, "calibrate", "--from-log", str(log))
    assert code == 2 and "--base" in err


def _with_dense(profile):
    import dataclasses

    return dataclasses.replace(profile, dense=H100.dense, flex=H100.flex)


# --------------------------------------------------------------------------- the command line


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


@pytest.fixture
def pat(tmp_path):
    path = tmp_path / "llm.pat"
    path.write_text(SWA + "\npattern blocks:\n    blocked(512)\n")
    return str(path)


def test_cli_simulate_table_and_json(capsys, pat):
    code, out, err = _run(capsys, "simulate", pat, "-p", "swa", "-n", "4096", "--heads", "4")
    assert code == 0 and err == ""
    assert "predicted" in out and "dense (cuDNN-class)" in out and "FlexAttention" in out
    assert "worst-tile bound" in out and "64x64/w4/s3/tma" in out
    code, out, _ = _run(capsys, "simulate", pat, "-p", "blocks", "-n", "4096", "--config", "128x128/w8/s3/tma",
                        "--json")
    data = json.loads(out)
    assert code == 0 and data["config"] == "128x128/w8/s3/tma" and data["block_sparse"] is True
    assert len(data["configs"]) == 1 and math.isfinite(data["ms"])


def test_cli_closed_form(capsys, pat):
    code, out, _ = _run(capsys, "simulate", pat, "-p", "swa", "-n", "4096", "--heads", "4", "--closed-form")
    assert code == 0 and "time(N)" in out and "break-even" in out
    code, out, _ = _run(capsys, "simulate", pat, "-p", "swa", "-n", "4096", "--closed-form", "--json")
    assert code == 0 and "N" in json.loads(out)["closed_form"]["time_us"]


def test_cli_sweep(capsys, pat):
    code, out, _ = _run(capsys, "simulate", pat, "-p", "swa", "-n", "4096", "--heads", "4", "--sweep", "w=256..1024")
    assert code == 0 and "w=256" in out and "rank" in out
    code, out, _ = _run(capsys, "simulate", pat, "-p", "swa", "-n", "2048", "--sweep", "w=256..512", "--all-configs",
                        "--json")
    points = json.loads(out)["points"]
    assert code == 0 and [p["values"]["w"] for p in points] == [256, 512]


@pytest.mark.parametrize("argv, code, message", [
    (["-p", "swa", "-n", "64", "--device", "h10"], 1, "no device profile named 'h10'"),
    (["-p", "swa", "-n", "64", "--sweep", "w=9..1"], 1, "can't read the sweep"),
    (["-p", "swa", "-n", "64", "--sweep", "q=1..2"], 1, "not a parameter"),
    (["-p", "swa", "-n", "64", "--config", "big"], 1, "tile config"),
    (["-p", "nope", "-n", "64"], 1, "no pattern named 'nope'"),
    (["-p", "swa"], 2, "--seq-len (-n) is required"),  # (with no -p, every pattern of the file: test_cli.py)
])
def test_cli_simulate_errors_are_one_clear_message(capsys, pat, argv, code, message):
    got, out, err = _run(capsys, "simulate", pat, *argv)
    assert got == code and message in err and out == ""


def test_cli_calibrate_without_a_gpu_says_so(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: calibrate would measure it")
    code, out, err = _run(capsys, "calibrate", "--seq-len", "4096")
    assert code == 1 and "no CUDA GPU" in err and "hint:" in err


def test_routed_selection_grows_with_length_and_costs_more_per_token():
    from patternc.sim.model import Shape
    from patternc.sim.predict import as_profile, routed_selection_ms

    profile = as_profile("h100")
    block, token = (patternc.compile(f"causal & topk(4, block=512{q})") for q in ("", ", query=token"))
    times = [routed_selection_ms(block, Shape(S, S, 16, 128, "bfloat16"), profile) for S in (8192, 32768, 131072)]
    assert times == sorted(times) and times[0] > 0
    assert routed_selection_ms(token, Shape(32768, 32768, 16, 128, "bfloat16"), profile) > times[1]
