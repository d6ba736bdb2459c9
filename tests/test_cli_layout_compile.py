"""`patternc layout` and `patternc compile` called as functions, and the modules `compile` writes:
imported in a fresh interpreter where `import patternc` fails, run under TRITON_INTERPRET=1 on
CPU float32 inputs, and compared with an fp64 reference.

Sizes: every example pattern is compiled (routed ones carry the routing kernels); the
interpreter runs a few (at least one per example file), because it costs milliseconds per key
tile. The vision patterns live on a fixed 128 x 128 grid (16384 tokens), so they run with
128 x 128 tiles, and their reference is computed a band of rows at a time (a dense 16384^2 fp64
reference would need ~8 GB).
`video` (design.pat) is compiled only under HYPOTHESIS_PROFILE=ci: its layout alone takes about
a minute (36864 tokens, every candidate tile refined).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import patternc
from patternc.aot import CompiledModule, build_module, compile_module, module_name, parse_config
from patternc.cli import main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
CI = os.environ.get("HYPOTHESIS_PROFILE") == "ci"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def pat(tmp_path):
    def write(text, name="p.pat"):
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return str(path)

    return write


def _where(file, pattern, primitive="neighborhood") -> str:
    """`file:line:col` of a primitive of an example pattern (so edits to the examples don't break tests)."""
    return str(next(p.span for p in patternc.load(file)[pattern].primitives() if p.name == primitive))


# --------------------------------------------------------------------------- layout


def test_layout_of_a_tiny_pattern(capsys, pat):
    code, out, err = run(capsys, "layout", pat("causal\n"), "-n", 8, "--block", "2x2")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == "p: causal"
    assert lines[1] == "M = N = 8, 1 head, tiles 2x2 (4 x 4 per head)"
    table = {line[:15].strip(): line[15:].strip() for line in lines[3:11]}
    assert table["density"] == "0.6250  (10 of 16 tiles visited)"
    assert table["ideal speedup"] == "1.60x"
    assert table["full tiles"] == "6" and table["empty tiles"] == "6"
    assert table["partial tiles"].startswith("4  (40.0%")
    assert table["refined tiles"].startswith("0")
    assert table["token order"] == "natural" and table["empty rows"] == "none"
    assert lines[12].startswith("block map, head 0 ('#' full, '+' partial, '.' empty")
    assert lines[13:] == ["+...", "#+..", "##+.", "###+"]


def test_layout_json_matches_the_layout(capsys, pat):
    f = pat("""\
        pattern cols(heads = 4):
            causal & (window(3) | columns(4, phase = h % 4, block = 8)) - sink(2)
    """)
    code, out, _ = run(capsys, "layout", f, "-n", 40, "--kv-len", 48, "--block", "8x16", "--json")
    assert code == 0
    data = json.loads(out)
    layout = patternc.load(f)["cols"].layout(40, 48, block_m=8, block_n=16)
    assert data["counts"] == layout.counts
    assert (data["M"], data["N"], data["heads"], data["block"], data["tiles_per_head"]) == (40, 48, 4, [8, 16], [5, 3])
    assert data["density"] == pytest.approx(layout.density)
    assert data["ideal_speedup"] == pytest.approx(layout.ideal_speedup)
    assert data["refined_tiles"] == layout.refined_tiles and data["residue"] is None
    assert [e["count"] for e in data["empty_rows"]] == [len(e) for e in layout.empty_rows]
    assert [e["first"] for e in data["empty_rows"]] == [e[:8].tolist() for e in layout.empty_rows]
    chars = ".+#"
    expected = [["".join(chars[v] for v in row) for row in head.tolist()] for head in layout.block_map()]
    assert data["block_map"] == expected


def test_layout_reports_residue_order_empty_rows_and_downsamples(capsys, pat):
    code, out, _ = run(capsys, "layout", pat("causal & window(16, dilation=4)\n"), "-n", 256, "--block", "16x16")
    assert code == 0
    assert "residue classes mod 4 (4 classes of 64 tokens" in out and "tiles in residue order" in out
    code, out, _ = run(capsys, "layout", pat("causal & window(16, dilation=4)\n"), "-n", 256, "--block", "16x16",
                       "--order", "natural")
    assert "token order    natural" in out
    heads = pat("pattern h(heads = 3): causal & columns(4, phase = h % 4, block = 8)\n", "h.pat")
    code, out, _ = run(capsys, "layout", heads, "-n", 40, "--block", "8x8", "--head", 2)
    assert code == 0 and "empty rows     24 over all heads" in out
    table = out[out.index("heads    empty rows"):].splitlines()
    assert table[2].split() == ["1", "8", "0,", "1,", "2,", "3,", "4,", "5,", "6,", "7"]
    assert table[3].split()[:2] == ["2", "16"] and table[3].endswith("...")
    assert "block map, head 2" in out
    code, out, _ = run(capsys, "layout", pat("causal\n"), "-n", 1024, "--block", "4x4")
    assert "downsampled: each character is the max of 4x4 tiles" in out
    rows = out.splitlines()[-64:]
    assert len(rows[0]) == 64 and rows[0] == "#" + "." * 63 and rows[-1] == "#" * 64


def test_layout_routed_and_png(capsys, pat, tmp_path):
    code, out, _ = run(capsys, "layout", EXAMPLES / "routed.pat", "-p", "moba", "-n", 2048, "--block", "128x128")
    assert code == 0 and "(routed: blocks chosen for random q, k)" in out and "not checked (routed" in out
    pytest.importorskip("matplotlib")
    png = tmp_path / "map.png"
    code, out, _ = run(capsys, "layout", pat("causal & window(8)\n"), "-n", 64, "--block", "8x8", "--png", png)
    assert code == 0 and png.read_bytes()[:4] == b"\x89PNG" and f"wrote {png}" in out


def test_layout_errors(capsys, pat):
    bad = pat("pattern p:\n    causal & windw(8)\n")
    code, out, err = run(capsys, "layout", bad, "-n", 64)
    assert code == 1 and out == "" and err.startswith(f"{bad}:2:14: error: unknown primitive 'windw'")
    grid = EXAMPLES / "vision.pat"
    code, _, err = run(capsys, "layout", grid, "-p", "natten2d", "-n", 64)  # the grid fixes the length
    where = patternc.load(grid)["natten2d"].span
    assert code == 1 and err.startswith(f"{where}: error: pattern 'natten2d' lives on grid(128, 128): its length "
                                        "is 16384 tokens, not --seq-len 64")
    assert "hint: leave out --seq-len (-n): the grid fixes it" in err
    code, _, err = run(capsys, "layout", grid, "-p", "natten2d", "--kv-len", 64)
    assert code == 1 and f"{_where(grid, 'natten2d')}: error: neighborhood: needs M == N == 128 * 128" in err
    assert "Traceback" not in err
    for block in ("128x", "0x64", "axb", "8x8x8", "-4"):
        code, _, err = run(capsys, "layout", pat("causal\n"), "-n", 64, "--block", block)
        assert code == 2 and "usage:" in err and "--block" in err, block
    code, _, err = run(capsys, "layout", pat("causal\n"), "-n", 64, "--head", 1)
    assert code == 2 and "--head 1" in err


# --------------------------------------------------------------------------- compile: the CLI


def test_compile_writes_a_module_and_a_report(capsys, tmp_path):
    out_dir = tmp_path / "new" / "dir"
    code, out, err = run(capsys, "compile", EXAMPLES / "llm.pat", "-p", "dilated", "-n", 256, "--head-dim", 32,
                         "--dtype", "fp16", "--config", "32x16/w4/s2", "-o", out_dir)
    assert code == 0 and err == ""
    assert out.startswith(f"wrote {out_dir / 'dilated.py'} (dilated.md): density ")
    assert sorted(p.name for p in out_dir.iterdir()) == ["dilated.md", "dilated.py"]
    source = (out_dir / "dilated.py").read_text()
    assert source.startswith('"""patternc generated attention kernel')
    assert "causal & window(1024, dilation=4)" in source and "residue order: 4 classes of 64 tokens" in source
    assert "R = 4" in source and "SEQ_LEN = 256" in source and "DTYPE = torch.float16" in source
    assert "patternc" not in "".join(l for l in source.splitlines() if l.lstrip().startswith(("import", "from")))
    report = (out_dir / "dilated.md").read_text()
    layout = patternc.load(EXAMPLES / "llm.pat")["dilated"].layout(256, block_m=32, block_n=16)
    assert f"| density          | {layout.density:.4f}" in report
    assert f"{layout.counts['full']} full, {layout.counts['partial']} partial" in report
    assert "32x16/w4/s2" in report and "float16" in report


def test_compile_refuses_to_overwrite_other_files(capsys, tmp_path):
    mine = tmp_path / "swa.py"
    mine.write_text("print('my own code')\n")
    argv = ["compile", EXAMPLES / "llm.pat", "-p", "swa", "-n", 64, "--config", "16x16", "-o", tmp_path]
    code, _, err = run(capsys, *argv)
    assert code == 1 and "not written by patternc; not overwriting it" in err
    assert mine.read_text() == "print('my own code')\n" and not (tmp_path / "swa.md").exists()
    mine.unlink()
    assert run(capsys, *argv)[0] == 0
    first = mine.read_bytes()
    assert run(capsys, *argv)[0] == 0 and mine.read_bytes() == first  # its own files: replaced, byte-identical
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_compile_writes_routed_and_random_patterns(capsys, pat, tmp_path):
    f = pat("""\
        pattern ok: causal & window(8)
        pattern moba: causal & topk(2, block=16)
        pattern rnd: causal & random(1, block=16)
    """)
    code, out, err = run(capsys, "compile", f, "-n", 64, "--config", "16x16", "-o", tmp_path)
    assert code == 0 and err == ""  # every pattern the language accepts compiles
    assert sorted(p.name for p in tmp_path.glob("*.py")) == ["moba.py", "ok.py", "rnd.py"]
    assert "wrote " + str(tmp_path / "moba.py") in out and "at most (routed: every key block chosen)" in out
    assert '"block_tables()": [' in (tmp_path / "rnd.py").read_text()
    assert "def route(plan, q, k" in (tmp_path / "moba.py").read_text()


def test_compile_usage_and_pattern_errors(capsys, pat, tmp_path):
    f = pat("causal\n")
    for extra in (["--config", "16by16"], ["--head-dim", "48"], ["--dtype", "fp8"], ["--memory", "smem"]):
        code, _, err = run(capsys, "compile", f, "-n", 64, "-o", tmp_path, *extra)
        assert code == 2 and "usage:" in err, extra
    assert run(capsys, "compile", f, "-n", 64)[0] == 2  # -o is required
    code, _, err = run(capsys, "compile", f, "-n", 64, "--config", "24x16", "-o", tmp_path)
    assert code == 1 and "block_m must be a power of two >= 16" in err
    vision = EXAMPLES / "vision.pat"
    code, _, err = run(capsys, "compile", vision, "-p", "gna3d", "-n", 64, "-o", tmp_path)
    assert code == 1 and "error: pattern 'gna3d' lives on grid(16, 32, 32): its length is 16384 tokens" in err
    code, _, err = run(capsys, "compile", vision, "-p", "gna3d", "--kv-len", 64, "-o", tmp_path)
    assert code == 1 and f"{_where(vision, 'gna3d')}: error: neighborhood: needs M == N == 16 * 32 * 32" in err
    out = tmp_path / "out"
    code, _, err = run(capsys, "compile", EXAMPLES / "design.pat", "-o", out)  # swa has no grid: -n needed
    assert code == 2 and "--seq-len (-n) is required: pattern 'swa'" in err and not out.exists()
    bad = pat("pattern p:\n    causal & windw(8)\n", "bad.pat")
    code, _, err = run(capsys, "compile", bad, "-n", 64, "-o", tmp_path)
    assert code == 1 and err.startswith(f"{bad}:2:14: error: unknown primitive 'windw'")


def test_aot_helpers():
    assert parse_config("128x64/w8/s3") == {"block_m": 128, "block_n": 64, "num_warps": 8, "num_stages": 3}
    assert parse_config("64x32") == {"block_m": 64, "block_n": 32}
    with pytest.raises(ValueError, match="like 128x64/w8/s3"):
        parse_config("128x64/s3/w8")
    assert module_name("swa") == "swa" and module_name("<stdin>") == "stdin"
    assert module_name("random") == "random_pattern" and module_name("2d") == "p_2d" and module_name("if") == "p_if"


# --------------------------------------------------------------------------- compile: the written modules

# (file, pattern (None: all of the file), seq_len, kv_len, CLI arguments); each file is written
# to its own directory (`llm-tma` for the TMA one)
SMALL = ["--config", "16x16/w4/s1", "--head-dim", "16"]
COMPILES = [
    ("llm.pat", None, 512, None, SMALL),  # every pattern of the file
    ("llm.pat", "dilated", 256, None, SMALL + ["--memory", "tma"]),
    ("design.pat", "swa", 384, None, ["--config", "64x64/w4/s1", "--head-dim", "32"]),
    ("design.pat", "s2", 384, None, ["--config", "64x64/w4/s1", "--head-dim", "32"]),
    ("design.pat", "mixed", 384, None, ["--config", "64x64/w4/s1", "--head-dim", "32"]),
    *([("design.pat", "video", 16 * 48 * 48, None, ["--config", "128x128/w4/s1", "--head-dim", "16"])] if CI else []),
    ("vision.pat", None, 128 * 128, None, ["--config", "128x128/w4/s1", "--head-dim", "16"]),
    ("extra.pat", None, 40, 72, ["--config", "16x16/w4/s1", "--head-dim", "64"]),
    ("routed.pat", None, 1024, None, ["--config", "64x64/w4/s1", "--head-dim", "16"]),  # routing kernels inside
]
EXTRA = """\
pattern ragged(heads = 2):              # M != N, tiles cut by the lengths, rows that see nothing
    causal & (window(20) | sink(3)) - global(34..36)
pattern bigbird(heads = 2):             # random's tables of bits travel in the module
    window(3, block=16) | global(0..1, block=16) | random(3, block=16)
"""
# (directory, module): batch, key/value heads (GQA), scale
RUNS = {
    ("llm", "dilated"): (2, 1, None),
    ("llm", "strided"): (1, 1, 0.3),  # runs don't fit: index tables
    ("llm-tma", "dilated"): (1, 1, None),
    ("design", "s2"): (1, 4, None),
    ("vision", "natten2d"): (1, 1, None),
    ("extra", "ragged"): (2, 1, None),
    ("extra", "bigbird"): (2, 1, None),
    ("routed", "moba"): (1, 1, None),  # routed modules select from q and k: a batch of 1 for the reference
    ("routed", "moba_token"): (1, 1, None),
    ("routed", "vmoba"): (1, 1, 0.5),
}
TOLERANCE = 1e-5

RUNNER = r'''
import importlib, json, os, sys, time
sys.modules["patternc"] = None  # from here on `import patternc` fails: the modules must not need it
import torch

jobs, out_dir = json.loads(sys.argv[1]), sys.argv[2]
imported, times = [], {}
for job in jobs:
    start = time.perf_counter()
    sys.path.insert(0, job["dir"])
    sys.modules.pop(job["module"], None)  # directories reuse names (swa.py in two of them)
    module = importlib.import_module(job["module"])
    sys.path.pop(0)
    assert module.__file__ == os.path.join(job["dir"], job["module"] + ".py"), module.__file__
    imported.append([job["dir"], job["module"]])
    if job["run"] is None:
        continue
    B, Hkv, scale = job["run"]
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, module.HEADS, module.SEQ_LEN, module.HEAD_DIM, generator=g)
    k, v = (torch.randn(B, Hkv, module.KV_SEQ_LEN, module.HEAD_DIM, generator=g) for _ in range(2))
    out, lse = module.attention(q, k, v, scale=scale, return_lse=True)
    saved = {"q": q, "k": k, "v": v, "out": out, "lse": lse}
    if module.SEQ_LEN * module.KV_SEQ_LEN <= 1 << 20:  # small: also without the LSE
        saved["plain"] = module.attention(q, k, v, scale=scale)
    torch.save(saved,
               os.path.join(out_dir, job["tag"] + ".pt"))
    times[job["tag"]] = round(time.perf_counter() - start, 2)
print(json.dumps({"imported": imported, "times": times,
                  "modules": sorted(m for m, x in sys.modules.items() if m.startswith("patternc") and x is not None)}))
'''


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """{(directory, module): (path, Pattern)} for every compile of COMPILES, through the CLI."""
    root = tmp_path_factory.mktemp("compiled")
    (root / "extra.pat").write_text(EXTRA)
    out = {}
    for file, name, n, kv, extra in COMPILES:
        path = EXAMPLES / file if file != "extra.pat" else root / "extra.pat"
        tag = Path(file).stem + ("-tma" if "tma" in extra else "")
        argv = ["compile", str(path), "-n", str(n), "--dtype", "fp32", "-o", str(root / tag), *extra]
        argv += ["-p", name] if name else []
        argv += ["--kv-len", str(kv)] if kv else []
        assert main(argv) == 0, argv
        patterns = patternc.load(path)
        for pname in [name] if name else patterns:
            out[(tag, module_name(pname))] = (root / tag / f"{module_name(pname)}.py", patterns[pname])
    return out


@pytest.fixture(scope="module")
def fresh_run(compiled, tmp_path_factory):
    """Import every written module, and run those of RUNS, in a fresh interpreter with
    TRITON_INTERPRET=1, no patternc on its path and `import patternc` made to fail."""
    results = tmp_path_factory.mktemp("results")
    jobs = [{"dir": str(path.parent), "module": path.stem, "run": RUNS.get(key), "tag": "-".join(key)}
            for key, (path, _) in compiled.items()]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["TRITON_INTERPRET"] = "1"
    proc = subprocess.run([sys.executable, "-I", "-c", RUNNER, json.dumps(jobs), str(results)], env=env,
                          cwd=results, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.splitlines()[-1]), results


def test_every_example_pattern_compiles(compiled):
    expected = {name for f in ("llm.pat", "design.pat", "vision.pat", "routed.pat")
                for name in patternc.load(EXAMPLES / f) if CI or name != "video"}
    assert {m for tag, m in compiled if tag != "extra"} == expected
    for path, _ in compiled.values():
        assert path.with_suffix(".md").read_text().startswith("<!-- written by patternc compile -->")


def test_modules_import_without_patternc(compiled, fresh_run):
    report, _ = fresh_run
    assert sorted(map(tuple, report["imported"])) == sorted((str(p.parent), p.stem) for p, _ in compiled.values())
    assert report["modules"] == []


@pytest.mark.parametrize("key", list(RUNS), ids=["-".join(k) for k in RUNS])
def test_modules_match_the_fp64_reference(compiled, fresh_run, key):
    _, results = fresh_run
    r = torch.load(results / f"{'-'.join(key)}.pt")
    pattern = compiled[key][1]
    q, k, v = (r[x].double() for x in "qkv")
    scale = RUNS[key][2]
    rows, ref, ref_lse = _reference(q, k, v, pattern, scale)
    assert not torch.isnan(r["out"]).any() and not torch.isnan(r["lse"]).any()
    assert "plain" not in r or torch.equal(r["out"], r["plain"])  # return_lse=False: the same output
    out, lse = r["out"][:, :, rows], r["lse"][:, :, rows]
    err = (out.double() - ref).abs().max().item()
    assert err <= TOLERANCE, f"max error {err:.2e} for {key}"
    empty = torch.isinf(ref_lse)
    assert torch.equal(torch.isinf(lse), empty)
    assert (lse.double() - ref_lse)[~empty].abs().max().item() <= TOLERANCE
    if key == ("extra", "ragged"):
        assert empty.any()  # the pattern was chosen to have empty rows: they must come out 0
        assert (out[empty[..., None].expand_as(out)] == 0).all()


def _reference(q, k, v, pattern, scale):
    """(rows, out, lse) of patternc.reference_attention. Where the M x N scores are large, only
    three bands of 512 rows (first, middle, last: a grid's borders and interior) are computed,
    from those rows of the mask (attention is row-wise, so that is the same result)."""
    B, H, M, D = q.shape
    N = k.shape[2]
    if M * N <= 1 << 22:
        return (slice(None), *patternc.reference_attention(q, k, v, pattern, scale=scale, return_lse=True))
    from patternc.analysis import mask_rows

    scale = D ** -0.5 if scale is None else scale
    k, v = (x.repeat_interleave(H // k.shape[1], dim=1) for x in (k, v))
    bands = [range(0, 512), range(M // 2 - 256, M // 2 + 256), range(M - 512, M)]
    mask = torch.cat([mask_rows(pattern, N, rows, list(range(H)), M=M) for rows in bands], 1)
    rows = torch.cat([torch.arange(r.start, r.stop) for r in bands])
    s = (q[:, :, rows] @ k.transpose(-1, -2) * scale).masked_fill(~mask[None], float("-inf"))
    lse = torch.logsumexp(s, -1)
    return rows, torch.exp(s - torch.where(torch.isinf(lse), 0.0, lse)[..., None]) @ v, lse


CHECKS = """
import importlib.util, sys, torch
spec = importlib.util.spec_from_file_location("patternc_test_s2_checks", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
q = torch.zeros(1, 16, 384, 32)
kv = torch.zeros(1, 4, 384, 32)
cases = [
    ((q[:, :, :256], kv, kv), "q has shape (1, 16, 256, 32) but this module was compiled for (1, 16, 384, 32)"),
    ((q, kv[..., :16], kv[..., :16]), "k has shape (1, 4, 384, 16)"),
    ((q[:, :8], kv, kv), "q has shape (1, 8, 384, 32)"),
    ((q, kv[:, :3], kv[:, :3]), "key/value heads (3) must divide the query heads (16)"),
    ((q.half(), kv, kv), "q is torch.float16 but this module was compiled for torch.float32"),
    ((q[0], kv, kv), "must be a 4-D tensor"),
    ((q, kv, kv), "set TRITON_INTERPRET=1 before importing"),
]
for args, message in cases:
    try:
        module.attention(*args)
    except ValueError as e:
        assert message in str(e), (message, str(e))
    else:
        raise AssertionError("no error for: " + message)
print("checked")
"""


def test_a_module_checks_its_inputs(compiled):
    # in a process of its own: importing generated kernels without the interpreter and running
    # others with it in one process trips Triton's interpreter (seen with triton 3.9)
    path = compiled[("design", "s2")][0]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", CHECKS, str(path)], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0 and "checked" in result.stdout, result.stderr[-2000:]


def test_compile_module_api(tmp_path):
    pattern = patternc.compile("causal & window(8)")
    built = build_module(pattern, 64, head_dim=16, dtype=torch.float32, config={"block_m": 16, "block_n": 16})
    assert isinstance(built, CompiledModule) and built.name == "pattern"
    again = build_module(pattern, 64, head_dim=16, dtype="fp32", config="16x16")
    assert again.source == built.source and again.report == built.report  # byte-deterministic
    path = compile_module(pattern, 64, head_dim=16, dtype="fp32", config="16x16", out_dir=tmp_path, name="win")
    assert path == tmp_path / "win.py" and "PATTERN_NAME = 'win'" in path.read_text()
    assert path.with_suffix(".md").exists()
    table = build_module(pattern, 64, head_dim=16, config={"block_m": 16, "block_n": 16, "iteration": "table"})
    assert '"kv_indices"' in table.source and '"runs()"' not in table.source
    with pytest.raises(patternc.PatternError, match="head_dim 48 is not supported"):
        build_module(pattern, 64, head_dim=48)
