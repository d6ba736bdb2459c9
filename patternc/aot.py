"""Ahead-of-time compilation: one pattern, one problem shape -> a standalone Python module.

    path = compile_module(pattern, seq_len=4096, kv_len=None, heads=None, head_dim=128, dtype="bf16",
                          config="128x64/w8/s3", out_dir="kernels", name="swa")
    # kernels/swa.py:  from swa import attention;  out = attention(q, k, v)
    # kernels/swa.md:  density, ideal speedup, tile config, tile counts

The module is the generated kernel source (`patternc.codegen.module_source`, the layout
summary in its header) followed by a short section holding the problem it was compiled for and
the layout's int32 tables (or runs), zlib-compressed and base64-encoded in the file itself, and
`attention(q, k, v, scale=None, return_lse=False)`, which checks the inputs against that problem
and calls the generated `launch`. It imports torch and triton only, and the same inputs give
byte-identical files.
"""
from __future__ import annotations

import base64
import keyword
import os
import re
import sys
import tempfile
import textwrap
import zlib
from dataclasses import dataclass
from pathlib import Path

from .errors import PatternError
from .ir import Pattern
from .runtime.attention import DTYPES

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

    from .runtime.attention import default_config

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
                         ("order", ("auto", "natural"))):
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


# --------------------------------------------------------------------------- the written module

TAIL = '''

# ---------------------------------------------------------------------------- compiled problem
# Written by `patternc compile`: the problem this module serves, the layout's tables for it, and
# `attention()`, which checks its inputs against them and calls `launch` above.
import base64 as _base64
import os as _os
import types as _types
import zlib as _zlib

PATTERN_NAME = {name!r}
SEQ_LEN = {M}  # queries
KV_SEQ_LEN = {N}  # keys and values
HEADS = {H}  # query heads (key/value heads: any divisor, for GQA/MQA)
DTYPE = torch.{dtype}
_INTERPRETED = _os.environ.get("TRITON_INTERPRET") == "1"  # read by triton.jit when the kernels above were defined

# The layout data `launch` reads (`layout.<name>`; `name()` for a method): int32 tensors, each
# (shape, shared by every head, zlib-compressed little-endian bytes in base64); a tensor shared
# by every head is stored once and expanded.
LAYOUT_DATA = {{
{tables}
}}
_layouts = {{}}


def _tensor(shape, shared, blob):
    data = torch.frombuffer(bytearray(_zlib.decompress(_base64.b64decode(blob))), dtype=torch.int32).view(shape)
    return data.expand(HEADS, *shape[1:]) if shared else data


def _value(entry, device):
    if isinstance(entry, list):  # a method returning a tuple of tensors
        values = tuple(_tensor(*e).to(device) for e in entry)
        return lambda: values
    return _tensor(*entry).to(device)


def layout_on(device):
    """The layout object `launch` reads, its tensors on `device` (made once per device)."""
    device = torch.device(device)
    if device not in _layouts:
        _layouts[device] = _types.SimpleNamespace(
            **{{name.removesuffix("()"): _value(entry, device) for name, entry in LAYOUT_DATA.items()}})
    return _layouts[device]


def _check(q, k, v):
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"{{name}} must be a 4-D tensor [batch, heads, length, head_dim], "
                             f"got {{getattr(x, 'shape', type(x).__name__)}}")
    B, H, M, D = q.shape
    expect = {{"q": (B, HEADS, SEQ_LEN, HEAD_DIM), "k": (B, k.shape[1], KV_SEQ_LEN, HEAD_DIM),
              "v": (B, k.shape[1], KV_SEQ_LEN, HEAD_DIM)}}
    for name, x in (("q", q), ("k", k), ("v", v)):
        if tuple(x.shape) != expect[name]:
            raise ValueError(f"{{name}} has shape {{tuple(x.shape)}} but this module was compiled for {{expect[name]}} "
                             f"(batch, heads, length, head_dim); recompile with patternc compile for other shapes")
    if k.shape[1] < 1 or HEADS % k.shape[1]:
        raise ValueError(f"key/value heads ({{k.shape[1]}}) must divide the query heads ({{HEADS}}) for GQA/MQA")
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.dtype != DTYPE:
            raise ValueError(f"{{name}} is {{x.dtype}} but this module was compiled for {{DTYPE}}; "
                             f"recompile with patternc compile --dtype for another")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {{q.device}}, {{k.device}}, {{v.device}}")
    if q.device.type == "cpu" and not _INTERPRETED:
        raise ValueError("CPU tensors run only in Triton's interpreter: set TRITON_INTERPRET=1 before importing "
                         "this module, or move q, k, v to the GPU")


class _Attention(torch.autograd.Function):
    """The kernels above with their gradients: launch forward, launch_backward backward."""

    @staticmethod
    def forward(ctx, q, k, v, scale):
        lse = torch.empty(q.shape[0], HEADS, SEQ_LEN, dtype=torch.float32, device=q.device)
        out, lse = launch(q, k, v, layout_on(q.device), scale=scale, lse=lse)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.scale = scale
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = launch_backward(q, k, v, out, lse, dout.contiguous(), layout_on(q.device), scale=ctx.scale,
                                     dlse=dlse)
        return dq, dk, dv, None


def attention(q, k, v, scale=None, return_lse=False):
    """Sparse attention with this module's pattern: q [B, HEADS, SEQ_LEN, HEAD_DIM], k and v
    [B, Hkv, KV_SEQ_LEN, HEAD_DIM] (Hkv divides HEADS), all DTYPE on one device; `scale` defaults
    to HEAD_DIM ** -0.5. Returns out [B, HEADS, SEQ_LEN, HEAD_DIM], and with return_lse=True also
    the log-sum-exp [B, HEADS, SEQ_LEN] (float32, natural log). Rows that see no key get 0 and
    LSE = -inf. Differentiable in q, k, v (and through the LSE): the backward kernels above run
    when a gradient is asked for."""
    _check(q, k, v)
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        out, lse = _Attention.apply(q, k, v, scale)
        return (out, lse) if return_lse else out
    lse = torch.empty(q.shape[0], HEADS, SEQ_LEN, dtype=torch.float32, device=q.device) if return_lse else None
    out, lse = launch(q, k, v, layout_on(q.device), scale=scale, lse=lse)
    return (out, lse) if return_lse else out
'''

def layout_reads(source: str) -> list[str]:
    """The layout attributes the generated `launch` reads, in order of first use (`runs()` for a
    method call): they are what the written module must carry."""
    launch = source[source.index("\ndef launch("):]
    found = re.findall(r"\blayout\.(\w+)(\(\))?", launch)
    return list(dict.fromkeys(name + call for name, call in found))


def _encode_tensor(tensor, heads: int, indent: str = "    ") -> str:
    import numpy as np
    import torch

    tensor = tensor.cpu()
    shared = heads > 1 and tensor.shape[0] == heads and torch.equal(tensor, tensor[:1].expand_as(tensor))
    data = np.ascontiguousarray((tensor[:1] if shared else tensor).numpy(), dtype="<i4")
    blob = base64.b64encode(zlib.compress(data.tobytes(), 9)).decode()
    lines = "\n".join(f'{indent}    "{line}"' for line in textwrap.wrap(blob, 96) or [""])
    return f"({tuple(data.shape)!r}, {shared}, (\n{lines}\n{indent}))"


def _encode(name: str, value, heads: int) -> str:
    if isinstance(value, tuple):
        items = "".join(f"        {_encode_tensor(t, heads, ' ' * 8)},\n" for t in value)
        return f'    "{name}": [\n{items}    ],'
    return f'    "{name}": {_encode_tensor(value, heads)},'


def layout_data(layout, names: list[str]) -> dict:
    """{name: tensor or tuple of tensors} for `layout_reads` names."""
    out = {}
    for name in names:
        value = getattr(layout, name.removesuffix("()"))
        out[name] = value() if name.endswith("()") else value
        items = out[name] if isinstance(out[name], tuple) else (out[name],)
        if out[name] is None or not all(hasattr(t, "dtype") and str(t.dtype) == "torch.int32" for t in items):
            raise TypeError(f"the generated launch reads layout.{name}, which is not int32 tensors; "
                            "patternc.aot can't write it out")
    return out


def summary_text(layout) -> str:
    """Layout.summary() as the lines of the generated module's header."""
    s = layout.summary()
    order = ("natural token order" if layout.permutation is None else
             f"residue order: {layout.permutation.modulus} classes of {layout.permutation.class_len} tokens")
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
    layout: object
    config: dict

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
    from .codegen import make_spec, module_source
    from .runtime.attention import SUPPORTED_HEAD_DIMS

    check_compilable(pattern)
    M = seq_len
    N = kv_len if kv_len is not None else seq_len
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise PatternError(f"head_dim {head_dim} is not supported", None,
                           f"supported: {', '.join(map(str, SUPPORTED_HEAD_DIMS))}")
    dtype = dtype_name(dtype)
    cfg = resolve_config(head_dim, dtype, config)
    name = module_name(name or pattern.name or "pattern")
    layout = pattern.layout(M, N, heads=heads, block_m=cfg["block_m"], block_n=cfg["block_n"],
                            order=cfg.get("order", "auto"))
    runs = layout.runs() if cfg.get("iteration", "auto") != "table" else None
    residue = layout.permutation.modulus if layout.permutation is not None else None
    spec = make_spec(pattern, heads=layout.heads, M=M, N=N, head_dim=head_dim, block_m=cfg["block_m"],
                     block_n=cfg["block_n"], num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
                     runs=None if runs is None else (runs[0].shape[2], runs[1].shape[2]),
                     tma=cfg.get("memory", "pointers") == "tma", residue=residue)
    kernel = module_source(spec, summary=summary_text(layout), backward=True)
    data = layout_data(layout, layout_reads(kernel))
    source = kernel + TAIL.format(name=name, M=M, N=N, H=layout.heads, dtype=dtype,
                                  tables="\n".join(_encode(n, v, layout.heads) for n, v in data.items()))
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
    strided patterns, "natural"). Files are written atomically, and a file that patternc didn't
    write is never overwritten. Raises `PatternError` for routed (topk) and random patterns,
    which need data the generated code can't hold yet.
    """
    out_dir = Path(out_dir)
    target = out_dir / f"{module_name(name or pattern.name or 'pattern')}.py"
    _check_overwrite(target, MODULE_MARK)  # before the work, not only before the writing
    built = build_module(pattern, seq_len, kv_len, heads, head_dim, dtype, config, name)
    return built.write(out_dir, report)


def report_text(pattern: Pattern, name: str, layout, head_dim: int, dtype: str, cfg: dict, runs) -> str:
    """The Markdown report written beside the module."""
    from tabulate import tabulate

    s = layout.summary()
    lengths = f"M = N = {s['M']}" if s["M"] == s["N"] else f"M = {s['M']}, N = {s['N']}"
    speedup = "inf" if s["ideal_speedup"] == float("inf") else f"{s['ideal_speedup']:.2f}x"
    iteration = ("index tables" if runs is None else
                 f"runs of key tiles ({runs[0].shape[2]} full, {runs[1].shape[2]} partial per row)")
    order = ("natural" if layout.permutation is None else
             f"residue classes mod {layout.permutation.modulus} (tiles read rows {layout.permutation.modulus} apart)")
    empty = layout.empty_rows
    n_empty = sum(len(e) for e in empty)
    where = f" ({pattern.span})" if pattern.span is not None else ""
    rows = [
        ["problem", f"{lengths}, {_heads(s['heads'])}, head_dim {head_dim}, {dtype}"],
        ["tile config", f"{config_text(cfg)}, memory {cfg.get('memory', 'pointers')}, {iteration}"],
        ["token order", order],
        ["density", f"{s['density']:.4f}"],
        ["ideal speedup", speedup],
        ["tiles", f"{s['full']} full, {s['partial']} partial, {s['empty']} empty (of {layout.counts['total']})"],
        ["partial share", f"{s['partial_share']:.3f}"],
        ["refined tiles", str(s["refined_tiles"])],
        ["empty query rows", "none" if not n_empty else f"{n_empty} over all heads (output 0, LSE -inf)"],
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
