"""Inputs that used to end in a bare traceback or a silent surprise: each is a clear error now,
and corrupt cache entries are rewritten, never fatal."""
from __future__ import annotations

import json

import pytest

import patternc
from patternc.errors import PatternError
from patternc.runtime import autotune, cache


def test_slash_hints_floor_division():
    with pytest.raises(PatternError, match="unexpected character '/'") as e:
        patternc.compile("window(N / 8)")
    assert e.value.hint == "integer division is written //, as in N // 8"
    assert (e.value.line, e.value.column) == (1, 10)


@pytest.mark.parametrize("data, why", [(b"\xff\xfe causal", "byte 0 is not UTF-8"),
                                       (b"causal & \xc3(", "byte 9 is not UTF-8"),
                                       (b"causal\x00\x01", "NUL bytes")])
def test_binary_files_are_pattern_errors_naming_the_file(tmp_path, data, why):
    path = tmp_path / "bad.pat"
    path.write_bytes(data)
    with pytest.raises(PatternError, match=why) as e:
        patternc.load(path)
    assert str(path) in e.value.message


def test_missing_pattern_name_says_did_you_mean():
    patterns = patternc.load("examples/llm.pat")
    with pytest.raises(PatternError, match="no pattern named 'swx'") as e:
        patterns["swx"]
    assert e.value.hint == "did you mean 'swa'?"
    with pytest.raises(KeyError):  # still a dict lookup failure for callers that catch KeyError
        patterns["nothing-like-it"]
    assert patterns.get("swx") is None and "swa" in patterns


def test_huge_masks_are_refused_with_their_size():
    with pytest.raises(PatternError, match=r"1 x 1000000 x 1000000 = 1,000,000,000,000 booleans \(931.3 GiB\)"):
        patternc.compile("causal").mask(10**6)
    assert patternc.compile("causal").mask(4).shape == (1, 4, 4)


SOURCE = "VALUE = 41 + 1\n"


@pytest.mark.parametrize("corrupt", [b"\xff\xfe\x00garbage", b"VALUE = 4", b""])
def test_corrupt_kernel_cache_entries_are_rewritten(tmp_path, monkeypatch, corrupt):
    monkeypatch.setenv("PATTERNC_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cache, "_modules", {})
    path = cache.cache_dir() / f"pc_{cache.source_key(SOURCE, 'test')}.py"
    path.write_bytes(corrupt)
    assert cache.load_module(SOURCE, "test").VALUE == 42
    assert path.read_bytes() == SOURCE.encode()


@pytest.mark.parametrize("corrupt", [b"\xff\xfe\x00", b'{"k": {"block_m": 64', b"[1, 2]", b'{"k": 3}',
                                     b'{"k": {"block_m": "x", "block_n": 64, "num_warps": 4, "num_stages": 1}}'])
def test_corrupt_autotune_choices_are_ignored_and_rewritten(tmp_path, monkeypatch, corrupt):
    monkeypatch.setenv("PATTERNC_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(autotune, "_choices", {})
    monkeypatch.setattr(autotune, "_loaded", False)
    autotune._path().write_bytes(corrupt)
    assert autotune.lookup("k") is None
    choice = {"block_m": 64, "block_n": 32, "num_warps": 4, "num_stages": 2}
    autotune.remember("k", choice)
    assert json.loads(autotune._path().read_text()) == {"k": choice}


@pytest.mark.parametrize("text, column, by_name", [("window(1, 2, 3)", 14, "dilation=..."),
                                                   ("columns(4, 3)", 12, "phase=..."),
                                                   ("random(2, 64)", 11, "seed=...")])
def test_options_are_keyword_only_after_the_documented_positionals(text, column, by_name):
    with pytest.raises(PatternError, match="positional argument") as e:
        patternc.compile(text)
    assert e.value.column == column and by_name in e.value.hint
    assert str(patternc.compile("window(1, 2)")) == "window(1, 2)"  # left, right: documented positionals
    assert str(patternc.compile("topk(2, block=4)")) == "topk(2, block=4)"


def test_check_reports_a_neighborhood_larger_than_its_grid(tmp_path, capsys):
    from patternc.cli import main

    path = tmp_path / "v.pat"
    path.write_text("pattern v:\n    grid(4, 4)\n    neighborhood((5, 3))\n")
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:3:18: error: neighborhood: window 5 x dilation 1 = 5 exceeds the length 4 of dimension 0" in err
    ok = tmp_path / "ok.pat"
    ok.write_text("pattern v:\n    grid(4, 4)\n    neighborhood((3, 3))\n")
    assert main(["check", str(ok)]) == 0


def test_pattern_check_evaluates_parameters_on_every_head():
    p = patternc.compile("columns(4, phase=h)")
    p.check(64, heads=4)
    with pytest.raises(PatternError, match="phase must be in 0..3, got 4"):
        p.check(64, heads=5)


def test_layout_says_why_sections_keep_natural_order(tmp_path, capsys):
    from patternc.cli import main

    path = tmp_path / "mixed.pat"
    path.write_text("pattern mixed:\n    heads 0..3: causal & window(64)\n    heads 4..7: causal & strided(4)\n")
    assert main(["layout", str(path), "-n", "1024", "--block", "64x64"]) == 0
    out = capsys.readouterr().out
    assert "natural (heads 4..7 pair only tokens of one residue class mod 4" in out
    assert main(["layout", str(path), "-n", "1024", "--block", "64x64", "--json"]) == 0
    assert "one token order for all heads" in json.loads(capsys.readouterr().out)["natural_order_reason"]


def test_layouts_of_head_dependent_global_ranges_differ_per_head():
    # `h` inside a range of global() once went unseen: every head got head 0's tiles
    import numpy as np

    p = patternc.compile("pattern p(heads = 4): global(16*h..16*h+1)")
    layout = p.layout(128, block_m=16, block_n=16)
    visible = p.mask(128).numpy().reshape(4, 8, 16, 8, 16).any((2, 4))
    assert np.array_equal(layout.block_map().numpy() > 0, visible)


def test_bf16_in_the_interpreter_is_right_or_refused(interpret):
    import torch

    from patternc.runtime.interpreter import bf16_dot_works

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 48, 16, generator=g).to(torch.bfloat16) for _ in range(3))
    pattern = patternc.compile("causal & window(16)")
    if not bf16_dot_works():  # triton 3.9's interpreter: never a silent garbage answer
        with pytest.raises(PatternError, match="bfloat16 under TRITON_INTERPRET=1 would give wrong results"):
            patternc.attention(q, k, v, pattern)
        return
    ref = patternc.reference_attention(q.double(), k.double(), v.double(), pattern)
    assert (patternc.attention(q, k, v, pattern).double() - ref).abs().max() < 3e-2


def test_meta_tensors_are_a_clear_error():
    import torch

    q, k, v = (torch.empty(1, 2, 16, 16, device="meta") for _ in range(3))
    with pytest.raises(PatternError, match="meta tensors hold no data"):
        patternc.attention(q, k, v, "causal")


def test_inputs_that_are_not_tensors_are_a_clear_error():
    with pytest.raises(PatternError, match="q must be a 4-D tensor"):
        patternc.attention(1, 2, 3, "causal")
