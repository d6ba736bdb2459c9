"""`patternc bench` on the CPU: the message without a GPU, usage errors, the pure parts (errors,
realized fraction, the simulator's error, the table and JSON), and the measuring path itself run
on CPU tensors with a stand-in timer (FlexAttention eager; SDPA's cuDNN backend is unavailable
there, which exercises the 'unavailable' path). Nothing here asserts on a time."""
from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from test_cli_layout_compile import EXAMPLES, run

import patternc
from patternc.cli import bench as B

SWA = "pattern swa: causal & window(64)\n"


@pytest.fixture
def pat(tmp_path):
    def write(text, name="p.pat"):  # a pattern file in tmp_path
        (tmp_path / name).write_text(text)
        return str(tmp_path / name)
    return write


def fake_timer(fn):
    fn()  # the code path runs; the time is made up
    return 1.0


@pytest.fixture(autouse=True)
def quiet():
    with warnings.catch_warnings():  # the CPU fallback's and eager FlexAttention's warnings
        warnings.simplefilter("ignore")
        yield


# --------------------------------------------------------------------------- the command line


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here")
def test_without_a_gpu_one_line_and_exit_1(capsys):
    code, out, err = run(capsys, "bench", EXAMPLES / "llm.pat", "-p", "swa", "-n", 8192)
    assert code == 1 and out == ""
    assert err.splitlines() == ["error: no CUDA GPU here: `patternc bench` times kernels on the GPU it runs on "
                                "(`patternc simulate` predicts their time without one)"]


def test_usage_and_pattern_errors(capsys, pat):
    code, _, err = run(capsys, "bench", pat(SWA), "-n", 256, "--heads", 16, "--kv-heads", 3)
    assert code == 2 and "--kv-heads 3 must divide the 16 query heads" in err
    code, _, err = run(capsys, "bench", EXAMPLES / "routed.pat", "-p", "moba", "-n", 4096, "--batch", 2)
    assert code == 2 and "routed patterns are benchmarked at --batch 1" in err
    code, _, err = run(capsys, "bench", pat(SWA))
    assert code == 2 and "--seq-len (-n) is required" in err
    code, _, err = run(capsys, "bench", EXAMPLES / "vision.pat", "-p", "natten2d", "-n", 4096)
    assert code == 1 and "lives on grid(128, 128): its length is 16384 tokens, not --seq-len 4096" in err
    bad = pat("pattern p:\n    causal & window(0)\n", "bad.pat")
    code, _, err = run(capsys, "bench", bad, "-n", 256)
    assert code == 1 and err.startswith(f"{bad}:2:21: error: window: size must be >= 1") and "Traceback" not in err
    code, _, err = run(capsys, "bench", pat(SWA), "-n", 256, "--dtype", "fp8")
    assert code == 2 and "usage:" in err


def test_the_command_on_cpu_tensors(capsys, pat, monkeypatch):
    """The whole command, as on a GPU, with the measurement on CPU tensors and a made-up card."""
    real = B.measure
    monkeypatch.setattr(B, "require_gpu", lambda: None)
    monkeypatch.setattr(B, "environment", lambda: {"card": "NVIDIA H200", "torch": "t", "triton": "x"})
    monkeypatch.setattr(B, "measure", lambda *a: real(*a, device="cpu", timer=fake_timer))
    f = pat(SWA)
    code, out, _ = run(capsys, "bench", f, "-n", 256, "--heads", 2, "--kv-heads", 1, "--head-dim", 16,
                       "--dtype", "fp32", "--batch", 2, "--json")
    assert code == 0
    data = json.loads(out)
    assert (data["pattern"], data["M"], data["heads"], data["kv_heads"], data["batch"]) == ("swa", 256, 2, 1, 2)
    assert data["check"]["forward"]["ok"] and data["check"]["forward"]["max_abs_error"] < 1e-5
    assert data["forward"]["patternc"] == 1.0 and data["forward"]["cudnn"] is None and "cudnn" in data["unavailable"]
    assert data["simulator"]["profile"] == "h200" and data["simulator"]["forward_error"] is not None
    layout = patternc.compile("causal & window(64)").layout(256, heads=2, order="natural")
    assert data["density"] == pytest.approx(layout.density)
    assert any("GQA" in note for note in data["notes"])
    code, out, _ = run(capsys, "bench", f, "-n", 256, "--heads", 2, "--head-dim", 16, "--dtype", "fp32")
    assert code == 0 and "SDPA cuDNN (dense)" in out and "unavailable" in out and "h200 profile" in out
    assert max(map(len, out.splitlines()[:-3])) <= 100  # the notes may run longer: the table fits


# --------------------------------------------------------------------------- the pure parts


def test_realized_fraction_and_prediction_error():
    assert B.realized_fraction(0.8, 0.125, 0.2) == pytest.approx(0.5)
    assert B.realized_fraction(None, 0.125, 0.2) is None
    assert B.prediction_error(1.1, 1.0) == pytest.approx(0.1)
    assert B.prediction_error(0.5, 1.0) == pytest.approx(-0.5)
    assert B.prediction_error(None, 1.0) is None


def test_compare_finds_wrong_and_non_finite_results():
    a = torch.ones(2, 3)
    good = B.compare([a], [a + 1e-4], 1e-2)
    assert good["ok"] and good["max_abs_error"] == pytest.approx(1e-4, rel=1e-3)
    assert good["rel_error"] == pytest.approx(1e-4, rel=1e-2)
    assert not B.compare([a], [2 * a], 1e-2)["ok"]
    nan = B.compare([a, torch.full((2, 3), float("nan"))], [a, a], 1e-2)
    assert not nan["ok"] and math.isnan(nan["max_abs_error"])
    assert B.jsonable(nan)["max_abs_error"] is None  # JSON has no NaN


def test_choose_profile():
    assert B.choose_profile("NVIDIA H200", ["h100", "h200"]) == ("h200", None)
    assert B.choose_profile("NVIDIA H100 80GB HBM3", ["h100", "h200"]) == ("h100", None)
    assert B.choose_profile("NVIDIA H100 80GB HBM3", ["h100", "h100-80gb-hbm3", "h200"]) == ("h100-80gb-hbm3", None)
    name, note = B.choose_profile("NVIDIA A100-SXM4-80GB", ["h100", "h200"])
    assert name == "h100" and "patternc calibrate" in note


def fabricated(ok=True, backward=True) -> dict:
    check = {"forward": {"max_abs_error": 3e-3, "rel_error": 2e-3, "rel_errors": [2e-3], "tolerance": 2e-2, "ok": ok}}
    result = {"pattern": "swa", "text": "causal & window(1024)", "M": 8192, "N": 8192, "heads": 16, "kv_heads": 16,
              "head_dim": 128, "dtype": "bfloat16", "batch": 1, "density": 0.125, "visited": 0.12, "tiles": "64x64",
              "order": "", "environment": {"card": "NVIDIA H200", "torch": "2.11", "triton": "3.6"},
              "check": check, "notes": []}
    if backward:
        check["backward"] = dict(check["forward"], tolerance=3e-2)
    if not ok:
        return result
    result.update(forward={"patternc": 0.2, "flex": 0.3, "cudnn": 0.8, "flash": None},
                  unavailable={"flash": "RuntimeError: no kernel"},
                  simulator={"profile": "h200", "forward_ms": 0.22, "config": "64x64/w4/s3/tma"})
    if backward:
        result["forward_backward"] = {"patternc": 1.0, "flex": 0.8, "cudnn": 3.2, "flash": None}
        result["simulator"]["forward_backward_ms"] = 0.9
    return result


def test_summarize_and_the_table():
    r = B.summarize(fabricated())
    assert r["forward_speedup"] == {"patternc": 1.0, "flex": pytest.approx(1.5), "cudnn": pytest.approx(4.0)}
    assert r["forward_realized"] == {"value": pytest.approx(0.8 * 0.125 / 0.2), "dense": "cudnn"}
    assert r["forward_backward_realized"]["value"] == pytest.approx(3.2 * 0.125 / 1.0)
    assert r["simulator"]["forward_error"] == pytest.approx(0.1)
    assert r["simulator"]["forward_backward_error"] == pytest.approx(-0.1)
    text = B.format_report(r)
    lines = text.splitlines()
    assert lines[0] == "swa: causal & window(1024)"
    assert "output: max abs error 3.00e-03, relative 2.00e-03 (tolerance 2e-02): ok" in text
    table = text[text.index("kernel"):].splitlines()
    assert table[0].split() == ["kernel", "forward", "ms", "speedup", "fwd+bwd", "ms", "speedup"]
    assert table[2].split() == ["patternc", "(64x64", "tiles)", "0.2", "1.00x", "1", "1.00x"]
    assert table[3].split()[-4:] == ["0.3", "1.50x", "0.8", "0.80x"]
    assert table[5].split() == ["SDPA", "flash", "(dense)", "unavailable", "unavailable"]
    assert "density    0.1250 at 128x128 tiles, token order (visited tiles / all)" in lines
    assert "patternc   visits 0.1200 at 64x64 tiles" in lines
    assert "realized   0.50 forward, 0.40 fwd+bwd: cudnn dense time x density / patternc time" in lines
    assert "simulator  0.22 ms forward (+10.0% vs measured), 0.9 ms fwd+bwd (-10.0%), h200 profile" in lines
    assert "note: SDPA flash unavailable: RuntimeError: no kernel" in text
    assert max(map(len, lines)) <= 100
    json.dumps(B.jsonable(r))  # serialisable


def test_a_wrong_result_is_not_timed():
    r = B.summarize(fabricated(ok=False))
    text = B.format_report(r)
    assert "WRONG" in text and "not timed" in text and "kernel" not in text and "realized" not in text


# --------------------------------------------------------------------------- measuring, on CPU tensors


def test_measure_forward_on_cpu_tensors():
    p = patternc.compile("causal & (window(40) | sink(4))")
    r = B.measure(p, 256, 320, 4, 2, 16, "float32", 2, False, device="cpu", timer=fake_timer)
    assert r["check"]["forward"]["ok"] and r["density"] == pytest.approx(
        p.layout(256, 320, heads=4, order="natural").density)
    assert set(r["forward"]) == {"patternc", "flex", "cudnn", "flash"} and r["forward"]["cudnn"] is None
    assert "cudnn" in r["unavailable"] and "forward_backward" not in r


def test_measure_backward_and_a_wrong_kernel():
    p = patternc.compile("causal & window(64)")

    def flex(q, k, v, block_mask, enable_gqa=False):  # FlexAttention has no CPU backward: the reference
        return patternc.reference_attention(q, k, v, p)

    r = B.measure(p, 128, 128, 2, 2, 16, "float32", 1, True, device="cpu", timer=fake_timer, flex=flex)
    assert r["check"]["backward"]["ok"] and len(r["check"]["backward"]["rel_errors"]) == 3
    assert r["forward_backward"]["patternc"] == 1.0 and any("training path" in n for n in r["notes"])

    def wrong(q, k, v, block_mask, enable_gqa=False):
        return patternc.reference_attention(q, k, v, "causal")

    r = B.measure(p, 256, 256, 2, 2, 16, "float32", 1, False, device="cpu", timer=fake_timer, flex=wrong)
    assert not r["check"]["forward"]["ok"] and "forward" not in r  # nothing timed
