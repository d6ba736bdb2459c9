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
