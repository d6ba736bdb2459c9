"""The command line, called as a function: exit codes, error reports, maps, tables, JSON."""
from __future__ import annotations

import io
import json
import textwrap

import pytest

from patternc import cli
from patternc.cli import main

LLM = textwrap.dedent("""\
    let W = 8

    pattern swa(w = W):
        causal & window(w)

    pattern sinks:
        causal & (window(4) | sink(2))
""")


@pytest.fixture
def pat(tmp_path):
    def write(text, name="p.pat"):
        path = tmp_path / name
        path.write_text(text)
        return str(path)

    return write


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------- check


def test_check_ok(capsys, pat):
    a, b = pat(LLM), pat("causal\n", "bare.pat")
    code, out, err = run(capsys, "check", a, b)
    assert code == 0 and err == ""
    assert out.splitlines() == [f"{a}: ok: 2 patterns", f"{b}: ok: 1 pattern"]


def test_check_reports_errors_with_location_and_caret(capsys, pat):
    bad = pat("pattern p:\n    causal & windw(8)\n")
    code, out, err = run(capsys, "check", bad)
    assert code == 1 and out == ""
    lines = err.splitlines()
    assert lines[0].startswith(f"{bad}:2:14: error: unknown primitive 'windw'")
    assert lines[1].strip() == "causal & windw(8)"
    assert lines[2].strip() == "^~~~~"
    assert lines[2].index("^") == lines[1].index("windw")
    assert lines[3] == "hint: did you mean 'window'?"


def test_check_continues_after_a_bad_file(capsys, pat):
    good, bad = pat(LLM), pat("causal &\n", "bad.pat")
    code, out, err = run(capsys, "check", bad, good)
    assert code == 1 and f"{good}: ok: 2 patterns" in out and f"{bad}:1:" in err


def test_check_missing_file(capsys, tmp_path):
    code, out, err = run(capsys, "check", str(tmp_path / "nope.pat"))
    assert code == 1 and "can't read" in err


def test_stdin(capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("pattern a: causal\npattern b: sink(2)\n"))
    code, out, _ = run(capsys, "check", "-")
    assert code == 0 and out.strip() == "-: ok: 2 patterns"


def test_python_files_of_jit_predicates(capsys, pat):
    src = pat(textwrap.dedent("""\
        import patternc

        @patternc.jit
        def swa(q, k, h):
            return (q >= k) & (q - k < 3)
    """), "preds.py")
    code, out, _ = run(capsys, "show", src, "--seq-len", "4")
    assert code == 0 and out.splitlines()[2:6] == ["#...", "##..", "###.", ".###"]
    bad = pat("import patternc\n\n@patternc.jit\ndef f(q, k, h):\n    return q > k and k > 0\n", "bad.py")
    code, _, err = run(capsys, "check", bad)
    assert code == 1 and f"{bad}:5:12: error:" in err and "use & and |" in err


# --------------------------------------------------------------------------- show


def test_show_draws_a_tiny_causal_map(capsys, pat):
    code, out, err = run(capsys, "show", pat("causal\n"), "--seq-len", "4")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[1] == "M = N = 4, head 0 of 1, cell 1x1 tokens"
    assert lines[2:6] == ["#...", "##..", "###.", "####"]
    assert lines[6] == "visible: 10 of 16 pairs (62.50%)"


def test_show_cells_partial_and_lengths(capsys, pat):
    code, out, _ = run(capsys, "show", pat("causal\n"), "-n", "8", "--cell", "2")
    assert code == 0 and out.splitlines()[2:6] == ["+...", "#+..", "##+.", "###+"]
    code, out, _ = run(capsys, "show", pat("causal\n"), "-n", "2", "--kv-len", "5")
    assert out.splitlines()[1].startswith("M = 2, N = 5") and out.splitlines()[2:4] == ["####.", "#####"]
    code, out, _ = run(capsys, "show", pat("causal\n"), "-n", "1000")
    assert code == 0 and len(out.splitlines()[2]) == 63  # cell 16: ceil(1000 / 16) columns


def test_show_picks_patterns_and_heads(capsys, pat):
    f = pat(LLM)
    code, _, err = run(capsys, "show", f, "-n", "8")
    assert code == 2 and "choose one with --pattern" in err
    code, out, _ = run(capsys, "show", f, "-n", "8", "--pattern", "sinks")
    assert code == 0 and out.startswith("sinks: causal & (window(4) | sink(2))")
    code, _, err = run(capsys, "show", f, "-n", "8", "--pattern", "sink")
    assert code == 1 and "did you mean 'sinks'?" in err
    heads = pat("pattern h(heads = 2): columns(2, phase=h % 2)\n", "h.pat")
    code, out, _ = run(capsys, "show", heads, "-n", "4", "--head", "1")
    assert out.splitlines()[2:4] == [".#.#", ".#.#"]
    code, _, err = run(capsys, "show", heads, "-n", "4", "--head", "2")
    assert code == 2 and "--head 2" in err


def test_show_png(capsys, pat, tmp_path):
    pytest.importorskip("matplotlib")
    out_png = tmp_path / "map.png"
    code, out, _ = run(capsys, "show", pat("causal & window(4)\n"), "-n", "16", "--png", str(out_png))
    assert code == 0 and out_png.read_bytes()[:4] == b"\x89PNG"


# --------------------------------------------------------------------------- analyze


def test_analyze_json(capsys, pat):
    code, out, _ = run(capsys, "analyze", pat(LLM), "--json")
    assert code == 0
    data = json.loads(out)
    assert [p["pattern"] for p in data["patterns"]] == ["swa", "sinks"]
    swa = data["patterns"][0]["sections"][0]
    assert swa["keys_per_query"] == "8 - 28/N" and swa["exact"] is True and swa["cost"] == "O(N*w)"
    assert swa["empty_rows"] is False


def test_analyze_table(capsys, pat):
    code, out, _ = run(capsys, "analyze", pat(LLM), "--pattern", "swa")
    assert code == 0
    header, rule, row = out.splitlines()[:3]
    assert header.split()[:3] == ["pattern", "heads", "keys/query"] and set(rule) <= {"-", " "}
    assert row.split()[0] == "swa" and "8 - 28/N" in row and "exact for N >= 8" in row


def test_analyze_predicts_speedup_and_break_even(capsys, pat):
    code, out, _ = run(capsys, "analyze", pat("pattern swa: causal & window(1024)\n"), "--predict")
    assert code == 0
    assert "predicted speedup over dense on h100" in out
    predicted = out[out.index("predicted speedup over dense on h100"):].splitlines()
    row = next(line for line in predicted if line.startswith("swa")).split()
    assert row[0] == "swa" and "N" in row[1]
    code, out, _ = run(capsys, "analyze", pat("pattern swa: causal & window(1024)\n"), "--predict", "--json")
    prediction = json.loads(out)["patterns"][0]["prediction"]
    from patternc.sim.formulas import closed_form
    import patternc

    expected = closed_form(patternc.compile("causal & window(1024)"), heads=16)
    assert prediction["break_even"] == expected.break_even and expected.speedup_at(32768) > 10


# --------------------------------------------------------------------------- usage and internal errors


@pytest.mark.parametrize("argv", [
    [], ["frobnicate"], ["show"], ["show", "x.pat", "-n", "0"], ["show", "x.pat", "-n", "many"],
    ["analyze", "x.pat", "--jsn"],
])
def test_usage_errors_exit_2(capsys, argv):
    code, _, err = run(capsys, *argv)
    assert code == 2 and "usage:" in err


def test_help_and_version_exit_0(capsys):
    assert run(capsys, "--help")[0] == 0
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.startswith("patternc ")


def test_internal_errors_are_one_line_unless_debug(capsys, pat, monkeypatch):
    def boom(text, filename="<pattern>"):
        raise RuntimeError("kaput")

    monkeypatch.setattr("patternc.grammar.parse_text", boom)
    f = pat("causal\n")
    code, out, err = run(capsys, "check", f)
    assert code == 1 and err.strip() == "patternc: error: RuntimeError: kaput (run with --debug for the traceback)"
    with pytest.raises(RuntimeError, match="kaput"):
        main(["--debug", "check", f])
    with pytest.raises(RuntimeError, match="kaput"):
        main(["check", "--debug", f])


def test_subcommands_are_registered_functions():
    assert {"check", "show", "analyze"} <= set(cli.COMMANDS)
    assert all(c.run.__name__ == f"cmd_{c.name}" for c in cli.COMMANDS.values())


# --------------------------------------------------------------------------- issue 14: a CLI that feels finished

GRID = "pattern g:\n    grid(8, 8)\n    neighborhood((3, 3))\n"


def test_default_tiles_are_pattern_layouts():
    import inspect

    from patternc import Pattern
    from patternc.cli.common import DEFAULT_BLOCK

    signature = inspect.signature(Pattern.layout).parameters
    assert DEFAULT_BLOCK == (signature["block_m"].default, signature["block_n"].default) == (128, 128)


def test_default_tiles_in_layout(capsys, pat):
    code, out, _ = run(capsys, "layout", pat("causal\n"), "-n", "1024")
    assert code == 0 and "tiles 128x128 (8 x 8 per head)" in out
    code, out, _ = run(capsys, "layout", pat("causal\n"), "-n", "1024", "--json")
    assert json.loads(out)["block"] == [128, 128]


def test_grid_patterns_need_no_length(capsys, pat):
    f = pat(GRID)
    code, out, _ = run(capsys, "show", f)
    assert code == 0 and out.splitlines()[1].startswith("M = N = 64,")
    code, out, _ = run(capsys, "layout", f, "--block", "16x16")
    assert code == 0 and "M = N = 64, 1 head, tiles 16x16" in out
    code, out, _ = run(capsys, "simulate", f, "--json")
    assert code == 0 and json.loads(out)["N"] == 64
    code, out, err = run(capsys, "show", f, "-n", "32")  # disagrees with the grid: located, with the fix
    assert code == 1 and out == ""
    assert err.splitlines()[0] == f"{f}:1:1: error: pattern 'g' lives on grid(8, 8): its length is 64 tokens, " \
                                  "not --seq-len 32"
    assert err.splitlines()[-1] == "hint: leave out --seq-len (-n): the grid fixes it"
    assert run(capsys, "show", f, "-n", "64")[0] == 0  # agreeing is fine
    code, _, err = run(capsys, "show", pat(LLM), "-p", "swa")
    assert code == 2 and "--seq-len (-n) is required: pattern 'swa' declares no grid" in err


def test_tables_fit_100_columns_unless_wide(capsys, pat):
    long = pat("pattern a_video_pattern_with_a_long_name:\n    grid(8, 8, 8)\n    neighborhood((3, 3, 3))\n")
    code, out, _ = run(capsys, "analyze", long)
    assert code == 0 and max(map(len, out.splitlines())) <= 100
    assert "exact for" in out and "semantics)" in out  # wrapped, not cut
    code, out, _ = run(capsys, "analyze", long, "--wide")
    assert max(map(len, out.splitlines())) > 100
    f = pat("pattern swa: causal & window(1024)\n", "swa.pat")
    code, out, _ = run(capsys, "simulate", f, "-n", "8192", "--heads", "16")
    table = out[:out.index("\nnote:")] if "\nnote:" in out else out
    assert code == 0 and max(map(len, table.splitlines())) <= 100 and "overhead" not in out
    code, out, _ = run(capsys, "simulate", f, "-n", "8192", "--heads", "16", "--wide")
    header = next(line for line in out.splitlines() if line.split()[:2] == ["config", "ms"])
    assert {"full", "partial", "overhead", "tail", "CTA/SM", "block-sparse"} <= set(header.split())


def test_fit_table_wraps_the_widest_columns_at_spaces():
    from patternc.cli.common import fit_table

    rows = [["a", "word " * 30, "x" * 20], ["b", "short", "y"]]
    text = fit_table(rows, ["name", "text", "id"], wrap=(1,), width=60)
    assert max(map(len, text.splitlines())) <= 60 and "x" * 20 in text  # the unwrapped column stays whole
    assert fit_table(rows, ["name", "text", "id"], wrap=(1,), width=60, wide=True).count("\n") == 3


def test_simulate_of_a_routed_pattern_agrees_with_its_table(capsys):
    from pathlib import Path

    routed = Path(__file__).resolve().parent.parent / "examples" / "routed.pat"
    code, out, _ = run(capsys, "simulate", str(routed), "-p", "moba", "-n", "2048", "--heads", "2")
    assert code == 0
    lines = out.splitlines()
    headline = next(line for line in lines if line.startswith("predicted")).split()
    selection = next(line for line in lines if line.startswith("routed selection")).split()
    header = next(line for line in lines if line.split()[:2] == ["config", "ms"])
    first = lines[lines.index(header) + 2].split()
    assert header.split()[-4:] == ["selection", "density", "partial", "tiles"]
    assert first[0] == headline[3]  # the fastest config, in the headline and first in the table
    assert first[1] == headline[1]  # the same time, selection included
    assert first[-3] == f"{float(selection[2]):.3g}"  # the selection's cost, a labelled column


def test_simulate_every_pattern_of_a_file(capsys, pat):
    f = pat(LLM + GRID)
    code, out, err = run(capsys, "simulate", f, "-n", "4096")
    assert code == 1 and "pattern 'g' lives on grid(8, 8)" in err  # said, and the others go on
    rows = {line.split()[0] for line in out.splitlines()[3:]}
    assert out.startswith(f"{f}: 2 of 3 patterns, M = N = 4096;") and {"swa", "sinks"} <= rows
    code, out, _ = run(capsys, "simulate", pat(LLM), "-n", "4096", "--json")
    assert code == 0 and [p["name"] for p in json.loads(out)["patterns"]] == ["swa", "sinks"]
    code, _, err = run(capsys, "simulate", pat(LLM), "-n", "4096", "--sweep", "w=4..8")
    assert code == 2 and "choose it with --pattern" in err


def test_progress_only_on_a_terminal(capsys, monkeypatch):
    import sys

    from patternc.cli.common import progress, progress_lines

    items = [1, 2, 3]
    assert progress(items, "x") is items  # stderr is not a terminal here
    say = progress_lines(2, "x")
    say("one")
    say.close()
    assert capsys.readouterr() == ("one\n", "")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert list(progress(items, "counting")) == items
    say = progress_lines(2, "steps")
    say("one")
    say("two")
    say.close()
    out, err = capsys.readouterr()
    assert out == "one\ntwo\n" and "steps" in err  # the bar on stderr, the lines on stdout


def test_show_png_is_finer_and_the_map_unchanged(capsys, pat, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from patternc.layout import render

    seen = {}
    monkeypatch.setattr(render, "_save", lambda path, states, cell, lengths, title, labels, order:
                        seen.update(states=states, cell=cell, lengths=lengths, labels=labels))
    f = pat("causal & window(100)\n")
    code, plain, _ = run(capsys, "show", f, "-n", "1000", "--kv-len", "1200")
    code, out, _ = run(capsys, "show", f, "-n", "1000", "--kv-len", "1200", "--png", str(tmp_path / "m.png"))
    assert code == 0 and out.splitlines()[:-1] == plain.splitlines()  # the text map: the same cells
    assert seen["cell"] == (4, 4) and seen["states"].shape == (250, 300) and seen["lengths"] == (1000, 1200)
    assert set(seen["states"].flatten().tolist()) == {0, 1, 2}  # none, some, every pair visible
    assert seen["labels"] == ("no pair visible", "some pairs visible", "every pair visible")
