"""The training-time model (`patternc.sim.simulate_training`) against the H200 measurements it
was fitted on, and its command line."""
from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import patternc
from patternc.cli import main
from patternc.sim import simulate_training

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "2026-12-01-h200-backward"
SUITE = {"causal": "causal", "swa": "causal & window(1024)", "dilated": "causal & window(1024, dilation=4)",
         "sinks": "causal & (window(1024) | sink(4))", "strided": "causal & (window(256) | strided(256))",
         "power": "causal & (window(5, block=256) | pow2(block=256) | sink(1, block=256))"}


def test_predictions_are_within_the_fit_on_the_measured_rows():
    log = (RESULTS / "bwd_log.txt").read_text()
    errors = []
    for name, S, cfg, measured in re.findall(r"  (\w+) S=(\d+) (64x64/w4/s2): fwd\+bwd ([\d.]+) ms", log):
        predicted = simulate_training(SUITE[name], int(S), heads=16, device="h200", config=cfg + "/pointers").ms
        errors.append(abs(predicted / float(measured) - 1))
    assert len(errors) == 12
    assert statistics.median(errors) < 0.15 and max(errors) < 0.3, errors


def test_backward_costs_more_than_the_forward_and_says_where_it_was_fitted():
    t = simulate_training(patternc.compile("causal & window(1024)"), 32768, heads=16)
    assert t.ms > 4 * t.forward.ms > 0 and t.backward_ms == t.ms - t.forward.ms
    assert t.forward.config_name == "64x64/w4/s3/pointers"  # the training tiles
    assert any("fitted on an H200" in n for n in t.notes)


def test_command_line(tmp_path, capsys):
    path = tmp_path / "p.pat"
    path.write_text("pattern swa: causal & window(1024)\n")
    assert main(["simulate", str(path), "-n", "8192", "--device", "h200", "--backward"]) == 0
    assert "forward + backward" in capsys.readouterr().out
    assert main(["simulate", str(path), "-n", "8192", "--backward", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ms"] > out["forward_ms"] > 0
    assert main(["simulate", str(path), "-n", "8192", "--backward", "--sweep", "w=256..1024"]) == 2
