"""Generated kernel modules, compared byte for byte with the files in tests/golden/.

Every axis of the code generator (iteration runs | table, memory pointers | tma, token order
natural | residue | box, routing none | block | token, tables of bits none | some) takes each of its
values in at least one variant below, beside per-head sections, a 2-D grid, floor helpers and a
constant predicate.
The variants in BACKWARD also hold the backward family (`module_source(..., backward=True)`).
After an intended change to the generated code, regenerate and read the diff:

    python -m pytest -q tests/test_golden.py --update-golden && git diff tests/golden
"""
from __future__ import annotations

import ast
import difflib
from pathlib import Path

import pytest

import patternc
from patternc.codegen import make_spec, module_source
from patternc.codegen.iteration import COLUMNS, Runs, Table
from patternc.codegen.routed import MODES
from patternc.codegen.template import TemplateError, fill

GOLDEN = Path(__file__).resolve().parent / "golden"
TILES = {"head_dim": 128, "block_m": 128, "block_n": 64, "num_warps": 8, "num_stages": 3}
SMALL_TILES = {"head_dim": 64, "block_m": 64, "block_n": 32, "num_warps": 4, "num_stages": 2}
SQUARE_TILES = {"head_dim": 64, "block_m": 64, "block_n": 64, "num_warps": 4, "num_stages": 2}
NATTEN2D = "grid(64, 64)\nneighborhood((13, 13))"
GNA3D = "grid(8, 16, 16)\nneighborhood((4, 8, 8), stride=(2, 4, 4), causal=(true, false, false))"
MIXED = """pattern mixed:
    heads 0..7: causal & window(512)
    heads 8..15: causal & (window(256) | pow2(block = 128) | sink(128))"""



def box_of(text: str, tiles: dict):
    """The box order a grid pattern is laid out in at these tiles (`order="box"`)."""
    pattern = patternc.compile(text)
    layout = pattern.layout(pattern.fixed_length, block_m=tiles["block_m"], block_n=tiles["block_n"], order="box")
    return layout.permutation


# name: (pattern text, heads, M, N, tiles, options of make_spec, layout summary for the header)
VARIANTS = {
    "swa_runs_pointers": ("causal & window(1024)", 1, 4096, 4096, TILES, {"runs": (1, 1)}, ""),
    "sinks_table_tma": ("causal & (window(256) | sink(4))", 4, 2048, 2048, TILES, {"tma": True}, ""),
    "dilated_residue_runs_floor": ("causal & window(9, dilation=4)", 2, 1024, 1024, SMALL_TILES,
                                   {"runs": (1, 1), "residue": 4}, ""),
    "strided_residue_table_tma": ("causal & strided(8)", 1, 1024, 1024, TILES, {"tma": True, "residue": 8}, ""),
    "dilated_residue_runs_tma": ("window(5, dilation=2)", 1, 512, 512, SMALL_TILES,
                                 {"runs": (2, 2), "tma": True, "residue": 2}, ""),
    "topk_block_table": ("causal & topk(4, block=128)", 4, 2048, 2048, TILES, {"routed": "block"}, ""),
    "topk_token_tma": ("causal & topk(4, block=128, query=token)", 4, 2048, 2048, TILES,
                       {"tma": True, "routed": "token"}, ""),
    "topk_alone_block": ("topk(2, block=64)", 2, 512, 512, SMALL_TILES, {"routed": "block"}, ""),
    "mixed_sections_runs": (MIXED, 16, 8192, 8192, TILES, {"runs": (2, 3)}, ""),
    "grid_neighborhood_runs": ("grid(16, 16)\nneighborhood((3, 5))", 1, 256, 256, SMALL_TILES, {"runs": (1, 2)}, ""),
    "natten2d_dilated_box_runs": ("grid(32, 32)\nneighborhood((5, 5), dilation=(2, 2))", 1, 1024, 1024, SMALL_TILES,
                                  {"runs": (1, 2), "box": box_of("grid(32, 32)\nneighborhood((5, 5), dilation=(2, 2))",
                                                                 SMALL_TILES)}, ""),
    "neighborhood_1d_table": ("neighborhood(7, dilation=2)", 1, 512, 512, SMALL_TILES, {}, ""),
    "columns_per_head_tma_runs": ("causal & (window(512) | columns(16, phase=h % 16, block=64))", 16, 4096, 4096,
                                  TILES, {"runs": (1, 2), "tma": True}, ""),
    "full_kv_cache_summary": ("full", 1, 128, 4096, TILES, {},
                              ("layout: M = 128, N = 4096, 1 head, 128x64 tiles, natural token order;\n"
                               "density 1.0000 (ideal speedup 1.00x): 64 full, 0 partial, 0 empty tiles\n")),
    "swa_runs_pointers_backward": ("causal & window(1024)", 1, 4096, 4096, TILES, {"runs": (1, 1)}, ""),
    "strided_residue_table_tma_backward": ("causal & strided(8)", 1, 1024, 1024, TILES,
                                           {"tma": True, "residue": 8}, ""),
    "mixed_sections_table_backward": (MIXED, 16, 8192, 8192, SMALL_TILES, {}, ""),
    "topk_block_table_backward": ("causal & topk(4, block=128)", 4, 2048, 2048, TILES, {"routed": "block"}, ""),
    "gna3d_box_table_backward": (GNA3D, 2, 2048, 2048, SMALL_TILES, {"box": box_of(GNA3D, SMALL_TILES)}, ""),
    "natten2d_box_tma_backward": (NATTEN2D, 2, 4096, 4096, SQUARE_TILES,
                                  {"tma": True, "box": box_of(NATTEN2D, SQUARE_TILES)}, ""),
    "documents_runs": ("causal & (window(1024) | sink(4))", 4, 8192, 8192, TILES, {"runs": (1, 2), "documents": True},
                       ""),
    "documents_table_backward": ("window(512) | blocked(256)", 4, 8192, 8192, SMALL_TILES, {"documents": True}, ""),
    "topk_token_table_backward": ("causal & topk(4, block=128, query=token)", 4, 2048, 2048, TILES, {"routed": "token"},
                                  ""),
    "bigbird_tables_backward": ("window(3, block=64) | global(0..1, block=64) | random(3, block=64)", 4, 4096, 4096,
                                TILES, {}, ""),
}
BACKWARD = {name for name in VARIANTS if name.endswith("_backward")}


def spec_of(name: str):
    text, heads, M, N, tiles, options, _ = VARIANTS[name]
    return make_spec(patternc.compile(text), heads=heads, M=M, N=N, **tiles, **options)


def generate(name: str) -> str:
    return module_source(spec_of(name), summary=VARIANTS[name][6], backward=name in BACKWARD)


def mismatch(path: Path, actual: str) -> str | None:
    """None when `path` holds exactly `actual`, else what differs (a unified diff, shortened)."""
    if not path.exists():
        return f"{path} is missing; write it with --update-golden"
    expected = path.read_bytes().decode("utf-8")
    if expected == actual:
        return None
    diff = difflib.unified_diff(expected.splitlines(True), actual.splitlines(True), str(path), "generated")
    return "".join(list(diff)[:80]) or f"{path} differs from the generated source (line endings?)"


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_generated_module_matches_golden(name, request):
    source = generate(name)
    ast.parse(source)
    path = GOLDEN / f"{name}.golden"
    if request.config.getoption("--update-golden"):
        GOLDEN.mkdir(exist_ok=True)
        path.write_bytes(source.encode("utf-8"))
        return
    problem = mismatch(path, source)
    assert problem is None, f"generated code changed for {name}:\n{problem}"


def test_no_stale_golden_files(request):
    stale = sorted(p.name for p in GOLDEN.glob("*.golden") if p.stem not in VARIANTS)
    if request.config.getoption("--update-golden"):
        for name in stale:
            (GOLDEN / name).unlink()
        return
    assert not stale, f"golden files without a variant in {__file__}: {stale}"


def test_one_changed_character_fails_the_comparison(tmp_path):
    name = "swa_runs_pointers"
    source = generate(name)
    assert mismatch(GOLDEN / f"{name}.golden", source) is None
    at = source.index("BLOCK_M = 128") + len("BLOCK_M = 12")
    mutated = tmp_path / f"{name}.golden"
    mutated.write_bytes((source[:at] + "7" + source[at + 1:]).encode("utf-8"))
    problem = mismatch(mutated, source)
    assert problem is not None and "-BLOCK_M = 127" in problem and "+BLOCK_M = 128" in problem


def test_variants_cover_every_axis_value():
    options = [v[5] for v in VARIANTS.values()]
    assert {o.get("runs") is not None for o in options} == {True, False}
    assert {o.get("tma", False) for o in options} == {True, False}
    assert {o.get("residue") is not None for o in options} == {True, False}
    assert {o.get("box") is not None for o in options} == {True, False}
    assert {o.get("routed", "") for o in options} == {"", "block", "token"}
    assert {spec_of(name).predicate.tables > 0 for name in VARIANTS} == {True, False}


def test_backward_is_appended_to_the_forward_unchanged():
    """Asking for the backward changes the forward's text only in the header's title and summary."""
    for name in sorted(BACKWARD):
        both, forward = generate(name), module_source(spec_of(name), summary=VARIANTS[name][6])
        body = forward[forward.index('"""\nimport torch'):]  # all but the header's docstring
        assert both.startswith('"""patternc generated attention kernel (forward and backward).')
        assert both.index(body) + len(body) == both.index("\n\n\n# ----")  # then the backward's banner


def test_templates_fail_loudly_on_a_missing_or_unused_snippet():
    with pytest.raises(TemplateError, match=r"template T: placeholder \{b\} was left unfilled"):
        fill("T", "x = {a}\n    {b}\n", a="1")
    with pytest.raises(TemplateError, match="template T has no placeholder for c"):
        fill("T", "x = {a}", a="1", c="2")
    assert fill("T", "def f():\n    {body}\n    {nothing}\n    return {{x}}", body=["a = 1", "", "b = 2"],
                nothing=[]) == "def f():\n    a = 1\n\n    b = 2\n    return {x}"


def test_column_sweeps_read_the_transposed_tables():
    """The emitters also serve a kernel that owns a key tile and loops over query tiles (dK/dV)."""
    def step(masked):
        return [f"pass  # masked={masked}"]

    lines = Table().loops(COLUMNS, MODES[""], step)
    ast.parse("for _ in ():\n" + "\n".join("    " + line for line in lines))
    text = "\n".join(lines)
    assert "tl.load(full_q_num_blocks + off_h * stride_fnh + start_n)" in text
    assert "start_m = tl.multiple_of(tl.load(partial_column + i) * BLOCK_M, BLOCK_M)" in text
    assert "kv_indices" not in text and "masked=True" in text
    with pytest.raises(ValueError, match="no runs of query tiles per column"):
        Runs(1, 1).params(COLUMNS)
