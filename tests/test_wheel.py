"""The wheel: built from the source tree, installed (not editable) into a scratch virtual
environment, and run from outside the repository as a user would: `python -m patternc layout`
(the README's main command) and the `patternc` script. The venv sees this interpreter's packages
(torch, triton, lark, ...: `--system-site-packages`, and a .pth naming this environment's
site-packages, since CI runs in a venv of its own) and the wheel goes in with `--no-deps`, so
nothing is downloaded or reinstalled; an editable install of patternc here must not shadow it."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LLM = ROOT / "examples" / "llm.pat"


def _run(*argv, cwd, env=None, timeout=300):
    done = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, argv))} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the tree (the build writes build/ and egg-info beside the
    sources: not into the working tree)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "patternc", src / "patternc", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _run(sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", tmp / "dist", cwd=src)
    (found,) = (tmp / "dist").glob("patternc-*.whl")
    return found


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A venv over this interpreter's site-packages with the wheel installed into it."""
    env = tmp_path_factory.mktemp("venv") / "env"
    _run(sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", env, cwd=env.parent)
    python = env / "bin" / "python"
    purelib = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                        cwd=env.parent).strip())
    outer = [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages") and Path(p).is_dir()]
    (purelib / "outer-environment.pth").write_text("".join(f"{p}\n" for p in outer))  # after the venv's own
    # this interpreter's pip (seen through the system site-packages) installs into the venv;
    # --ignore-installed: a patternc installed here (editable, say) is left alone, not uninstalled
    _run(python, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "-q", wheel,
         cwd=env.parent)
    return env


def test_the_wheel_holds_the_grammar_and_the_device_profiles(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "patternc/grammar/pattern.lark" in names
    shipped = sorted(p.name for p in (ROOT / "patternc" / "sim" / "profiles").glob("*.json"))
    assert shipped and all(f"patternc/sim/profiles/{name}" in names for name in shipped)
    assert not any("__pycache__" in n or n.startswith("tests/") for n in names)


def test_installed_from_the_wheel_it_runs_outside_the_repository(venv, tmp_path):
    python, script = venv / "bin" / "python", venv / "bin" / "patternc"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PATTERNC_CACHE_DIR"] = str(tmp_path / "cache")
    where = _run(python, "-c", "import patternc, pathlib; from patternc.sim.profile import PACKAGE_DIR; "
                               "from patternc.grammar import parser; "
                               "print(pathlib.Path(patternc.__file__).resolve()); print(PACKAGE_DIR.resolve()); "
                               "print(pathlib.Path(parser.__file__).resolve().parent)", cwd=tmp_path, env=env)
    package, profiles, grammar = (Path(line) for line in where.splitlines())
    assert package.is_relative_to(venv.resolve()), f"patternc came from {package}, not the venv"
    assert (grammar / "pattern.lark").is_file() and sorted(p.name for p in profiles.glob("*.json"))
    out = _run(python, "-m", "patternc", "layout", LLM, "--pattern", "swa", "--seq-len", 8192, cwd=tmp_path, env=env)
    assert out.startswith("swa: causal & window(1024)") and "tiles 128x128" in out and "density" in out
    out = _run(script, "check", LLM, cwd=tmp_path, env=env)
    assert out.strip() == f"{LLM}: ok: 9 patterns"
    out = _run(script, "simulate", LLM, "-p", "swa", "-n", 8192, "--device", "h200", cwd=tmp_path, env=env)
    assert "device profile h200" in out  # a profile read from inside the installed package
