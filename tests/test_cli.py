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
