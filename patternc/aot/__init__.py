"""Ahead-of-time compilation: one pattern, one problem shape -> a standalone Python module.

    path = compile_module(pattern, seq_len=4096, kv_len=None, heads=None, head_dim=128, dtype="bf16",
                          config="128x64/w8/s3", out_dir="kernels", name="swa")
    # kernels/swa.py:  from swa import attention;  out = attention(q, k, v)
    # kernels/swa.md:  density, ideal speedup, tile config, tile counts

The module is the generated kernel source (`patternc.codegen.module_source`, the layout
summary in its header) followed by a short section holding the problem it was compiled for and
the layout's int32 tables (or runs), zlib-compressed and base64-encoded in the file itself, and
`attention(q, k, v, scale=None, return_lse=False)`, which checks the inputs against that problem
and calls the generated `launch` (`module.py`). A routed pattern's module carries patternc's
routing kernels and their plan instead of a layout, and chooses its key blocks from q and k on
every call (`routed.py`). It imports torch and triton only, and the same inputs give
byte-identical files.
"""
from __future__ import annotations

import keyword
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import PatternError
from ..ir import Pattern
from ..runtime.attention import DTYPES
from .module import layout_data, layout_reads, tail_source

_DTYPE_ALIASES = {**{v: v for v in DTYPES.values()}, **DTYPES, "half": "float16", "float": "float32"}
MODULE_MARK = '"""patternc generated'  # how a module we wrote begins (the kernel header)
REPORT_MARK = "<!-- written by patternc compile -->"
_CONFIG = re.compile(r"^(\d+)x(\d+)(?:/w(\d+))?(?:/s(\d+))?$")


def parse_config(text: str) -> dict:
    """`"128x64/w8/s3"` -> `{"block_m": 128, "block_n": 64, "num_warps": 8, "num_stages": 3}`
    (`/wW` and `/sS` may be left out)."""
    m = _CONFIG.match(text.strip())
    if not m:
        raise ValueError(f"expected BLOCK_MxBLOCK_N[/wWARPS][/sSTAGES] like 128x64/w8/s3, got {text!r}")
    keys = ("block_m", "block_n", "num_warps", "num_stages")
    return {key: int(v) for key, v in zip(keys, m.groups()) if v is not None}


def config_text(cfg: dict) -> str:
    return f"{cfg['block_m']}x{cfg['block_n']}/w{cfg['num_warps']}/s{cfg['num_stages']}"


def dtype_name(dtype) -> str:
    """'bfloat16', 'float16' or 'float32' from a short name (bf16, fp16, fp32, half, float), a long
    name or a torch dtype."""
    text = str(dtype).removeprefix("torch.")
    if text not in _DTYPE_ALIASES:
        raise PatternError(f"dtype must be one of bf16, fp16, fp32, got {dtype!r}")
    return _DTYPE_ALIASES[text]


def module_name(name: str) -> str:
    """A pattern name as an importable module name that shadows no standard or torch module
    (a pattern called `random` is written as `random_pattern.py`)."""
    text = re.sub(r"\W", "_", name).strip("_") or "pattern"
    if text[0].isdigit() or keyword.iskeyword(text):
        text = "p_" + text
    if text in sys.stdlib_module_names or text in ("torch", "triton", "numpy"):
        text += "_pattern"
    return text


def _heads(n: int) -> str:
    return f"{n} head" + ("" if n == 1 else "s")


def _is_pow2(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def resolve_config(head_dim: int, dtype: str, config) -> dict:
    """The full kernel config: `config` (a dict or "128x64/w8/s3" text) over the GPU default."""
    import torch

    from ..runtime.attention import default_config

    given = parse_config(config) if isinstance(config, str) else dict(config or {})
    cfg = dict(default_config(head_dim, getattr(torch, dtype), interpret=False), **given)
    for key in ("block_m", "block_n"):
        if not _is_pow2(cfg[key]) or cfg[key] < 16:
            raise PatternError(f"{key} must be a power of two >= 16 (tl.dot's minimum), got {cfg[key]}")
    if not _is_pow2(cfg["num_warps"]) or cfg["num_warps"] > 32:
        raise PatternError(f"num_warps must be a power of two up to 32, got {cfg['num_warps']}")
    if cfg["num_stages"] < 1:
        raise PatternError(f"num_stages must be at least 1, got {cfg['num_stages']}")
    for key, allowed in (("memory", ("pointers", "tma")), ("iteration", ("auto", "table")),
                         ("order", ("auto", "natural", "box"))):
        if cfg.get(key, allowed[0]) not in allowed:
            raise PatternError(f"{key} must be one of {', '.join(allowed)}, got {cfg[key]!r}")
    return cfg


def check_compilable(pattern: Pattern) -> None:
    """Refuse patterns whose kernels need data the generated code can't hold yet."""
    for p in pattern.primitives():
        reason = p.standalone_error()
        if reason is not None:  # a routed primitive runs in patternc.attention, any other in the reference
            hint = ("run them with patternc.attention(q, k, v, pattern)" if p.routed
                    else "patternc.reference_attention computes it densely")
            raise PatternError(reason, p.span, hint)


def summary_text(layout) -> str:
    """Layout.summary() as the lines of the generated module's header."""
    s = layout.summary()
    order = "natural token order" if layout.permutation is None else layout.permutation.describe()
    lengths = f"M = N = {s['M']}" if s["M"] == s["N"] else f"M = {s['M']}, N = {s['N']}"
    speedup = "inf" if s["ideal_speedup"] == float("inf") else f"{s['ideal_speedup']:.2f}x"
    return (f"layout: {lengths}, {_heads(s['heads'])}, {s['block']} tiles, {order};\n"
            f"density {s['density']:.4f} (ideal speedup {speedup}): {s['full']} full, {s['partial']} partial, "
            f"{s['empty']} empty tiles\n(partial share {s['partial_share']:.3f}, {s['refined_tiles']} refined).\n"
            f"Call attention(q, k, v, scale=None, return_lse=False) at the bottom of this file.\n")


# --------------------------------------------------------------------------- compile_module


@dataclass(frozen=True)
class CompiledModule:
    """A module built for one problem, not yet written: `source` (`<name>.py`), `report` (`<name>.md`)."""

    name: str
    source: str
    report: str
    layout: object  # a routed pattern's: with every key block chosen (the most a call visits)
    config: dict
    routed: bool = False

    def write(self, out_dir: str | Path, report: bool = True) -> Path:
        """Write `out_dir/<name>.py` (and `.md`) atomically, creating `out_dir`; refuses to replace a
        file that patternc didn't write. Returns the module's path."""
        out_dir = Path(out_dir)
        files = [(out_dir / f"{self.name}.py", MODULE_MARK, self.source)]
        if report:
            files.append((out_dir / f"{self.name}.md", REPORT_MARK, self.report))
        for path, mark, _ in files:
            _check_overwrite(path, mark)
        out_dir.mkdir(parents=True, exist_ok=True)
        for path, _, text in files:
            _atomic_write(path, text)
        return files[0][0]


def build_module(pattern: Pattern, seq_len: int, kv_len: int | None = None, heads: int | None = None,
                 head_dim: int = 128, dtype="bf16", config=None, name: str | None = None) -> CompiledModule:
    """The module and report of `compile_module`, in memory."""
    from ..codegen import make_spec, module_source
    from ..runtime.attention import SUPPORTED_HEAD_DIMS

    check_compilable(pattern)
    M = seq_len
    N = kv_len if kv_len is not None else seq_len
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise PatternError(f"head_dim {head_dim} is not supported", None,
                           f"supported: {', '.join(map(str, SUPPORTED_HEAD_DIMS))}")
    dtype = dtype_name(dtype)
    cfg = resolve_config(head_dim, dtype, config)
    name = module_name(name or pattern.name or "pattern")
    if pattern.is_routed:
        from .routed import routed_parts

        kernel, data, layout, routing, cfg = routed_parts(pattern, M, N, heads, head_dim, cfg, summary_text)
        source = kernel + tail_source(name, M, N, layout.heads, dtype, data, routing)
        report = report_text(pattern, name, layout, head_dim, dtype, cfg, None, routed=True)
        return CompiledModule(name, source, report, layout, cfg, routed=True)
    layout = pattern.layout(M, N, heads=heads, block_m=cfg["block_m"], block_n=cfg["block_n"],
                            order=cfg.get("order", "auto"))
    runs = layout.runs() if cfg.get("iteration", "auto") != "table" else None
    if not getattr(layout.permutation, "tma", True):  # box order: tiles through pointers
        cfg = dict(cfg, memory="pointers")
    spec = make_spec(pattern, heads=layout.heads, M=M, N=N, head_dim=head_dim, block_m=cfg["block_m"],
                     block_n=cfg["block_n"], num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
                     runs=None if runs is None else (runs[0].shape[2], runs[1].shape[2]),
                     tma=cfg.get("memory", "pointers") == "tma",
                     **(layout.permutation.kernel_order if layout.permutation is not None else {}))
    kernel = module_source(spec, summary=summary_text(layout), backward=True)
    source = kernel + tail_source(name, M, N, layout.heads, dtype, layout_data(layout, layout_reads(kernel)))
    report = report_text(pattern, name, layout, head_dim, dtype, cfg, runs)
    return CompiledModule(name, source, report, layout, cfg)


def compile_module(pattern: Pattern, seq_len: int, kv_len: int | None = None, heads: int | None = None,
                   head_dim: int = 128, dtype="bf16", config=None, out_dir: str | Path = ".",
                   name: str | None = None, report: bool = True) -> Path:
    """Write `out_dir/<name>.py`, a module needing only torch and triton that runs `pattern` for
    q `[B, heads, seq_len, head_dim]` and k, v `[B, Hkv, kv_len, head_dim]` of `dtype` ("bf16",
    "fp16", "fp32" or a torch dtype), and (with `report`) `out_dir/<name>.md`: density, ideal
    speedup, tile config and counts. Returns the module's path. `name` defaults to the
    pattern's (made an importable module name that shadows no standard module).

    `config`: a dict or "128x64/w8/s3" text over the GPU default for the head_dim and dtype;
    dict keys also `memory` ("pointers" or "tma"), `iteration` ("auto": runs of key tiles where
    every row has few, "table": index tables) and `order` ("auto": residue order for dilated or
    strided patterns, box order for neighborhoods on a 2-D/3-D grid where it visits fewer tiles;
    "natural"; "box"). Files are written atomically, and a file that patternc didn't write is
    never overwritten. A routed pattern's (topk) module chooses its key blocks from q and
    k on every call, with patternc's routing kernels written into it; its tiles are halved where
    they don't divide the routing block.
    """
    out_dir = Path(out_dir)
    target = out_dir / f"{module_name(name or pattern.name or 'pattern')}.py"
    _check_overwrite(target, MODULE_MARK)  # before the work, not only before the writing
    built = build_module(pattern, seq_len, kv_len, heads, head_dim, dtype, config, name)
    return built.write(out_dir, report)


def report_text(pattern: Pattern, name: str, layout, head_dim: int, dtype: str, cfg: dict, runs,
                routed: bool = False) -> str:
    """The Markdown report written beside the module (routed: `layout` with every key block chosen)."""
    from tabulate import tabulate

    s = layout.summary()
    lengths = f"M = N = {s['M']}" if s["M"] == s["N"] else f"M = {s['M']}, N = {s['N']}"
    speedup = "inf" if s["ideal_speedup"] == float("inf") else f"{s['ideal_speedup']:.2f}x"
    iteration = ("index tables" + (", written per call by the routing kernels" if routed else "") if runs is None
                 else f"runs of key tiles ({runs[0].shape[2]} full, {runs[1].shape[2]} partial per row)")
    most = " at most (every key block chosen)" if routed else ""
    order = "natural" if layout.permutation is None else layout.permutation.describe()
    n_empty = 0 if routed else sum(len(e) for e in layout.empty_rows)
    where = f" ({pattern.span})" if pattern.span is not None else ""
    rows = [
        ["problem", f"{lengths}, {_heads(s['heads'])}, head_dim {head_dim}, {dtype}"],
        ["tile config", f"{config_text(cfg)}, memory {cfg.get('memory', 'pointers')}, {iteration}"],
        ["token order", order],
        ["density", f"{s['density']:.4f}{most}"],
        ["ideal speedup", speedup],
        ["tiles", f"{s['full']} full, {s['partial']} partial, {s['empty']} empty (of {layout.counts['total']}){most}"],
        ["partial share", f"{s['partial_share']:.3f}"],
        ["refined tiles", str(s["refined_tiles"])],
        ["empty query rows", "per call, from the choice" if routed else "none" if not n_empty else
         f"{n_empty} over all heads (output 0, LSE -inf)"],
    ]
    return (f"{REPORT_MARK}\n# {name}\n\npattern{where}:\n\n```\n{pattern}\n```\n\n"
            + tabulate(rows, headers=["", "value"], tablefmt="github") + "\n\n"
            + f"Use: `from {name} import attention; out = attention(q, k, v)` (module `{name}.py`).\n")


def _check_overwrite(path: Path, mark: str) -> None:
    if not path.exists():
        return
    try:
        with open(path, encoding="utf-8") as f:
            head = f.read(len(mark))
    except (OSError, UnicodeDecodeError):
        head = ""
    if not path.is_file() or head != mark:
        raise PatternError(f"{path} exists and was not written by patternc; not overwriting it", None,
                           "choose another output directory, or remove the file")


def _atomic_write(path: Path, text: str) -> None:
    """Write through a temporary file and a rename, so readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a written module is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
